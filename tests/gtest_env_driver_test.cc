// The GoogleTest environment as a user meets it: a driver runs a real test
// binary (gtest_env_subject, linked with //gtest_env:main) and checks its exit
// code, its output, its output files, and that every process it launched is
// gone: after a normal run, after a failed set-up, and after the test binary
// crashed (segfault, abort, SIGKILL, exit without TearDown).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/gtest_env_util.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;
using testutil::wait_until;

const char* kServices = "tests/gtest_env_data/services.json";

class Driver : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testutil::make_temp_dir();
    subject_ = testutil::runfile("tests/gtest_env_subject");
    // The workspace's folder in the runfiles tree: where `bazel test` starts
    // a test, and where the configs' relative paths point.
    root_ = subject_.substr(0, subject_.size() - std::string("/tests/gtest_env_subject").size());
  }

  /// Starts the subject with `config` (as --pymanager_config, unless empty)
  /// and SUBJECT_MODE=mode; PIDS_FILE and PIDS_DIR point into the test's folder.
  std::unique_ptr<testutil::Child> start(const std::string& config, const std::string& mode,
                                         std::vector<std::string> env = {}, const std::string& cwd = "",
                                         const std::string& binary = "", const std::string& pids_file = "pids") {
    env.push_back("SUBJECT_MODE=" + mode);
    env.push_back("PIDS_FILE=" + dir_ + "/" + pids_file);
    env.push_back("PIDS_DIR=" + dir_);
    std::vector<std::string> args;
    if (!config.empty()) args.push_back("--pymanager_config=" + config);
    return std::make_unique<testutil::Child>(
        gtest_env_util::subject_command(binary.empty() ? subject_ : binary, env, args), cwd.empty() ? root_ : cwd);
  }

  testutil::RunResult run(const std::string& config, const std::string& mode, std::vector<std::string> env = {},
                          const std::string& cwd = "", const std::string& binary = "") {
    return start(config, mode, std::move(env), cwd, binary)->wait(60000ms);
  }

  std::vector<pid_t> pids_in(const std::string& text) {
    std::vector<pid_t> out;
    std::istringstream in(text);
    pid_t p;
    while (in >> p) out.push_back(p);
    return out;
  }

  std::string outputs() {
    std::string dir = dir_ + "/outputs";
    ::mkdir(dir.c_str(), 0755);
    return dir;
  }

  /// Every pid is dead (zombies count as dead) by `deadline`, and the
  /// process groups led by the first `groups` of them are empty.
  void expect_gone_by(const std::vector<pid_t>& pids, std::size_t groups, testutil::Clock::time_point deadline) {
    for (pid_t p : pids) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - testutil::Clock::now());
      EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(p); }, std::max(left, 0ms))) << "pid " << p << " is alive";
    }
    for (std::size_t k = 0; k < groups && k < pids.size(); ++k) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - testutil::Clock::now());
      // Zombies count as group members until they are reaped.
      EXPECT_TRUE(wait_until([&] { return !testutil::group_alive(pids[k]); }, std::max(left, 0ms)))
          << "process group " << pids[k] << " is not empty";
    }
  }

  std::string dir_;
  std::string subject_;
  std::string root_;
};

TEST_F(Driver, AFailingVerifierSkipsTheTestsWithAClearMessageAndLeavesNothingRunning) {
  auto r = run("tests/gtest_env_data/failing.json", "ok");
  std::string all = r.out + r.err;
  EXPECT_EQ(r.exit_code, 1) << all;
  EXPECT_THAT(r.out, HasSubstr("tests/gtest_env_data/failing.json: Failure"));
  EXPECT_THAT(r.out, HasSubstr("the services could not be set up, so the tests are skipped"));
  EXPECT_THAT(r.out, HasSubstr("process 'broken': verifier pymutils.http_verifier.HttpOkVerifier failed"));
  EXPECT_THAT(r.out, HasSubstr("connection refused"));
  EXPECT_THAT(r.out, HasSubstr("broken is starting but never listens"));
  EXPECT_THAT(r.out, HasSubstr("[  SKIPPED ] Subject.UsesTheServices"));
  EXPECT_THAT(all, Not(HasSubstr("SUBJECT BODY RAN")));
  auto pids = pids_in(testutil::read_file(dir_ + "/sleeper.pid") + " " + testutil::read_file(dir_ + "/broken.pid"));
  ASSERT_EQ(pids.size(), 2u) << "the services did not record their pids";
  // The set-up shut everything down before the binary even ended.
  for (pid_t p : pids) {
    EXPECT_FALSE(testutil::pid_alive(p)) << "pid " << p;
    EXPECT_FALSE(testutil::group_alive(p)) << "group " << p;
  }
}

TEST_F(Driver, ARunThatPassesLeavesNothingRunningAndKeepsEachProcessOutput) {
  std::string out_dir = outputs();
  auto r = run(kServices, "ok", {"TEST_UNDECLARED_OUTPUTS_DIR=" + out_dir});
  const auto ended = testutil::Clock::now();
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("SUBJECT BODY RAN"));
  EXPECT_THAT(r.out, HasSubstr("web   | listening on 127.0.0.1:"));  // echoed with the name
  auto pids = pids_in(testutil::read_file(dir_ + "/pids"));
  // web, tree, grandchild, daemon, the keeper, web after its restart
  ASSERT_GE(pids.size(), 6u) << r.out;
  // TearDown completed inside the binary: all gone by the time it exited.
  expect_gone_by(pids, 2, ended);

  std::string env_dir = out_dir + "/pymanager/environment/";
  std::string web = testutil::read_file(env_dir + "web.log");
  EXPECT_THAT(web, HasSubstr("listening on 127.0.0.1:"));
  EXPECT_EQ(testutil::pids_after(web, "listening on").size(), 2u) << "both runs of web belong in its file:\n" << web;
  EXPECT_THAT(web, HasSubstr("[pymanager] pid " + std::to_string(pids[0]) + " exited with exit code 0"));
  EXPECT_THAT(testutil::read_file(env_dir + "setup.log"), HasSubstr("setup ran for port "));
  EXPECT_THAT(testutil::read_file(env_dir + "tree.log"), HasSubstr("grandchild "));
}

struct Crash {
  const char* mode;
  int exit_code;  ///< as testutil reports it: -signal, or the exit code
};

class DriverCrash : public Driver, public ::testing::WithParamInterface<Crash> {};

TEST_P(DriverCrash, EveryProcessItLaunchedIsGoneWithinOneSecond) {
  auto child = start(kServices, GetParam().mode);
  auto r = child->wait(60000ms);
  auto died = testutil::Clock::now();
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, GetParam().exit_code) << r.out << r.err;
  EXPECT_THAT(r.out, Not(HasSubstr("[  PASSED  ]")));
  auto pids = pids_in(testutil::read_file(dir_ + "/pids"));
  // web, tree, grandchild, a daemon that left its group (setsid), the keeper
  ASSERT_GE(pids.size(), 5u) << r.out << r.err;
  expect_gone_by(pids, 2, died + 1000ms);
}

INSTANTIATE_TEST_SUITE_P(Ways, DriverCrash,
                         ::testing::Values(Crash{"segv", -SIGSEGV}, Crash{"abort", -SIGABRT},
                                           Crash{"sigkill", -SIGKILL}, Crash{"exit", 3}),
                         [](const ::testing::TestParamInfo<Crash>& param) { return std::string(param.param.mode); });

TEST_F(Driver, AServiceThatDiesDuringTheTestsIsAFailureWithItsNameSignalAndLastLines) {
  std::string out_dir = outputs();
  auto r = run(kServices, "service_dies", {"TEST_UNDECLARED_OUTPUTS_DIR=" + out_dir});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("services.json: Failure"));
  EXPECT_THAT(r.out, HasSubstr("process 'web' (pid "));
  EXPECT_THAT(r.out, HasSubstr("exited unexpectedly with signal 9 (Killed) while the tests ran; its last lines:\n  listening on 127.0.0.1:"));
  EXPECT_THAT(r.out, HasSubstr("full output: " + out_dir + "/pymanager/environment/web.log"));
  // Which test the failure belongs to depends on when pymanager sees the
  // exit (the running test, or the run as a whole once the test returned);
  // either way the run fails. Reported once, not again at TearDown.
  EXPECT_EQ(testutil::pids_after(r.out, "process 'web' (pid").size(), 1u) << r.out;
}

TEST_F(Driver, UnderBazelTheFailureSaysWhereTheOutputIsKeptAfterTheTest) {
  // The folder as Bazel lays it out; after the test, Bazel zips it into
  // bazel-testlogs/examples/my_test/run_2_of_3/test.outputs/outputs.zip.
  const std::string root = outputs() + "/execroot/ws/bazel-out/k8-fastbuild/testlogs/examples/my_test/run_2_of_3/test.outputs";
  ASSERT_EQ(std::system(("mkdir -p '" + root + "'").c_str()), 0);
  auto r = run(kServices, "service_dies", {"TEST_UNDECLARED_OUTPUTS_DIR=" + root});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("full output: pymanager/environment/web.log in "
                               "bazel-testlogs/examples/my_test/run_2_of_3/test.outputs/outputs.zip "
                               "(after the test; now " + root + "/pymanager/environment/web.log)"));
  EXPECT_THAT(testutil::read_file(root + "/pymanager/environment/web.log"), HasSubstr("listening on 127.0.0.1:"));
}

TEST_F(Driver, TwoInstancesOfTheSameTestRunningAtOnceBothPass) {
  auto a = start(kServices, "ok", {}, "", "", "pids-a");
  auto b = start(kServices, "ok", {}, "", "", "pids-b");
  auto ra = a->wait(60000ms);
  auto rb = b->wait(60000ms);
  EXPECT_EQ(ra.exit_code, 0) << ra.out << ra.err;
  EXPECT_EQ(rb.exit_code, 0) << rb.out << rb.err;
  auto port_a = testutil::pids_after(ra.out, "web port ");
  auto port_b = testutil::pids_after(rb.out, "web port ");
  ASSERT_EQ(port_a.size(), 1u);
  ASSERT_EQ(port_b.size(), 1u);
  EXPECT_NE(port_a[0], port_b[0]);
}

TEST_F(Driver, TheConfigComesFromPymanagerConfigAndIsFoundInTheRunfilesTree) {
  // Started elsewhere than the runfiles tree: the relative path is found
  // through RUNFILES_DIR / TEST_SRCDIR, which Bazel sets for the driver.
  auto r = run("", "minimal", {"PYMANAGER_CONFIG=tests/gtest_env_data/minimal.json"}, dir_);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("hello | hello from minimal"));
  EXPECT_THAT(r.out, HasSubstr("process hello pid "));
}

TEST_F(Driver, APluginLibraryIsFoundRelativeToTheConfigFilesFolder) {
  // plugin.json names ../plugins/libgood_plugin.so: from tests/gtest_env_data
  // in the runfiles, not from the folder the test runs in.
  auto r = run("tests/gtest_env_data/plugin.json", "minimal", {}, dir_);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("hello | hello from plugin"));
  EXPECT_THAT(r.out, Not(HasSubstr("cannot load")));
}

TEST_F(Driver, UnderBazelRunARelativePathIsAlsoLookedUpWhereTheUserTypedIt) {
  std::string typed = testutil::make_temp_dir();
  testutil::write_file(typed + "/mine.json", testutil::read_file(root_ + "/tests/gtest_env_data/minimal.json"));
  auto r = run("mine.json", "minimal", {"BUILD_WORKING_DIRECTORY=" + typed}, dir_);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("hello from minimal"));
}

TEST_F(Driver, WithoutARunfilesTreeTheManifestIsRead) {
  ::mkdir((dir_ + "/real").c_str(), 0755);
  testutil::write_file(dir_ + "/real/minimal.json", testutil::read_file(root_ + "/tests/gtest_env_data/minimal.json"));
  testutil::write_file(dir_ + "/MANIFEST", "myws/other/file.txt /nonexistent\nmyws/cfg/only-in-manifest.json " + dir_ +
                                               "/real/minimal.json\n");
  auto r = run("cfg/only-in-manifest.json", "minimal", {"RUNFILES_MANIFEST_FILE=" + dir_ + "/MANIFEST"}, dir_);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("hello from minimal"));
}

TEST_F(Driver, WithoutAConfigTheSetUpFailsSayingHowToGiveOne) {
  auto r = run("", "minimal");
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("no pymanager config: pass --pymanager_config=PATH to the test, or set PYMANAGER_CONFIG"));
  EXPECT_THAT(r.out, Not(HasSubstr("SUBJECT BODY RAN")));

  auto missing = run("no/such/config.json", "minimal");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.out, HasSubstr("config file not found: no/such/config.json (looked for " + root_ + "/no/such/config.json"));
}

TEST_F(Driver, AnOwnMainRegistersTheEnvironmentWithOneCall) {
  auto r = run("tests/gtest_env_data/minimal.json", "minimal", {}, "", testutil::runfile("tests/gtest_env_subject_own_main"));
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("OWN MAIN"));
  EXPECT_THAT(r.out, HasSubstr("process hello pid "));
}

TEST_F(Driver, TearDownReportsAProcessThatHadToBeKilled) {
  auto r = run("tests/gtest_env_data/stubborn.json", "minimal");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;  // reported, not a failure by default
  auto pids = pids_in(testutil::read_file(dir_ + "/stubborn.pid"));
  ASSERT_EQ(pids.size(), 1u);
  EXPECT_THAT(r.err, HasSubstr("pymanager: process 'stubborn' (pid " + std::to_string(pids[0]) +
                               ") did not stop within its graceful time 0.3s after SIGTERM and was killed with SIGKILL"));
  EXPECT_FALSE(testutil::pid_alive(pids[0]));
}

}  // namespace
