// Probes: short commands the Manager runs through its keeper for verifiers
// (Manager::run_probe, VerifyContext::run_probe). Real processes; each test
// checks what a verifier author relies on: the exit and output, the
// deadline, cancellation, and that nothing of a probe outlives it.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pymanager/pymanager.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
using testutil::wait_until;

/// A manager with one long-running process, its log kept.
class Probe : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testutil::make_temp_dir();
    config_ = pymanager::parse_config(nlohmann::ordered_json::parse(R"({"keep-alive": true, "processes": {
        "svc": {"executable": "sleep", "arguments": ["1000"]}}})"),
                                      pymanager::builtin_verifiers());
    config_.base_directory = dir_;
  }
  pymanager::ManagerOptions options() {
    pymanager::ManagerOptions o;
    o.output_fd = -1;
    o.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mutex_);
      log_ += line + "\n";
    };
    return o;
  }
  static pymanager::ProbeCommand sh(const std::string& script) {
    pymanager::ProbeCommand command;
    command.argv = {"sh", "-c", script};
    return command;
  }
  std::vector<pid_t> pids_in(const std::string& file) const { return testutil::pids_in_file(dir_ + "/" + file); }
  void expect_all_gone(const std::vector<pid_t>& pids) {
    for (pid_t p : pids) EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(p); }, 5000ms)) << "pid " << p << " survived";
  }

  std::string dir_;
  pymanager::Config config_;
  std::mutex mutex_;
  std::string log_;
};

TEST_F(Probe, ReturnsItsExitAndItsOutputInTheOrderItCame) {
  pymanager::Manager manager(config_, options());
  manager.start();
  auto result = manager.run_probe(sh("echo one; echo two >&2; echo three; exit 3"), pymanager::Clock::now() + 60s);
  EXPECT_EQ(result.error, "");
  ASSERT_TRUE(result.exit.has_value());
  EXPECT_EQ(result.exit->code(), 3);
  EXPECT_EQ(result.output, "one\ntwo\nthree\n");
  EXPECT_FALSE(result.timed_out);
  EXPECT_FALSE(result.truncated);
  // The configured process is untouched by the probe's events.
  EXPECT_EQ(manager.processes()[0].state, pymanager::ProcessState::ready);
  EXPECT_EQ(manager.processes()[0].exit, std::nullopt);
}

TEST_F(Probe, RunsInTheBaseDirectoryWithItsEnvironmentAndTheManagersMark) {
  pymanager::Manager manager(config_, options());
  manager.start();
  auto command = sh("pwd; echo \"$GREETING\"; echo \"$PYMANAGER_OWNER\"");
  command.environment = {{"GREETING", "hello"}};
  auto result = manager.run_probe(command, pymanager::Clock::now() + 60s);
  ASSERT_TRUE(result.exit.has_value()) << result.error;
  EXPECT_EQ(result.exit->code(), 0);
  std::istringstream lines(result.output);
  std::string pwd, greeting, mark;
  std::getline(lines, pwd);
  std::getline(lines, greeting);
  std::getline(lines, mark);
  EXPECT_EQ(::access((pwd + "/.").c_str(), F_OK), 0);
  char real_dir[4096], real_pwd[4096];
  ASSERT_NE(::realpath(dir_.c_str(), real_dir), nullptr);
  ASSERT_NE(::realpath(pwd.c_str(), real_pwd), nullptr);
  EXPECT_STREQ(real_pwd, real_dir);
  EXPECT_EQ(greeting, "hello");
  // The mark names a probe id above every configured process's.
  EXPECT_THAT(mark, ::testing::MatchesRegex("[0-9a-f]{16}:[0-9]+"));
  EXPECT_GE(std::stoul(mark.substr(17)), manager.size());
}

TEST_F(Probe, WhatItLeftInItsGroupOrAsADaemonIsKilledWhenItEnds) {
  pymanager::Manager manager(config_, options());
  manager.start();
  auto result = manager.run_probe(sh("sleep 1000 & echo $! >> left.txt; setsid sleep 1000 & echo $! >> left.txt; exit 0"),
                                  pymanager::Clock::now() + 60s);
  ASSERT_TRUE(result.exit.has_value()) << result.error;
  EXPECT_EQ(result.exit->code(), 0);
  auto left = pids_in("left.txt");
  ASSERT_EQ(left.size(), 2u);
  expect_all_gone(left);
  EXPECT_EQ(manager.processes()[0].state, pymanager::ProcessState::ready);
}

TEST_F(Probe, TheDeadlineKillsItAndSaysSo) {
  pymanager::Manager manager(config_, options());
  manager.start();
  const auto began = pymanager::Clock::now();
  // It would block for ever: nobody writes to the fifo.
  ASSERT_EQ(::mkfifo((dir_ + "/never").c_str(), 0600), 0);
  auto result = manager.run_probe(sh("echo $$ >> pids.txt; echo started; cat never"), began + 300ms);
  EXPECT_TRUE(result.timed_out);
  EXPECT_FALSE(result.exit.has_value());
  EXPECT_LT(pymanager::Clock::now() - began, 10s);
  expect_all_gone(pids_in("pids.txt"));
}

TEST_F(Probe, ShutdownCancelsItAndNothingOfItIsLeft) {
  pymanager::Manager manager(config_, options());
  manager.start();
  ASSERT_EQ(::mkfifo((dir_ + "/never").c_str(), 0600), 0);
  auto future = std::async(std::launch::async, [&] {
    return manager.run_probe(sh("sleep 1000 & echo $! >> pids.txt; echo $$ >> pids.txt; cat never"),
                             pymanager::Clock::now() + 600s);
  });
  // Held by the probe itself: both pids are written before it blocks.
  ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 2; }, 30000ms));
  const auto began = std::chrono::steady_clock::now();
  manager.shutdown();
  ASSERT_EQ(future.wait_for(30s), std::future_status::ready);
  auto result = future.get();
  EXPECT_TRUE(result.cancelled);
  EXPECT_FALSE(result.timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - began, 10s);
  expect_all_gone(pids_in("pids.txt"));
  EXPECT_TRUE(manager.wait_finished(30s));
}

TEST_F(Probe, OutputBeyondItsLimitIsCutAndSaidSo) {
  pymanager::Manager manager(config_, options());
  manager.start();
  auto command = sh("seq 1 100000");
  command.output_limit = 100;
  auto result = manager.run_probe(command, pymanager::Clock::now() + 60s);
  ASSERT_TRUE(result.exit.has_value()) << result.error;
  EXPECT_EQ(result.exit->code(), 0);  // it was read to the end, not blocked
  EXPECT_EQ(result.output.size(), 100u);
  EXPECT_EQ(result.output.substr(0, 8), "1\n2\n3\n4\n");
  EXPECT_TRUE(result.truncated);
}

TEST_F(Probe, ALimitOfZeroKeepsNothingAndSaysItCut) {
  pymanager::Manager manager(config_, options());
  manager.start();
  auto command = sh("echo something");
  command.output_limit = 0;
  auto result = manager.run_probe(command, pymanager::Clock::now() + 60s);
  ASSERT_TRUE(result.exit.has_value()) << result.error;
  EXPECT_EQ(result.output, "");
  EXPECT_TRUE(result.truncated);
}

TEST_F(Probe, AfterShutdownBeganNothingIsSpawned) {
  pymanager::Manager manager(config_, options());
  manager.start();
  manager.shutdown();
  auto result = manager.run_probe(sh("touch ran.flag"), pymanager::Clock::now() + 60s);
  EXPECT_TRUE(result.cancelled);
  EXPECT_FALSE(result.exit.has_value());
  // A probe that did run would have made the file before its exit was seen.
  auto control = manager.run_probe(sh("true"), pymanager::Clock::now() + 60s);
  EXPECT_TRUE(control.cancelled);
  EXPECT_TRUE(manager.wait_finished(30s));
  EXPECT_NE(::access((dir_ + "/ran.flag").c_str(), F_OK), 0) << "a cancelled probe was spawned";
}

TEST_F(Probe, AKeeperKilledMidProbeIsAnErrorAndNothingOfItIsLeft) {
  pymanager::Manager manager(config_, options());
  manager.start();
  ASSERT_EQ(::mkfifo((dir_ + "/never").c_str(), 0600), 0);
  auto future = std::async(std::launch::async, [&] {
    return manager.run_probe(sh("sleep 1000 & echo $! >> pids.txt; echo $$ >> pids.txt; cat never"),
                             pymanager::Clock::now() + 600s);
  });
  ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 2; }, 30000ms));
  const int configured = manager.process(0).pid;
  ASSERT_GT(configured, 0);
  ASSERT_EQ(::kill(manager.keeper_pid(), SIGKILL), 0);
  ASSERT_EQ(future.wait_for(30s), std::future_status::ready);
  auto result = future.get();
  EXPECT_FALSE(result.exit.has_value());
  EXPECT_THAT(result.error, HasSubstr("cannot run probe 'sh': the keeper process is gone"));
  expect_all_gone(pids_in("pids.txt"));
  EXPECT_TRUE(manager.wait_finished(30s));
  // The report names the probe: its group, when the manager had read the
  // keeper's "spawned" reply, or else its shell's children, as processes
  // carrying the manager's mark (the shell itself dies with the keeper, by
  // PR_SET_PDEATHSIG). Either way they were killed and said so.
  const auto pids = pids_in("pids.txt");
  const std::string sleeper = std::to_string(pids.at(0)), shell = std::to_string(pids.at(1));
  std::lock_guard<std::mutex> lock(mutex_);
  EXPECT_THAT(log_, ::testing::ContainsRegex("SIGKILL to [0-9]+ process group\\(s\\) \\(([0-9]+, )*" + shell +
                                             "[,)]|other process\\(es\\) carrying this manager's mark \\(([0-9]+, )*" +
                                             sleeper + "[,)]"));
  // The configured process's group was known: its leader is not listed
  // again as an "other" process, even when it died before the scan.
  EXPECT_THAT(log_, HasSubstr("process group(s) (" + std::to_string(configured)));
  EXPECT_THAT(log_.substr(log_.find("daemon(s)")),
              ::testing::Not(::testing::ContainsRegex("[(, ]" + std::to_string(configured) + "[,)]")));
}

TEST_F(Probe, DestroyingTheManagerWaitsForAProbeOnAnotherThread) {
  ASSERT_EQ(::mkfifo((dir_ + "/never").c_str(), 0600), 0);
  std::future<pymanager::ProbeResult> future;
  {
    pymanager::Manager manager(config_, options());
    manager.start();
    future = std::async(std::launch::async, [&manager] {
      return manager.run_probe(sh("echo $$ >> pids.txt; cat never"), pymanager::Clock::now() + 600s);
    });
    ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 1; }, 30000ms));
  }  // the destructor: shutdown cancels the probe, and waits for the call to end
  ASSERT_EQ(future.wait_for(0s), std::future_status::ready) << "the Manager was gone before run_probe returned";
  EXPECT_TRUE(future.get().cancelled);
  expect_all_gone(pids_in("pids.txt"));
}

TEST_F(Probe, ACommandThatCannotStartSaysWhy) {
  pymanager::Manager manager(config_, options());
  manager.start();
  pymanager::ProbeCommand missing;
  missing.argv = {"./no-such-probe-program"};
  auto result = manager.run_probe(missing, pymanager::Clock::now() + 60s);
  EXPECT_FALSE(result.exit.has_value());
  EXPECT_THAT(result.error, HasSubstr("cannot run probe './no-such-probe-program'"));
  EXPECT_THAT(result.error, HasSubstr("No such file or directory"));

  pymanager::ProbeCommand empty;
  EXPECT_EQ(manager.run_probe(empty, pymanager::Clock::now() + 60s).error, "the probe's command is empty");

  pymanager::ProbeCommand elsewhere = sh("true");
  elsewhere.working_directory = "no-such-dir";
  auto in_missing_dir = manager.run_probe(elsewhere, pymanager::Clock::now() + 60s);
  EXPECT_FALSE(in_missing_dir.exit.has_value());
  EXPECT_THAT(in_missing_dir.error, HasSubstr("cannot run probe 'sh': working_directory " + dir_ + "/no-such-dir"));
}

TEST_F(Probe, ManyAtOnceEachGetItsOwnResult) {
  pymanager::Manager manager(config_, options());
  manager.start();
  std::vector<std::future<pymanager::ProbeResult>> results;
  for (int k = 0; k < 40; ++k) {
    results.push_back(std::async(std::launch::async, [&manager, k] {
      return manager.run_probe(sh("echo " + std::to_string(k) + "; exit " + std::to_string(k)), pymanager::Clock::now() + 120s);
    }));
  }
  for (int k = 0; k < 40; ++k) {
    auto result = results[static_cast<std::size_t>(k)].get();
    ASSERT_TRUE(result.exit.has_value()) << k << ": " << result.error;
    EXPECT_EQ(result.exit->code(), k);
    EXPECT_EQ(result.output, std::to_string(k) + "\n");
  }
  // And again: the ids were given back.
  auto again = manager.run_probe(sh("exit 7"), pymanager::Clock::now() + 60s);
  ASSERT_TRUE(again.exit.has_value());
  EXPECT_EQ(again.exit->code(), 7);
}

/// A verifier that passes once its probe command exits 0 (arguments: "script").
class ProbeVerifier : public pymanager::Verifier {
 public:
  explicit ProbeVerifier(std::string script) : script_(std::move(script)) {}
  pymanager::VerifyResult verify(pymanager::VerifyContext& context) const override {
    return pymanager::retry_until(context, 30, 0.02, [&] {
      pymanager::ProbeCommand command;
      command.argv = {"sh", "-c", script_};
      auto result = context.run_probe(command, pymanager::Clock::now() + std::chrono::seconds(10));
      if (result.exit && result.exit->code() == 0) return pymanager::VerifyResult::ok(result.output);
      return pymanager::VerifyResult::failure(result.error.empty() ? "probe said: " + result.output : result.error);
    });
  }

 private:
  std::string script_;
};

TEST_F(Probe, AVerifierRunsOneThroughItsContext) {
  auto registry = pymanager::builtin_verifiers();
  registry.add("mytests.Probe", [](const nlohmann::json& args, const std::string& path) {
    pymanager::ArgumentReader reader(args, path);
    std::string script = reader.required_string("script");
    reader.finish();
    return std::make_shared<ProbeVerifier>(script);
  });
  // The service is ready once it wrote its flag; the probe checks for it.
  auto config = pymanager::parse_config(nlohmann::ordered_json::parse(R"({
    "modules": {"mytests": {"verifiers": ["Probe"]}},
    "keep-alive": true,
    "processes": {
      "svc": {"executable": "sh", "arguments": ["-c", "touch up.flag; exec sleep 1000"],
              "verifier": {"type": "mytests.Probe", "arguments": {"script": "test -f up.flag && echo seen-flag"}}}}})"),
                                        registry);
  config.base_directory = dir_;
  pymanager::Manager manager(config, options());
  manager.start();
  EXPECT_EQ(manager.processes()[0].state, pymanager::ProcessState::ready);
}

}  // namespace
