// Built with pymanager_cc_test (gtest_env/defs.bzl): //gtest_env:main finds
// the config through --pymanager_config=$(rootpath ...) in the runfiles tree,
// and the services it names (tests/helpers/http_service) are there too.
#include <string>

#include <gtest/gtest.h>

#include "gtest_env/environment.hpp"
#include "tests/gtest_env_util.hpp"

namespace {

TEST(Macro, TheServicesOfTheConfigAreUpBeforeTheTests) {
  auto& env = pymanager::testing::environment();
  ASSERT_TRUE(env.up());
  EXPECT_EQ(env.processes().size(), 3u);
  EXPECT_TRUE(env.running("web"));
  EXPECT_TRUE(env.running("tree"));
  ASSERT_TRUE(env.process("setup").exit.has_value());
  EXPECT_EQ(env.process("setup").exit->code(), 0);
  auto health = gtest_env_util::http_get(env.port("web"), "/health");
  ASSERT_TRUE(health.has_value()) << env.url("web", "/health");
  EXPECT_EQ(health->status, 200);
}

TEST(Macro, UnderBazelEachProcessOutputGoesToTheUndeclaredOutputs) {
  const char* outputs = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  ASSERT_NE(outputs, nullptr) << "run this with bazel test";
  auto& env = pymanager::testing::environment();
  EXPECT_EQ(env.output_file("web"), std::string(outputs) + "/pymanager/environment/web.log");
}

}  // namespace
