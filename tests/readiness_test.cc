// The readiness verifiers of module pymanager.verifiers that watch the
// process itself (OutputVerifier, FileVerifier, CommandVerifier), several
// verifiers on one process, and their argument errors: real processes, and
// every "not ready yet" held by a FIFO the test opens when it wants.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pymanager/pymanager.hpp"
#include "tests/capture.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;
using pymanager::ErrorKind;
using pymanager::ProcessState;
using testutil::Capture;
using testutil::wait_until;

const char* kModules = R"("modules": {
    "pymanager.verifiers": {"verifiers": ["OutputVerifier", "FileVerifier", "CommandVerifier"]},
    "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}
  })";

class Readiness : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testutil::make_temp_dir(); }

  pymanager::Config parse(const std::string& processes) const {
    auto text = std::string("{") + kModules + ", \"processes\": {" + processes + "}}";
    auto config = pymanager::parse_config(nlohmann::ordered_json::parse(text), pymanager::builtin_verifiers());
    config.base_directory = dir_;
    return config;
  }

  /// The config error for `processes`, or "" when it parses.
  std::string config_error(const std::string& processes) const {
    try {
      parse(processes);
    } catch (const pymanager::Error& e) {
      return e.what();
    }
    return "";
  }

  /// The config error of a verifier of `type` given `arguments` (JSON text).
  std::string argument_error(const std::string& type, const std::string& arguments) const {
    return config_error(R"("db": {"executable": "true", "arguments": [],
        "verifier": {"type": "pymanager.verifiers.)" + type + R"(", "arguments": )" + arguments + "}}");
  }

  /// The start-up error of a process that exits with code 3 at once while
  /// `verifier` (JSON text) waits for up to 600 s; it must come long before.
  std::string error_when_the_process_exits(const std::string& verifier) const {
    auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "echo cannot bind; exit 3"], "verifier": )" +
                        verifier + "}");
    Capture capture;
    pymanager::Manager manager(config, capture.options());
    const auto begun = std::chrono::steady_clock::now();
    auto e = start_error(manager);
    EXPECT_LT(std::chrono::steady_clock::now() - begun, 60s);
    return e ? e->what() : "start() did not fail";
  }

  /// A FIFO the child blocks on (`read x < gate`) until open_gate.
  void make_gate(const std::string& name = "gate") const {
    ASSERT_EQ(::mkfifo((dir_ + "/" + name).c_str(), 0600), 0);
  }
  /// Lets the child past its `read x < gate` (once the child has the FIFO open).
  bool open_gate(const std::string& name = "gate") const {
    int fd = -1;
    if (!wait_until([&] { return (fd = ::open((dir_ + "/" + name).c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)) >= 0; })) {
      return false;
    }
    bool ok = ::write(fd, "go\n", 3) == 3;
    ::close(fd);
    return ok;
  }

  std::vector<pid_t> pids_in(const std::string& file) const { return testutil::pids_in_file(dir_ + "/" + file); }

  /// start() on another thread; the error it threw, if any.
  static std::future<std::optional<pymanager::Error>> start_async(pymanager::Manager& manager) {
    return std::async(std::launch::async, [&manager]() -> std::optional<pymanager::Error> {
      try {
        manager.start();
      } catch (const pymanager::Error& e) {
        return e;
      }
      return std::nullopt;
    });
  }

  static std::optional<pymanager::Error> start_error(pymanager::Manager& manager) {
    try {
      manager.start();
    } catch (const pymanager::Error& e) {
      return e;
    }
    return std::nullopt;
  }

  std::string dir_;
};

// ------------------------------------------------------------ OutputVerifier

TEST_F(Readiness, OutputSeesALinePrintedAtOnceEvenWhenSuppressed) {
  // The line comes before any verifier could have started: it is kept for
  // it from the first byte, and suppress_output does not hide it.
  for (const char* options : {R"({})", R"({"suppress_output": true})", R"({"redirect_output": "out.log"})"}) {
    auto config = parse(std::string(R"("db": {"executable": "sh", "arguments": ["-c", "echo ready now; exec sleep 1000"],
        "options": )") + options + R"(,
        "verifier": {"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "^ready"}}})");
    Capture capture;
    pymanager::Manager manager(config, capture.options());
    ASSERT_NO_THROW(manager.start()) << options;
    EXPECT_EQ(manager.process(0).state, ProcessState::ready) << options;
    manager.shutdown();
    EXPECT_TRUE(manager.wait_finished(30s));
  }
}

TEST_F(Readiness, OutputWaitsForTheMatchingLineOnTheChosenStreamAndCountsThem) {
  make_gate();
  // "ready" on stderr first: the stdout-only verifier must not take it.
  auto config = parse(R"J("db": {"executable": "sh", "arguments": ["-c",
      "echo ready >&2; echo ready one; read x < gate; echo not it; echo ready two; exec sleep 1000"],
      "verifier": {"type": "pymanager.verifiers.OutputVerifier",
                   "arguments": {"pattern": "ready (one|two)", "stream": "stdout", "count": 2}}})J");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto started = start_async(manager);
  ASSERT_TRUE(capture.wait_output("ready one"));
  EXPECT_EQ(started.wait_for(0s), std::future_status::timeout) << "one matching line passed a count of 2";
  EXPECT_EQ(manager.process(0).state, ProcessState::verifying);
  ASSERT_TRUE(open_gate());
  ASSERT_EQ(started.wait_for(30s), std::future_status::ready);
  EXPECT_FALSE(started.get().has_value());
  EXPECT_EQ(manager.process(0).state, ProcessState::ready);
}

TEST_F(Readiness, OutputSeesEveryLineOfAFastPrinter) {
  // 200,000 lines in a burst, the 100,000th of them the one that counts.
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c",
      "seq 1 200000; exec sleep 1000"], "options": {"suppress_output": true},
      "verifier": {"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "^100000$"}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  ASSERT_NO_THROW(manager.start());
  EXPECT_EQ(manager.process(0).state, ProcessState::ready);
}

TEST_F(Readiness, OutputTimesOutSayingWhatItSaw) {
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "echo starting up; echo still busy >&2; exec sleep 1000"],
      "verifier": {"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "ready", "timeout": 0.3}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::verify_failed);
  EXPECT_THAT(e->what(), HasSubstr("process 'db': verifier pymanager.verifiers.OutputVerifier failed: timed out after 0.3s"));
  EXPECT_THAT(e->what(), HasSubstr("0 of 1 matching lines"));
  EXPECT_THAT(e->what(), HasSubstr("stdout: starting up"));
  EXPECT_THAT(e->what(), HasSubstr("stderr: still busy"));
}

TEST_F(Readiness, OutputFailsAtOnceWhenTheProcessExits) {
  auto error = error_when_the_process_exits(
      R"({"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "ready", "timeout": 600}})");
  EXPECT_THAT(error, HasSubstr("process exited with exit code 3 before printing a line matching /ready/"));
  EXPECT_THAT(error, HasSubstr("stdout: cannot bind"));
}

TEST_F(Readiness, OutputStopsWhenShutdownBegins) {
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "exec sleep 1000"],
      "verifier": {"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "ready", "timeout": 600}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto started = start_async(manager);
  ASSERT_TRUE(wait_until([&] { return manager.process(0).state == ProcessState::verifying; }));
  manager.shutdown();
  ASSERT_EQ(started.wait_for(30s), std::future_status::ready);
  auto e = started.get();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), ErrorKind::shutting_down);
}

TEST_F(Readiness, ARestartWaitsForTheNewRunsLine) {
  make_gate();
  // The first run is ready at once; the second prints its line only when
  // the gate opens, and the restart answers only then.
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c",
      "if [ -e ran ]; then touch second; read x < gate; fi; touch ran; echo ready; exec sleep 1000"],
      "verifier": {"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "^ready$"}}})");
  Capture capture;
  auto options = capture.options();
  pymanager::Manager manager(config, options);
  manager.start();
  auto restarted = std::async(std::launch::async, [&] { return manager.restart(0); });
  ASSERT_TRUE(wait_until([&] { return ::access((dir_ + "/second").c_str(), F_OK) == 0; }));
  EXPECT_EQ(restarted.wait_for(0s), std::future_status::timeout) << "the old run's line counted for the new one";
  ASSERT_TRUE(open_gate());
  ASSERT_EQ(restarted.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(restarted.get().state, ProcessState::ready);
}

TEST_F(Readiness, OutputArgumentErrorsNameTheirPath) {
  auto with = [&](const std::string& arguments) { return argument_error("OutputVerifier", arguments); };
  const std::string at = "processes.db.verifier.arguments.";
  EXPECT_THAT(with("{}"), HasSubstr(at + "pattern: required key is missing"));
  EXPECT_THAT(with(R"({"pattern": "(unclosed"})"), HasSubstr(at + "pattern: not a valid regular expression"));
  EXPECT_THAT(with(R"({"pattern": "x", "stream": "stdin"})"), HasSubstr(at + "stream: expected \"stdout\", \"stderr\" or \"both\""));
  EXPECT_THAT(with(R"({"pattern": "x", "count": 0})"), HasSubstr(at + "count: must be between 1 and"));
  EXPECT_THAT(with(R"({"pattern": "x", "timeout": "5"})"), HasSubstr(at + "timeout: expected a number"));
  EXPECT_THAT(with(R"({"pattern": "x", "paterns": 1})"), HasSubstr(at + "paterns: unknown key"));
  EXPECT_EQ(with(R"({"pattern": "x", "stream": "stderr", "count": 3, "timeout": 1})"), "");
}

// -------------------------------------------------------------- FileVerifier

TEST_F(Readiness, FileWaitsForThePathInTheWorkingDirectoryAndForContents) {
  ASSERT_EQ(::mkdir((dir_ + "/work").c_str(), 0755), 0);
  make_gate("work/gate");
  // The file exists but is empty until the gate opens.
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c",
      ": > db.pid; read x < gate; echo $$ > db.pid; exec sleep 1000"], "options": {"working_directory": "work"},
      "verifier": {"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "db.pid", "non_empty": true}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto started = start_async(manager);
  ASSERT_TRUE(wait_until([&] { return ::access((dir_ + "/work/db.pid").c_str(), F_OK) == 0; }));
  EXPECT_EQ(started.wait_for(0s), std::future_status::timeout) << "an empty file passed non_empty";
  ASSERT_TRUE(open_gate("work/gate"));
  ASSERT_EQ(started.wait_for(30s), std::future_status::ready);
  EXPECT_FALSE(started.get().has_value());
  EXPECT_EQ(manager.process(0).state, ProcessState::ready);
}

TEST_F(Readiness, FileExistsIsEnoughWithoutNonEmptyAndATimeoutSaysWhatItSaw) {
  {
    auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", ": > marker; exec sleep 1000"],
        "verifier": {"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "marker"}}})");
    Capture capture;
    pymanager::Manager manager(config, capture.options());
    EXPECT_NO_THROW(manager.start());
  }
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "exec sleep 1000"],
      "verifier": {"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "never.sock", "timeout": 0.2}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("timed out after 0.2s (last attempt: " + dir_ + "/never.sock: No such file or directory)"));
}

TEST_F(Readiness, FileFailsAtOnceWhenTheProcessExits) {
  EXPECT_THAT(error_when_the_process_exits(
                  R"({"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "db.pid", "timeout": 600}})"),
              HasSubstr("process exited with exit code 3 while verifying"));
}

TEST_F(Readiness, FileArgumentErrorsNameTheirPath) {
  auto with = [&](const std::string& arguments) { return argument_error("FileVerifier", arguments); };
  const std::string at = "processes.db.verifier.arguments.";
  EXPECT_THAT(with("{}"), HasSubstr(at + "path: required key is missing"));
  EXPECT_THAT(with(R"({"path": ""})"), HasSubstr(at + "path: must not be empty"));
  EXPECT_THAT(with(R"({"path": 3})"), HasSubstr(at + "path: expected a string"));
  EXPECT_THAT(with(R"({"path": "x", "non_empty": "yes"})"), HasSubstr(at + "non_empty: expected true or false"));
  EXPECT_THAT(with(R"({"path": "x", "interval": -1})"), HasSubstr(at + "interval: must be at least 0"));
}

// ----------------------------------------------------------- CommandVerifier

TEST_F(Readiness, CommandPassesOnceItExitsZeroInTheProcessesDirectoryAndEnvironment) {
  ASSERT_EQ(::mkdir((dir_ + "/work").c_str(), 0755), 0);
  make_gate("work/gate");
  testutil::write_file(dir_ + "/env.sh", "FROM_FILE=sourced\n");
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "read x < gate; touch up; exec sleep 1000"],
      "options": {"working_directory": "work", "environment_file": "env.sh", "environment": {"GREETING": "hello"}},
      "verifier": {"type": "pymanager.verifiers.CommandVerifier",
                   "arguments": {"command": "echo $$ >> ../probes; test \"$GREETING $FROM_FILE\" = \"hello sourced\" && test -f up"}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto started = start_async(manager);
  ASSERT_TRUE(wait_until([&] { return pids_in("probes").size() >= 2; }));
  EXPECT_EQ(started.wait_for(0s), std::future_status::timeout);
  ASSERT_TRUE(open_gate("work/gate"));
  ASSERT_EQ(started.wait_for(30s), std::future_status::ready);
  auto e = started.get();
  EXPECT_FALSE(e.has_value()) << e->what();
  EXPECT_EQ(manager.process(0).state, ProcessState::ready);
}

TEST_F(Readiness, AnArgumentListRunsWithoutAShell) {
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "exec sleep 1000"],
      "verifier": {"type": "pymanager.verifiers.CommandVerifier",
                   "arguments": {"command": ["sh", "-c", "test \"$1\" = \"a b\"", "x", "a b"]}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  EXPECT_NO_THROW(manager.start());
}

TEST_F(Readiness, AHangingCommandIsKilledAtItsAttemptTimeoutAndNothingOfItIsLeft) {
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "exec sleep 1000"],
      "verifier": {"type": "pymanager.verifiers.CommandVerifier",
                   "arguments": {"command": "sleep 1000 & echo $! $$ >> hung; echo waiting; wait", "attempt_timeout": 0.3,
                                 "timeout": 1}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("still running after 0.3s, killed; last output: waiting"));
  auto pids = pids_in("hung");
  ASSERT_GE(pids.size(), 2u);
  for (pid_t pid : pids) EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(pid); }, 5000ms)) << pid;
}

TEST_F(Readiness, ACommandFailureShowsItsExitAndLastLines) {
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "exec sleep 1000"],
      "verifier": {"type": "pymanager.verifiers.CommandVerifier",
                   "arguments": {"command": "echo one; echo two; echo no server on port 5 >&2; exit 2", "timeout": 0.3}}})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("timed out after 0.3s (last attempt: "));
  EXPECT_THAT(e->what(), HasSubstr("exit code 2; last output: one | two | no server on port 5)"));
}

TEST_F(Readiness, CommandFailsAtOnceWhenTheProcessExits) {
  EXPECT_THAT(error_when_the_process_exits(
                  R"({"type": "pymanager.verifiers.CommandVerifier", "arguments": {"command": "false", "timeout": 600}})"),
              HasSubstr("process exited with exit code 3 while verifying"));
}

TEST_F(Readiness, CommandArgumentErrorsNameTheirPath) {
  auto with = [&](const std::string& arguments) { return argument_error("CommandVerifier", arguments); };
  const std::string at = "processes.db.verifier.arguments.";
  EXPECT_THAT(with("{}"), HasSubstr(at + "command: required key is missing"));
  EXPECT_THAT(with(R"({"command": []})"), HasSubstr(at + "command: must not be empty"));
  EXPECT_THAT(with(R"({"command": ""})"), HasSubstr(at + "command: must not be empty"));
  EXPECT_THAT(with(R"({"command": ["pg_isready", 5]})"), HasSubstr(at + "command[1]: expected a string, got 5"));
  EXPECT_THAT(with(R"({"command": 5})"), HasSubstr(at + "command: expected a list of arguments or a shell command string"));
  EXPECT_THAT(with(R"({"command": "x", "attempt_timeout": 0})"), HasSubstr(at + "attempt_timeout: must be more than 0"));
  EXPECT_THAT(with(R"({"command": "x", "intervall": 1})"), HasSubstr(at + "intervall: unknown key (did you mean interval?)"));
}

// ---------------------------------------------------------------- several

TEST_F(Readiness, SeveralVerifiersAllPassInOrder) {
  make_gate();
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c",
      "echo listening; read x < gate; touch db.ready; exec sleep 1000"],
      "verifiers": [{"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "listening"}},
                    {"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "db.ready"}}]})");
  Capture capture;
  auto options = capture.options();
  options.verbose = true;
  pymanager::Manager manager(config, options);
  auto started = start_async(manager);
  ASSERT_TRUE(wait_until([&] { return capture.log().find("verified by pymanager.verifiers.OutputVerifier (verifiers[0])") !=
                                      std::string::npos; }));
  EXPECT_EQ(started.wait_for(0s), std::future_status::timeout) << "the second verifier was not waited for";
  ASSERT_TRUE(open_gate());
  ASSERT_EQ(started.wait_for(30s), std::future_status::ready);
  EXPECT_FALSE(started.get().has_value());
  EXPECT_THAT(capture.log(), HasSubstr("verified by pymanager.verifiers.FileVerifier (verifiers[1])"));
}

TEST_F(Readiness, AFailureNamesWhichVerifierFailed) {
  auto config = parse(R"("db": {"executable": "sh", "arguments": ["-c", "echo listening; exec sleep 1000"],
      "verifiers": [{"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "listening"}},
                    {"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "db.ready", "timeout": 0.1}}]})");
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("process 'db': verifier pymanager.verifiers.FileVerifier (verifiers[1]) failed: timed out"));
}

TEST_F(Readiness, VerifierAndVerifiersTogetherIsAnError) {
  EXPECT_THAT(config_error(R"("db": {"executable": "true", "arguments": [],
      "verifier": {"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "x"}},
      "verifiers": [{"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "y"}}]})"),
              HasSubstr("processes.db.verifiers: give either verifier (one check) or verifiers (a list), not both"));
  EXPECT_THAT(config_error(R"("db": {"executable": "true", "arguments": [], "verifiers": {"type": "x"}})"),
              HasSubstr("processes.db.verifiers: expected a list of verifiers, got an object"));
  EXPECT_THAT(config_error(R"("db": {"executable": "true", "arguments": [],
      "verifiers": [{"type": "pymanager.verifiers.FileVerifier", "arguments": {}}]})"),
              HasSubstr("processes.db.verifiers[0].arguments.path: required key is missing"));
  EXPECT_THAT(config_error(R"("db": {"executable": "true", "arguments": [], "verifiers": [{"type": "pymanager.verifiers.Nope"}]})"),
              HasSubstr("processes.db.verifiers[0].type: verifier 'pymanager.verifiers.Nope' is not loaded under modules"));
  EXPECT_EQ(config_error(R"("db": {"executable": "true", "arguments": [], "verifiers": []})"), "");
}

}  // namespace
