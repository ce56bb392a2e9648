// integration.json's services are up before these tests and gone after;
// pymanager_add_test() in CMakeLists.txt wires it up.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>
#include <httplib.h>

#include "gtest_env/environment.hpp"

TEST(Hello, AnswersWithTheGreetingTheSetUpStepWrote) {
  auto& env = pymanager::testing::environment();
  httplib::Client client("127.0.0.1", env.port("hello"));
  client.set_connection_timeout(5);
  client.set_read_timeout(5);
  auto response = client.Get("/");
  ASSERT_TRUE(response) << "no answer from " << env.url("hello", "/");
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "hello from the CMake example\n");
}

TEST(Hello, TheSetUpStepExitedZero) {
  auto setup = pymanager::testing::environment().process("setup");
  ASSERT_TRUE(setup.exit.has_value());
  EXPECT_EQ(setup.exit->code(), 0);
}

// pymanager_add_test names the installed keeper program, so the Manager
// execs it rather than forking this test binary.
TEST(Hello, TheKeeperProgramIsNamed) {
  const char* keeper = std::getenv("PYMANAGER_KEEPER");
  ASSERT_NE(keeper, nullptr);
  EXPECT_EQ(::access(keeper, X_OK), 0) << keeper;
}
