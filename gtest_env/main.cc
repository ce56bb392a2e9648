// //gtest_env:main: a ready main() for integration tests. It runs the tests
// with the services of a pymanager config up: the config comes from
// --pymanager_config=PATH or the environment variable PYMANAGER_CONFIG (the
// macro pymanager_cc_test in defs.bzl passes the flag).
#include <gtest/gtest.h>

#include "gtest_env/environment.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  pymanager::testing::register_environment(&argc, argv);
  return RUN_ALL_TESTS();
}
