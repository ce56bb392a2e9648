// An integration test to copy: the services of integration.json (a one-shot
// set-up step, then the greeter on a free port) are up before these tests
// run and gone after, even if this binary crashes. See BUILD.bazel for the
// one macro call that wires it up, and gtest_env/README.md for the rest.
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <httplib.h>

#include "gtest_env/environment.hpp"

namespace {

/// Where setup_step.sh writes: the test's own temporary folder under `bazel
/// test`, and the usual one when the binary is run by hand (the same
/// fallback as the script's).
std::string temp_dir() {
  for (const char* name : {"TEST_TMPDIR", "TMPDIR"}) {
    const char* dir = std::getenv(name);
    if (dir != nullptr && *dir != '\0') return dir;
  }
  return "/tmp";
}

/// GET on the greeter, wherever it listens today.
httplib::Result get(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(5);
  return client.Get(path.c_str());
}

TEST(Greeter, AnswersWithItsGreeting) {
  auto& env = pymanager::testing::environment();   // the services of integration.json
  auto response = get(env.port("greeter"), "/");
  ASSERT_TRUE(response) << "no answer from " << env.url("greeter", "/");
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body, "hello from the integration test\n");
}

TEST(Greeter, TheSetUpStepRanFirst) {
  auto& env = pymanager::testing::environment();
  auto setup = env.process("setup");
  ASSERT_TRUE(setup.exit.has_value());
  EXPECT_EQ(setup.exit->code(), 0);
  std::string port = std::to_string(env.port("greeter"));
  std::ifstream done(temp_dir() + "/greeter-data/setup-" + port + ".done");
  std::stringstream text;
  text << done.rdbuf();
  EXPECT_EQ(text.str(), "prepared for port " + port + "\n");
}

TEST(Greeter, ComesBackAfterARestart) {
  auto& env = pymanager::testing::environment();
  int before = env.pid("greeter");
  env.restart("greeter");   // SIGTERM, start again, wait for its verifier
  EXPECT_NE(env.pid("greeter"), before);
  auto response = get(env.port("greeter"), "/health");   // the same port as before
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
}

// Fault injection on a copy of the services of its own (its own free port),
// so that the shared ones above are not disturbed.
TEST(GreeterFaults, ClientsSeeAnErrorWhileTheServiceIsDown) {
  pymanager::testing::Services services("examples/integration.json");
  int port = services.port("greeter");
  EXPECT_NE(port, pymanager::testing::environment().port("greeter"));
  services.kill("greeter");   // SIGKILL; not reported as a failure: the test asked for it
  EXPECT_FALSE(get(port, "/health"));
  services.start("greeter");
  auto response = get(port, "/health");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(services.process("greeter").restarts, 1);
}

}  // namespace
