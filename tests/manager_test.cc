// The Manager with real processes: launch order, options, verifiers, output,
// stopping whole process groups, and the keeper's cleanup after a crash.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
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
using testutil::Capture;
using testutil::wait_until;

pymanager::Config parse(const std::string& text, const std::string& base = "") {
  pymanager::Config config = pymanager::parse_config(nlohmann::ordered_json::parse(text), pymanager::builtin_verifiers());
  config.base_directory = base;
  return config;
}

const char* kModules = R"("modules": {
    "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]},
    "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}
  })";

std::string config_text(const std::string& body, const std::string& extra = "") {
  return std::string("{") + kModules + ", " + extra + (extra.empty() ? "" : ", ") + "\"processes\": {" + body + "}}";
}

/// Reads the first "<marker><number>" in `text`, or 0.
pid_t pid_in(const std::string& text, const std::string& marker) {
  auto pids = testutil::pids_after(text, marker);
  return pids.empty() ? 0 : pids.front();
}

/// The error start() throws; a test failure when it does not throw.
std::optional<pymanager::Error> start_error(pymanager::Manager& manager) {
  try {
    manager.start();
  } catch (const pymanager::Error& e) {
    return e;
  }
  ADD_FAILURE() << "start() should have thrown";
  return std::nullopt;
}

TEST(Manager, LaunchesInOrderAndWaitsForEachVerifier) {
  std::string dir = testutil::make_temp_dir();
  // "second" can only succeed if "first" ran to completion before it started.
  auto config = parse(config_text(R"(
    "first": {"executable": "sh", "arguments": ["-c", "sleep 0.2; echo one > order"],
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "second": {"executable": "sh", "arguments": ["-c", "cat order > seen; echo two >> order"],
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}}
  )"), dir);
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  EXPECT_EQ(testutil::read_file(dir + "/seen"), "one\n");
  EXPECT_EQ(testutil::read_file(dir + "/order"), "one\ntwo\n");
  auto processes = manager.processes();
  ASSERT_EQ(processes.size(), 2u);
  EXPECT_EQ(processes[0].name, "first");
  EXPECT_EQ(processes[0].id, 1);
  EXPECT_EQ(processes[1].id, 2);
  ASSERT_TRUE(processes[1].exit.has_value());
  EXPECT_EQ(processes[1].exit->code(), 0);
}

TEST(Manager, MissingExecutableIsASpawnErrorNamingTheProcessAndLeavesNothingRunning) {
  auto config = parse(config_text(R"(
    "sleepy": {"executable": "sh", "arguments": ["-c", "echo sleepy $$; exec sleep 1000"]},
    "ghost": {"executable": "no-such-program-pymanager-test", "arguments": []}
  )"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), pymanager::ErrorKind::spawn_failed);
  EXPECT_THAT(e->what(), HasSubstr("'ghost'"));
  EXPECT_THAT(e->what(), HasSubstr("no-such-program-pymanager-test"));
  EXPECT_THAT(e->what(), HasSubstr("not found"));
  pid_t sleepy = manager.processes()[0].pid;
  ASSERT_GT(sleepy, 0);
  EXPECT_TRUE(manager.finished());
  EXPECT_FALSE(testutil::group_alive(sleepy));
}

TEST(Manager, NotExecutableAndMissingWorkingDirectoryAreClearErrors) {
  std::string dir = testutil::make_temp_dir();
  testutil::write_file(dir + "/script.sh", "#!/bin/sh\necho hi\n");
  ::chmod((dir + "/script.sh").c_str(), 0644);
  {
    auto config = parse(config_text(R"("plain": {"executable": "./script.sh", "arguments": []})"), dir);
    Capture capture;
  pymanager::Manager manager(config, capture.options());
    auto e = start_error(manager);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind(), pymanager::ErrorKind::spawn_failed);
    EXPECT_THAT(e->what(), HasSubstr("'plain'"));
    EXPECT_THAT(e->what(), HasSubstr("Permission denied"));
  }
  {
    auto config = parse(config_text(R"("lost": {"executable": "true", "arguments": [],
                                              "options": {"working_directory": "nowhere"}})"), dir);
    Capture capture;
  pymanager::Manager manager(config, capture.options());
    auto e = start_error(manager);
    ASSERT_TRUE(e);
    EXPECT_EQ(e->kind(), pymanager::ErrorKind::spawn_failed);
    EXPECT_THAT(e->what(), HasSubstr("'lost'"));
    EXPECT_THAT(e->what(), HasSubstr("working_directory " + dir + "/nowhere"));
    EXPECT_THAT(e->what(), HasSubstr("No such file or directory"));
  }
}

TEST(Manager, ExecutableIsRelativeToTheBaseDirectoryNotTheWorkingDirectory) {
  std::string dir = testutil::make_temp_dir();
  ::mkdir((dir + "/work").c_str(), 0755);
  testutil::write_file(dir + "/tool.sh", "#!/bin/sh\necho \"cwd=$(pwd)\"\n");
  ::chmod((dir + "/tool.sh").c_str(), 0755);
  auto config = parse(config_text(R"("tool": {"executable": "./tool.sh", "arguments": [],
      "options": {"working_directory": "work"},
      "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}})"), dir);
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  EXPECT_TRUE(capture.wait_output("tool | cwd=" + dir + "/work\n")) << capture.output();
}

TEST(Manager, ExitedVerifierReportsTheWrongCodeWithTheLastOutput) {
  auto config = parse(config_text(R"(
    "migrate": {"executable": "sh", "arguments": ["-c", "echo applying; echo 'table exists' >&2; exit 2"],
                "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "never": {"executable": "sh", "arguments": ["-c", "echo launched > never-ran"]}
  )"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), pymanager::ErrorKind::verify_failed);
  EXPECT_THAT(e->what(), HasSubstr("'migrate'"));
  EXPECT_THAT(e->what(), HasSubstr("pymutils.exited_verifier.ExitedVerifier"));
  EXPECT_THAT(e->what(), HasSubstr("exited with exit code 2, expected exit code 0"));
  EXPECT_THAT(e->what(), HasSubstr("table exists"));
  // Nothing after the failed step was launched.
  EXPECT_EQ(manager.processes()[1].pid, 0);
}

TEST(Manager, ExitedVerifierTimesOutAndTheProcessIsStopped) {
  auto config = parse(config_text(R"(
    "stuck": {"executable": "sh", "arguments": ["-c", "exec sleep 1000"],
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"timeout": 0.2}}}
  )"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), pymanager::ErrorKind::verify_failed);
  EXPECT_THAT(e->what(), HasSubstr("still running after 0.2s"));
  EXPECT_FALSE(testutil::group_alive(manager.processes()[0].pid));
}

TEST(Manager, HttpVerifierFailsAtOnceWhenTheProcessExits) {
  // Nothing listens on this port; the verifier's timeout is 60 s, but the
  // process exits, so the failure comes at once, with its exit code and output.
  auto config = parse(config_text(R"(
    "web": {"executable": "sh", "arguments": ["-c", "sleep 0.1; echo 'bind: address in use' >&2; exit 3"],
            "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                         "arguments": {"url": "http://127.0.0.1:9/health", "timeout": 60}}}
  )"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto started = std::chrono::steady_clock::now();
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), pymanager::ErrorKind::verify_failed);
  EXPECT_THAT(e->what(), HasSubstr("'web'"));
  EXPECT_THAT(e->what(), HasSubstr("exit code 3"));
  EXPECT_THAT(e->what(), HasSubstr("connection refused"));
  EXPECT_THAT(e->what(), HasSubstr("bind: address in use"));
  // Far from the verifier's 60 s timeout (a behaviour, not a benchmark).
  EXPECT_LT(std::chrono::steady_clock::now() - started, 20s);
}

TEST(Manager, OutputIsPrefixedSuppressedOrRedirectedAndTheTailIsKept) {
  std::string dir = testutil::make_temp_dir();
  auto config = parse(config_text(R"(
    "loud": {"executable": "sh", "arguments": ["-c", "echo out-line; echo err-line >&2; printf 'no newline'"],
             "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "quiet": {"executable": "sh", "arguments": ["-c", "echo secret-line"], "options": {"suppress_output": true},
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "filed": {"executable": "sh", "arguments": ["-c", "echo to-file; echo err-to-file >&2"],
              "options": {"redirect_output": "filed.log"},
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}}
  )"), dir);
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  ASSERT_TRUE(capture.wait_output("loud  | no newline\n")) << capture.output();
  std::string out = capture.output();
  EXPECT_THAT(out, HasSubstr("loud  | out-line\n"));
  EXPECT_THAT(out, HasSubstr("loud  | err-line\n"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("secret-line")));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("to-file")));
  ASSERT_TRUE(wait_until([&] { return testutil::read_file(dir + "/filed.log").size() >= 20; }));
  // stdout and stderr come through pipes of their own: each line is known
  // to be one or the other, and the two streams' order is the reads' order.
  EXPECT_THAT(testutil::read_file(dir + "/filed.log"),
              ::testing::AnyOf("to-file\nerr-to-file\n", "err-to-file\nto-file\n"));
  EXPECT_EQ(manager.output_tail(1, 10), std::vector<std::string>{"secret-line"});
  EXPECT_THAT(manager.output_tail(0, 3), ::testing::UnorderedElementsAre("out-line", "err-line", "no newline"));
}

TEST(Manager, AChildNeverBlocksOnAFullPipe) {
  // 20 MB of output through the pipe: the child finishes because the
  // manager keeps reading, whether the output is shown or discarded.
  auto config = parse(config_text(R"(
    "flood": {"executable": "sh", "arguments": ["-c", "head -c 20000000 /dev/zero | tr '\\0' 'x' | fold -w 1000; echo; echo finished"],
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"timeout": 60}}},
    "flood2": {"executable": "sh", "arguments": ["-c", "head -c 20000000 /dev/zero; echo finished"],
               "options": {"suppress_output": true},
               "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"timeout": 60}}}
  )"));
  Capture capture;
  auto options = capture.options();
  int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  options.output_fd = null_fd;
  {
    pymanager::Manager manager(config, options);
    manager.start();
    EXPECT_EQ(manager.output_tail(0, 1), std::vector<std::string>{"finished"});
  }
  ::close(null_fd);
}

TEST(Manager, EnvironmentFileIsSourcedAndShellRunsTheExecutableAsAScript) {
  std::string dir = testutil::make_temp_dir();
  testutil::write_file(dir + "/service.env", "GREETING='hello there'\nCOUNT=$((1 + 2))\n");
  auto config = parse(config_text(R"(
    "env": {"executable": "sh", "arguments": ["-c", "echo \"greeting=$GREETING count=$COUNT\""],
            "options": {"environment_file": "service.env"},
            "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "shell": {"executable": "echo \"args=$0,$1\" | tr a-z A-Z", "arguments": ["x", "y"], "options": {"shell": true},
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}}
  )"), dir);
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  EXPECT_TRUE(capture.wait_output("env   | greeting=hello there count=3\n")) << capture.output();
  EXPECT_TRUE(capture.wait_output("shell | ARGS=X,Y\n")) << capture.output();
}

TEST(Manager, ShutdownStopsTheWholeProcessGroup) {
  auto config = parse(config_text(R"(
    "parent": {"executable": "sh", "arguments": ["-c", "sleep 1000 & echo grandchild $!; wait"]}
  )"));
  Capture capture;
  pid_t leader, grandchild;
  {
    pymanager::Manager manager(config, capture.options());
    manager.start();
    ASSERT_TRUE(capture.wait_output("grandchild ")) << capture.output();
    ASSERT_TRUE(capture.wait_output("\n"));
    grandchild = pid_in(capture.output(), "grandchild ");
    leader = manager.processes()[0].pid;
    ASSERT_TRUE(testutil::pid_alive(grandchild));
    manager.shutdown();
    ASSERT_TRUE(manager.wait_finished(10s));
    EXPECT_FALSE(testutil::group_alive(leader));
    EXPECT_FALSE(testutil::pid_alive(grandchild));
  }
}

TEST(Manager, AProcessThatIgnoresSigtermIsKilledAfterTheGracefulTime) {
  auto config = parse(config_text(R"("stubborn": {"executable": "sh", "arguments": ["-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]})",
                                  R"("graceful-time": 0.3)"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  ASSERT_TRUE(capture.wait_output("stubborn | ready\n"));
  pid_t pid = manager.processes()[0].pid;
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(10s));
  auto info = manager.processes()[0];
  ASSERT_TRUE(info.exit.has_value());
  EXPECT_TRUE(info.exit->signaled);
  EXPECT_EQ(info.exit->value, SIGKILL);
  EXPECT_TRUE(info.killed);
  EXPECT_EQ(manager.state(), pymanager::ManagerState::force_shutdown);
  EXPECT_FALSE(testutil::group_alive(pid));
  EXPECT_THAT(capture.log(), HasSubstr("'stubborn'"));
  EXPECT_THAT(capture.log(), HasSubstr("did not stop within its graceful time"));
}

TEST(Manager, AGroupCountsAsStoppedOnlyWhenEmpty) {
  // The leader exits at once on SIGTERM; its child ignores SIGTERM and is
  // only gone after the SIGKILL. The shutdown is not finished before that.
  auto config = parse(config_text(
      R"("parent": {"executable": "sh", "arguments": ["-c", "(trap '' TERM; echo child $(sh -c 'echo $PPID'); while :; do sleep 0.05; done) & wait"]})",
      R"("graceful-time": 0.5)"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  ASSERT_TRUE(capture.wait_output("parent | child "));
  pid_t leader = manager.processes()[0].pid;
  manager.shutdown();
  ASSERT_TRUE(wait_until([&] { return manager.processes()[0].exit.has_value(); }));
  EXPECT_TRUE(testutil::group_alive(leader));
  EXPECT_FALSE(manager.finished());
  ASSERT_TRUE(manager.wait_finished(10s));
  EXPECT_FALSE(testutil::group_alive(leader));
}

TEST(Manager, KeepAliveFalseFinishesWhenEverythingHasExited) {
  auto config = parse(config_text(R"("once": {"executable": "sh", "arguments": ["-c", "sleep 0.1"]})"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  EXPECT_TRUE(manager.wait_finished(10s));
  EXPECT_EQ(manager.processes()[0].exit->code(), 0);
}

TEST(Manager, KeepAliveTrueStaysAfterEverythingHasExited) {
  auto config = parse(config_text(R"("once": {"executable": "sh", "arguments": ["-c", "exit 0"]})", R"("keep-alive": true)"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  ASSERT_TRUE(wait_until([&] { return manager.processes()[0].exit.has_value(); }));
  // Starting it again goes through the event thread after the exit's
  // handling is complete; a manager without keep-alive would have begun
  // its shutdown by then, and refused the start.
  EXPECT_NO_THROW(manager.start_process(0));
  EXPECT_FALSE(manager.shutdown_begun());
  EXPECT_EQ(manager.state(), pymanager::ManagerState::running);
  manager.shutdown();
  EXPECT_TRUE(manager.wait_finished(10s));
}

TEST(Manager, RestartStopsTheGroupAndLaunchesAgainWithANewPid) {
  std::string dir = testutil::make_temp_dir();
  auto config = parse(config_text(R"(
    "svc": {"executable": "sh", "arguments": ["-c", "echo run >> runs; exec sleep 1000"]}
  )", R"("keep-alive": true)"), dir);
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  ASSERT_TRUE(wait_until([&] { return testutil::read_file(dir + "/runs") == "run\n"; }));
  pid_t first = manager.processes()[0].pid;
  auto info = manager.restart(0);
  EXPECT_NE(info.pid, first);
  EXPECT_TRUE(info.running);
  EXPECT_EQ(info.restarts, 1);
  EXPECT_FALSE(testutil::group_alive(first));
  EXPECT_FALSE(info.killed);
  ASSERT_TRUE(wait_until([&] { return testutil::read_file(dir + "/runs") == "run\nrun\n"; }));
}

TEST(Manager, AStopOrRestartWithoutAGraceUsesTheRestartGracefulTimeAsTheApiDoes) {
  // Both ignore SIGTERM: only the SIGKILL after the grace ends them. The
  // shutdown's graceful-time (60 s) must not be the one a stop waits.
  std::string dir = testutil::make_temp_dir();
  auto config = parse(config_text(R"(
    "plain": {"executable": "sh", "arguments": ["-c", "trap '' TERM; echo up > plain.up; exec sleep 1000"]},
    "own": {"executable": "sh", "arguments": ["-c", "trap '' TERM; echo up > own.up; exec sleep 1000"],
            "options": {"graceful_time": 0.2}}
  )", R"("keep-alive": true, "graceful-time": 60, "restart-graceful-time": 0.3)"), dir);
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  manager.start();
  EXPECT_DOUBLE_EQ(manager.restart_grace(0), 0.3);
  EXPECT_DOUBLE_EQ(manager.restart_grace(1), 0.2);
  ASSERT_TRUE(wait_until([&] { return testutil::read_file(dir + "/plain.up") == "up\n"; }));
  ASSERT_TRUE(wait_until([&] { return testutil::read_file(dir + "/own.up") == "up\n"; }));
  for (std::size_t i : {0, 1}) {
    pid_t pid = manager.processes()[i].pid;
    auto started = std::chrono::steady_clock::now();
    if (i == 0) {
      manager.stop_process(i);
    } else {
      manager.restart(i);
    }
    EXPECT_LT(std::chrono::steady_clock::now() - started, 30s) << i;
    EXPECT_FALSE(testutil::group_alive(pid)) << i;
  }
  EXPECT_TRUE(manager.processes()[0].killed);
}

TEST(Manager, UnexpectedExitIsReportedAndExpectedOnesAreNot) {
  std::mutex mutex;
  std::vector<std::pair<std::string, bool>> exits;
  auto config = parse(config_text(R"(
    "step": {"executable": "sh", "arguments": ["-c", "exit 0"], "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "crashy": {"executable": "sh", "arguments": ["-c", "sleep 0.2; exit 7"]},
    "steady": {"executable": "sleep", "arguments": ["1000"]}
  )", R"("keep-alive": true)"));
  Capture capture;
  auto options = capture.options();
  options.on_exit = [&](const pymanager::ProcessInfo& info, bool expected) {
    std::lock_guard<std::mutex> lock(mutex);
    exits.emplace_back(info.name + ":" + std::to_string(info.exit->code()), expected);
  };
  pymanager::Manager manager(config, options);
  manager.start();
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> lock(mutex);
    return exits.size() == 2;
  }));
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(10s));
  std::lock_guard<std::mutex> lock(mutex);
  ASSERT_EQ(exits.size(), 3u);
  EXPECT_EQ(exits[0], std::make_pair(std::string("step:0"), true));
  EXPECT_EQ(exits[1], std::make_pair(std::string("crashy:7"), false));
  EXPECT_EQ(exits[2], std::make_pair(std::string("steady:-15"), true));
  // Without process.exit in messages (and without verbose), exits are no
  // output of ours: the original prints nothing more by default.
  EXPECT_THAT(capture.log(), Not(HasSubstr("exited")));
}

TEST(Manager, ExitsAreLoggedOnlyWithProcessExitOrVerbose) {
  const std::string processes = R"("crashy": {"executable": "sh", "arguments": ["-c", "exit 47"]},
                                   "steady": {"executable": "sleep", "arguments": ["1000"]})";
  struct Case {
    const char* name;
    std::string extra;
    bool verbose;
    const char* expected;  ///< nullptr: no message about the exit
  };
  const Case cases[] = {
      {"quiet", R"("keep-alive": true)", false, nullptr},
      {"process.exit", R"("keep-alive": true, "messages": ["process.exit"])", false, "process 'crashy' (pid "},
      {"verbose", R"("keep-alive": true)", true, "exited unexpectedly with exit code 47"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::atomic<bool> exited{false};
    Capture capture;
    auto options = capture.options();
    options.verbose = c.verbose;
    options.on_exit = [&](const pymanager::ProcessInfo& info, bool) {
      if (info.name == "crashy") exited = true;
    };
    pymanager::Manager manager(parse(config_text(processes, c.extra)), options);
    manager.start();
    // on_exit runs after the exit was logged.
    ASSERT_TRUE(wait_until([&] { return exited.load(); }, 20000ms));
    std::string log = capture.log();
    if (c.expected == nullptr) {
      EXPECT_THAT(log, Not(HasSubstr("crashy"))) << log;
    } else {
      EXPECT_THAT(log, HasSubstr(c.expected)) << log;
      EXPECT_THAT(log, HasSubstr("47")) << log;
    }
  }
}

TEST(Manager, ADaemonThatLeftItsGroupIsKilledWhenTheManagerGoesAway) {
  auto config = parse(config_text(R"(
    "daemonizer": {"executable": "sh", "arguments": ["-c", "setsid sleep 1000 & echo daemon $!; wait"]}
  )"));
  Capture capture;
  pid_t daemon;
  {
    pymanager::Manager manager(config, capture.options());
    manager.start();
    ASSERT_TRUE(capture.wait_output("daemonizer | daemon "));
    ASSERT_TRUE(capture.wait_output("\n"));
    daemon = pid_in(capture.output(), "daemon ");
    ASSERT_TRUE(wait_until([&] { return ::getsid(daemon) == daemon; })) << "the test child did not setsid";
    ASSERT_TRUE(testutil::pid_alive(daemon));
  }
  EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(daemon); }, 3000ms));
}

/// Forks a host process that starts a manager (a service with a grandchild,
/// and a daemon that left its group), reports the pids, then dies by `how`.
void expect_cleanup_after_host_death(const std::function<void()>& how) {
  std::string dir = testutil::make_temp_dir();
  std::string pids_file = dir + "/pids";
  pid_t host = ::fork();
  ASSERT_GE(host, 0);
  if (host == 0) {
    auto config = parse(config_text(R"(
      "service": {"executable": "sh", "arguments": ["-c", "sleep 1000 & echo $! > grandchild.pid; wait"]},
      "daemonizer": {"executable": "sh", "arguments": ["-c", "setsid sleep 1000 & echo $! > daemon.pid; wait"]}
    )"), dir);
    int null_fd = ::open("/dev/null", O_WRONLY);
    pymanager::ManagerOptions options;
    options.output_fd = null_fd;
    options.log = [](const std::string&) {};
    auto* manager = new pymanager::Manager(config, options);  // never destroyed: the host dies
    manager->start();
    auto has = [&](const char* f) { return testutil::read_file(dir + "/" + f).find('\n') != std::string::npos; };
    testutil::wait_until([&] { return has("grandchild.pid") && has("daemon.pid"); });
    auto ps = manager->processes();
    testutil::write_file(pids_file + ".tmp", std::to_string(ps[0].pid) + " " + std::to_string(ps[1].pid) + " " +
                                                 testutil::read_file(dir + "/grandchild.pid") + " " +
                                                 testutil::read_file(dir + "/daemon.pid"));
    ::rename((pids_file + ".tmp").c_str(), pids_file.c_str());
    how();
    ::_exit(99);  // not reached for the deadly ways
  }
  if (!wait_until([&] { return ::access(pids_file.c_str(), F_OK) == 0; }, 10000ms)) {
    ::kill(host, SIGKILL);
    ::waitpid(host, nullptr, 0);
    FAIL() << "the host never reported its pids";
  }
  std::vector<pid_t> pids;
  {
    std::istringstream in(testutil::read_file(pids_file));
    pid_t p;
    while (in >> p) pids.push_back(p);
  }
  ASSERT_EQ(pids.size(), 4u);
  int status;
  if (!wait_until([&] { return ::waitpid(host, &status, WNOHANG) == host; }, 10000ms)) {
    ::kill(host, SIGKILL);
    ::waitpid(host, &status, 0);
    FAIL() << "the host did not die as asked";
  }
  for (pid_t p : pids) {
    EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(p); }, 1000ms)) << "pid " << p << " survived its host";
  }
  for (int k = 0; k < 2; ++k) {
    // Zombies still count as group members until they are reaped.
    EXPECT_TRUE(wait_until([&] { return !testutil::group_alive(pids[k]); }, 1000ms)) << "group " << pids[k];
  }
}

TEST(KeeperCleanup, HostKilledWithSigkill) {
  expect_cleanup_after_host_death([] { ::kill(::getpid(), SIGKILL); });
}

TEST(KeeperCleanup, HostAborts) {
  expect_cleanup_after_host_death([] {
    ::signal(SIGABRT, SIG_DFL);
    std::abort();
  });
}

TEST(KeeperCleanup, HostSegfaults) {
  expect_cleanup_after_host_death([] {
    ::signal(SIGSEGV, SIG_DFL);
    ::raise(SIGSEGV);
  });
}

TEST(KeeperCleanup, HostCallsExitWithoutCleanup) {
  expect_cleanup_after_host_death([] { ::_exit(3); });
}

}  // namespace

namespace {

/// A user-written verifier: passes once a file exists (arguments: "path").
class FileExistsVerifier : public pymanager::Verifier {
 public:
  explicit FileExistsVerifier(std::string path) : path_(std::move(path)) {}
  pymanager::VerifyResult verify(pymanager::VerifyContext& context) const override {
    return pymanager::retry_until(context, 10, 0.05, [&] {
      return ::access(path_.c_str(), F_OK) == 0 ? pymanager::VerifyResult::ok("found " + path_)
                                                : pymanager::VerifyResult::failure(path_ + " does not exist yet");
    });
  }

 private:
  std::string path_;
};

TEST(Manager, AUserWrittenVerifierIsUsedFromTheConfig) {
  std::string dir = testutil::make_temp_dir();
  auto registry = pymanager::builtin_verifiers();
  registry.add("mytests.FileExistsVerifier", [&](const nlohmann::json& args, const std::string& path) {
    pymanager::ArgumentReader reader(args, path);
    std::string file = reader.required_string("path");
    reader.finish();
    return std::make_shared<FileExistsVerifier>(dir + "/" + file);
  });
  // Registered is not enough: a config must list the type under modules.
  EXPECT_THROW(pymanager::parse_config(nlohmann::ordered_json::parse(
                   R"({"processes": {"x": {"executable": "true", "arguments": [],
                       "verifier": {"type": "mytests.FileExistsVerifier", "arguments": {"path": "f"}}}}})"),
                                       registry),
               pymanager::Error);
  auto next = pymanager::parse_config(nlohmann::ordered_json::parse(R"({
    "modules": {"mytests": {"verifiers": ["FileExistsVerifier"]},
                "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}},
    "processes": {
      "writer": {"executable": "sh", "arguments": ["-c", "sleep 0.1; touch ready.flag; exec sleep 1000"],
                 "verifier": {"type": "mytests.FileExistsVerifier", "arguments": {"path": "ready.flag"}}},
      "next": {"executable": "sh", "arguments": ["-c", "test -f ready.flag && echo saw-flag"],
               "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}}
    }})"), registry);
  next.base_directory = dir;
  Capture capture;
  pymanager::Manager manager(next, capture.options());
  manager.start();
  EXPECT_EQ(manager.output_tail(1, 1), std::vector<std::string>{"saw-flag"});
}

TEST(Manager, AVerifierStopsWaitingAsSoonAsShutdownBegins) {
  auto config = parse(config_text(R"(
    "web": {"executable": "sleep", "arguments": ["1000"],
            "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                         "arguments": {"url": "http://127.0.0.1:9/", "timeout": 120}}}
  )"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto future = std::async(std::launch::async, [&] {
    try {
      manager.start();
      return pymanager::ErrorKind::system;
    } catch (const pymanager::Error& e) {
      return e.kind();
    }
  });
  EXPECT_TRUE(wait_until([&] { return manager.processes()[0].running; }));
  manager.shutdown();
  // Long before the verifier's 120 s timeout.
  ASSERT_EQ(future.wait_for(20s), std::future_status::ready);
  EXPECT_EQ(future.get(), pymanager::ErrorKind::shutting_down);
  EXPECT_TRUE(manager.wait_finished(10s));
}

}  // namespace

namespace {

class ThrowingVerifier : public pymanager::Verifier {
 public:
  pymanager::VerifyResult verify(pymanager::VerifyContext&) const override {
    throw std::runtime_error("disk on fire");
  }
};

TEST(Manager, AVerifierThatThrowsFailsItsProcessCleanly) {
  auto registry = pymanager::builtin_verifiers();
  registry.add("mytests.Throwing", [](const nlohmann::json&, const std::string&) {
    return std::make_shared<ThrowingVerifier>();
  });
  auto config = pymanager::parse_config(nlohmann::ordered_json::parse(R"({
    "modules": {"mytests": {"verifiers": ["Throwing"]}},
    "processes": {"svc": {"executable": "sleep", "arguments": ["1000"], "verifier": {"type": "mytests.Throwing"}}}})"),
                                        registry);
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind(), pymanager::ErrorKind::verify_failed);
  EXPECT_THAT(e->what(), HasSubstr("process 'svc': verifier mytests.Throwing failed: the verifier threw: disk on fire"));
  EXPECT_FALSE(testutil::group_alive(manager.processes()[0].pid));
}

TEST(Manager, AnHttpAttemptNeverOutlivesTheVerifierTimeout) {
  // Accepts connections (the kernel's backlog) but never answers.
  testutil::Listener silent;
  auto config = parse(config_text(R"("web": {"executable": "sleep", "arguments": ["1000"],
      "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                   "arguments": {"url": "http://127.0.0.1:)" + std::to_string(silent.port()) + R"(/", "timeout": 0.5}}})"));
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  auto started = std::chrono::steady_clock::now();
  auto e = start_error(manager);
  ASSERT_TRUE(e);
  EXPECT_THAT(e->what(), HasSubstr("timed out after 0.5s"));
  // Each attempt's read timeout is capped at the time left (it was 5 s).
  EXPECT_LT(std::chrono::steady_clock::now() - started, 4s);
}

TEST(Manager, TheKeeperStartsWhenTheHostHasClosedItsStandardDescriptors) {
  pid_t host = ::fork();
  ASSERT_GE(host, 0);
  if (host == 0) {
    ::close(0);
    ::close(1);
    try {
      auto config = parse(config_text(R"("once": {"executable": "sh", "arguments": ["-c", "exit 7"],
          "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"expect_code": 7}}})"));
      pymanager::ManagerOptions options;
      options.log = [](const std::string&) {};
      pymanager::Manager manager(config, options);
      manager.start();
      ::_exit(manager.processes()[0].exit->code() == 7 ? 0 : 1);
    } catch (...) {
      ::_exit(2);
    }
  }
  int status = -1;
  ASSERT_TRUE(wait_until([&] { return ::waitpid(host, &status, WNOHANG) == host; }, 20000ms));
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
