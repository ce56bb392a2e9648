// Start-up as a dependency graph, shutdown in reverse order, per-process stop
// signals and graceful times, daemons that belong to their process, and the
// faults that must never stop the Manager. Every child writes its own
// timestamps (tests/helpers/stamp_service), so order is read from the
// children's clocks; every state a test needs is held by a file it creates.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pymanager/pymanager.hpp"
#include "tests/capture.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::chrono_literals;
using testutil::Capture;
using testutil::wait_until;

const std::string& stamp_program() {
  static const std::string path = testutil::runfile("tests/helpers/stamp_service");
  return path;
}

/// One line a stamp_service wrote: "<event> <pid> <microseconds>".
struct Stamp {
  std::string event;
  pid_t pid = 0;
  long long us = 0;
};

std::vector<Stamp> stamps(const std::string& file) {
  std::vector<Stamp> out;
  std::istringstream in(testutil::read_file(file));
  std::string line;
  while (std::getline(in, line)) {
    auto last = line.rfind(' ');
    if (last == std::string::npos) continue;
    auto middle = line.rfind(' ', last - 1);
    if (middle == std::string::npos) continue;
    out.push_back({line.substr(0, middle), static_cast<pid_t>(std::atol(line.c_str() + middle + 1)),
                   std::atoll(line.c_str() + last + 1)});
  }
  return out;
}

/// The time of the `nth` (0-based) stamp named `event`, or nullopt.
std::optional<long long> when(const std::string& file, const std::string& event, std::size_t nth = 0) {
  for (const auto& s : stamps(file)) {
    if (s.event == event && nth-- == 0) return s.us;
  }
  return std::nullopt;
}

std::optional<pid_t> pid_of(const std::string& file, const std::string& event, std::size_t nth = 0) {
  for (const auto& s : stamps(file)) {
    if (s.event == event && nth-- == 0) return s.pid;
  }
  return std::nullopt;
}

class Graph : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testutil::make_temp_dir(); }

  std::string log_of(const std::string& name) const { return dir_ + "/" + name + ".log"; }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }

  /// A stamp_service process named `name`. `port` > 0: it listens there and
  /// an HttpOkVerifier checks it. `json`: more keys ("depends_on": ...).
  std::string service(const std::string& name, int port, const std::vector<std::string>& flags = {},
                      const std::string& json = "") const {
    std::string args = "\"--stamp\", \"" + log_of(name) + "\"";
    if (port > 0) args += ", \"--port\", \"" + std::to_string(port) + "\"";
    for (const auto& flag : flags) args += ", \"" + flag + "\"";
    std::string out = "\"" + name + "\": {\"executable\": \"" + stamp_program() + "\", \"arguments\": [" + args + "]";
    if (port > 0) {
      out += ", \"verifier\": {\"type\": \"pymutils.http_verifier.HttpOkVerifier\", \"arguments\": {\"url\": "
             "\"http://127.0.0.1:" + std::to_string(port) + "/\", \"timeout\": 60, \"interval\": 0.05}}";
    }
    if (!json.empty()) out += ", " + json;
    return out + "}";
  }

  pymanager::Config config(const std::vector<std::string>& processes, const std::string& top = "") const {
    std::string text = R"({"modules": {"pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]}}, "keep_alive": true, )";
    if (!top.empty()) text += top + ", ";
    text += "\"processes\": {";
    for (std::size_t i = 0; i < processes.size(); ++i) text += (i ? ", " : "") + processes[i];
    text += "}}";
    auto parsed = pymanager::parse_config(nlohmann::ordered_json::parse(text), pymanager::builtin_verifiers());
    parsed.base_directory = dir_;
    return parsed;
  }

  bool started(const std::string& name) const { return when(log_of(name), "start").has_value(); }

  std::string dir_;
};

pymanager::ProcessInfo info(pymanager::Manager& m, const std::string& name) { return m.process(*m.index_of(name)); }

TEST_F(Graph, ADiamondStartsInOrderWithItsBranchesOverlapping) {
  int db = testutil::free_port(), api = testutil::free_port(), worker = testutil::free_port(), web = testutil::free_port();
  // api and worker listen only once "go" exists: while both have started
  // and neither is verified, the branches overlap by construction.
  auto cfg = config({service("db", db, {}, R"("depends_on": [])"),
                     service("api", api, {"--wait-for", file("go")}, R"("depends_on": ["db"])"),
                     service("worker", worker, {"--wait-for", file("go")}, R"("depends_on": {"db": "verified"})"),
                     service("web", web, {}, R"("depends_on": ["api", "worker"])")});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  auto start = std::async(std::launch::async, [&] { manager.start(); });
  // A child can say "start" before the manager has seen it spawned; once it
  // is verifying, the "go" file holds it there.
  ASSERT_TRUE(wait_until([&] {
    return started("api") && started("worker") && info(manager, "api").state == pymanager::ProcessState::verifying;
  }, 30s)) << capture.log();
  EXPECT_FALSE(started("web"));
  auto waiting = info(manager, "web");
  EXPECT_EQ(waiting.state, pymanager::ProcessState::waiting);
  EXPECT_THAT(waiting.waiting_for, ElementsAre("api", "worker"));
  EXPECT_EQ(info(manager, "api").state, pymanager::ProcessState::verifying);
  testutil::write_file(file("go"), "");
  ASSERT_EQ(start.wait_for(60s), std::future_status::ready);
  start.get();
  EXPECT_GE(*when(log_of("api"), "start"), *when(log_of("db"), "listening"));
  EXPECT_GE(*when(log_of("worker"), "start"), *when(log_of("db"), "listening"));
  EXPECT_GE(*when(log_of("web"), "start"), *when(log_of("api"), "listening"));
  EXPECT_GE(*when(log_of("web"), "start"), *when(log_of("worker"), "listening"));
  for (const auto& p : manager.processes()) EXPECT_EQ(p.state, pymanager::ProcessState::ready) << p.name;
}

TEST_F(Graph, StartedDoesNotWaitForTheVerifier) {
  int db = testutil::free_port();
  auto cfg = config({service("db", db, {"--wait-for", file("db-go")}, R"("depends_on": [])"),
                     service("cache", 0, {}, R"("depends_on": {"db": "started"})")});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  auto start = std::async(std::launch::async, [&] { manager.start(); });
  ASSERT_TRUE(wait_until([&] { return started("cache"); }, 30s)) << capture.log();
  // cache began after db was spawned; db's verifier may lag its spawn by an event.
  EXPECT_TRUE(wait_until([&] { return info(manager, "db").state == pymanager::ProcessState::verifying; }, 30s));
  EXPECT_EQ(start.wait_for(0s), std::future_status::timeout);
  testutil::write_file(file("db-go"), "");
  ASSERT_EQ(start.wait_for(60s), std::future_status::ready);
  start.get();
}

TEST_F(Graph, ADependencyWithoutAVerifierCountsOnceItIsSpawned) {
  // x has no verifier and never says it is ready ("never" never comes). Its
  // dependents start anyway, once x is spawned: each lists its parent's
  // children (the keeper's) at its own start, and x is among them.
  auto sibling_lister = [&](const std::string& name, const std::string& depends) {
    return "\"" + name + R"(": {"executable": "sh", "arguments": ["-c",
        "cat /proc/$PPID/task/$PPID/children > )" + name + R"(-siblings; echo $PPID > )" + name +
           R"(-parent; exec sleep 600"], "depends_on": )" + depends + "}";
  };
  auto cfg = config({service("x", 0, {"--wait-for", file("never")}, R"("depends_on": [])"),
                     sibling_lister("d", R"(["x"])"), sibling_lister("e", R"({"x": "started"})")});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  auto start = std::async(std::launch::async, [&] { manager.start(); });
  ASSERT_EQ(start.wait_for(60s), std::future_status::ready) << capture.log();
  start.get();
  const pid_t x = info(manager, "x").pid;
  ASSERT_GT(x, 0);
  for (const auto& name : {"d", "e"}) {
    ASSERT_TRUE(wait_until([&] { return !testutil::read_file(file(std::string(name) + "-parent")).empty(); }))
        << name << " never started\n" << capture.log();
    EXPECT_EQ(testutil::pids_in_file(file(std::string(name) + "-parent")), std::vector<pid_t>{manager.keeper_pid()})
        << name << ": not a child of the keeper, its siblings say nothing";
    EXPECT_THAT(testutil::pids_in_file(file(std::string(name) + "-siblings")), ::testing::Contains(x))
        << name << " started before x was spawned";
    EXPECT_TRUE(info(manager, name).running) << name;
  }
  // x was never verified by anything: it is still not listening.
  EXPECT_TRUE(when(log_of("x"), "start").has_value());
  EXPECT_FALSE(when(log_of("x"), "listening").has_value());
  EXPECT_EQ(info(manager, "x").state, pymanager::ProcessState::ready);
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s));
  EXPECT_FALSE(testutil::group_alive(x));
}

TEST_F(Graph, AFileWithoutDependsOnStaysSequential) {
  int a = testutil::free_port(), b = testutil::free_port();
  auto cfg = config({service("a", a, {"--wait-for", file("a-go")}), service("b", b), service("c", 0)});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  auto start = std::async(std::launch::async, [&] { manager.start(); });
  ASSERT_TRUE(wait_until([&] { return started("a"); }, 30s)) << capture.log();
  auto b_info = info(manager, "b");
  EXPECT_EQ(b_info.state, pymanager::ProcessState::waiting);
  EXPECT_THAT(b_info.waiting_for, ElementsAre("a"));
  EXPECT_FALSE(started("b"));
  testutil::write_file(file("a-go"), "");
  ASSERT_EQ(start.wait_for(60s), std::future_status::ready);
  start.get();
  EXPECT_GE(*when(log_of("b"), "start"), *when(log_of("a"), "listening"));
  // c has no verifier: it counts once spawned, and says so itself a moment later.
  ASSERT_TRUE(wait_until([&] { return when(log_of("c"), "listening").has_value(); }));
  EXPECT_GE(*when(log_of("c"), "start"), *when(log_of("b"), "listening"));
  // Without depends_on, shutdown stops everything at once, as before.
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s));
  for (const auto& name : {"a", "b", "c"}) EXPECT_TRUE(when(log_of(name), "signal 15").has_value()) << name;
}

TEST_F(Graph, AFailureCancelsTheVerifiersStillRunningAndLeavesNothingBehind) {
  int slow = testutil::free_port(), bad = testutil::free_port();
  // "slow" never listens (its file never comes); its verifier would wait 60 s.
  auto cfg = config({service("slow", slow, {"--wait-for", file("never")}, R"("depends_on": [])"),
                     service("bad", bad, {"--exit", "3"}, R"("depends_on": [])"),
                     service("after", 0, {}, R"("depends_on": ["slow", "bad"])")});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  const auto began = std::chrono::steady_clock::now();
  try {
    manager.start();
    ADD_FAILURE() << "start() should have thrown";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::verify_failed);
    EXPECT_THAT(e.what(), HasSubstr("process 'bad'"));
    EXPECT_THAT(e.what(), HasSubstr("exit code 3"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - began, 30s) << "the slow verifier was not cancelled";
  EXPECT_TRUE(manager.finished());
  // slow was spawned (it comes first in the file); it may have been stopped
  // before it could write anything itself.
  const pid_t slow_pid = info(manager, "slow").pid;
  ASSERT_GT(slow_pid, 0);
  EXPECT_FALSE(testutil::pid_alive(slow_pid));
  EXPECT_FALSE(testutil::group_alive(slow_pid));
  EXPECT_FALSE(started("after"));
  // Cancelled, not failed: only 'bad' failed.
  EXPECT_EQ(info(manager, "bad").state, pymanager::ProcessState::failed);
  EXPECT_NE(info(manager, "slow").state, pymanager::ProcessState::failed);
  EXPECT_EQ(info(manager, "after").state, pymanager::ProcessState::stopped) << "never started";
  EXPECT_EQ(manager.illegal_transitions(), 0u);
  // One message, about the process that failed.
  EXPECT_THAT(capture.log(), HasSubstr("process 'bad': verifier"));
  EXPECT_THAT(capture.log(), ::testing::Not(HasSubstr("process 'slow': verifier")));
}

TEST_F(Graph, ShutdownStopsDependentsFirst) {
  int db = testutil::free_port(), api = testutil::free_port();
  // api takes 200 ms to wind down after its signal: db must wait for its end.
  auto cfg = config({service("db", db, {}, R"("depends_on": [])"),
                     service("api", api, {"--linger-ms", "200"}, R"("depends_on": ["db"])"),
                     service("worker", 0, {}, R"("depends_on": ["db"])"), service("loner", 0, {}, R"("depends_on": [])")});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  // Those without a verifier count once spawned: each says when it handles signals.
  for (const auto& name : {"worker", "loner"}) {
    ASSERT_TRUE(wait_until([&] { return when(log_of(name), "listening").has_value(); })) << name;
  }
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s));
  auto db_signal = when(log_of("db"), "signal 15");
  auto api_signal = when(log_of("api"), "signal 15");
  auto worker_signal = when(log_of("worker"), "signal 15");
  ASSERT_TRUE(db_signal && api_signal && worker_signal) << capture.log();
  EXPECT_GT(*db_signal, *api_signal);
  EXPECT_GT(*db_signal, *worker_signal);
  auto api_exit = when(log_of("api"), "exit");
  ASSERT_TRUE(api_exit.has_value());
  EXPECT_GT(*db_signal, *api_exit) << "db was signalled before api had stopped";
  // Unrelated: stopped at once, not after db.
  auto loner_signal = when(log_of("loner"), "signal 15");
  ASSERT_TRUE(loner_signal);
  EXPECT_LT(*loner_signal, *db_signal);
  for (const auto& p : manager.processes()) EXPECT_EQ(p.state, pymanager::ProcessState::stopped) << p.name;
  EXPECT_EQ(manager.illegal_transitions(), 0u);
}

TEST_F(Graph, ADependentThatIgnoresItsSignalBoundsTheOrderedShutdown) {
  // api ignores its SIGTERM; its own graceful time is 0.5 s (the top-level
  // one two minutes). db may have its signal only once api is gone: after
  // api's SIGKILL, not after two minutes, and not before.
  auto cfg = config({service("db", 0, {}, R"("depends_on": [])"),
                     service("api", 0, {"--ignore-signals"}, R"("depends_on": ["db"], "options": {"graceful_time": 0.5})")},
                    R"("graceful_time": 120)");
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  for (const auto& name : {"db", "api"}) {
    ASSERT_TRUE(wait_until([&] { return when(log_of(name), "listening").has_value(); })) << name;
  }
  const pid_t api_pid = info(manager, "api").pid;
  const auto began = std::chrono::steady_clock::now();
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s)) << capture.log();
  EXPECT_LT(std::chrono::steady_clock::now() - began, 30s);
  auto api_signal = when(log_of("api"), "signal 15");
  auto db_signal = when(log_of("db"), "signal 15");
  ASSERT_TRUE(api_signal && db_signal) << capture.log();
  // The manager signalled api no later than api says; SIGKILL came 0.5 s
  // after that signal, and db's signal after api's end.
  EXPECT_GE(*db_signal - *api_signal, 450000) << "db was signalled before api's graceful time ran out";
  EXPECT_LT(*db_signal - *api_signal, 30000000) << "db waited for more than api's own graceful time";
  auto api = info(manager, "api");
  EXPECT_TRUE(api.killed);
  ASSERT_TRUE(api.exit.has_value());
  EXPECT_EQ(api.exit->code(), -SIGKILL);
  EXPECT_FALSE(testutil::pid_alive(api_pid));
  EXPECT_FALSE(info(manager, "db").killed);
  EXPECT_TRUE(when(log_of("db"), "exit").has_value());
  for (const auto& p : manager.processes()) EXPECT_EQ(p.state, pymanager::ProcessState::stopped) << p.name;
  EXPECT_EQ(manager.illegal_transitions(), 0u);
}

TEST_F(Graph, StopSignalAndPerProcessGracefulTime) {
  // A top-level graceful time of two minutes: the test ends in seconds only
  // if "stubborn" gets its own 0.2 s.
  auto cfg = config({service("pg", 0, {}, R"("options": {"stop_signal": "SIGINT"})"),
                     service("stubborn", 0, {"--ignore-signals"}, R"("options": {"graceful_time": 0.2})")},
                    R"("graceful_time": 120)");
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  for (const auto& name : {"pg", "stubborn"}) {
    ASSERT_TRUE(wait_until([&] { return when(log_of(name), "listening").has_value(); })) << name;
  }
  const auto began = std::chrono::steady_clock::now();
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s));
  EXPECT_LT(std::chrono::steady_clock::now() - began, 50s);
  EXPECT_TRUE(when(log_of("pg"), "signal 2").has_value()) << testutil::read_file(log_of("pg"));
  EXPECT_TRUE(when(log_of("stubborn"), "signal 15").has_value());
  EXPECT_TRUE(info(manager, "stubborn").killed);
  EXPECT_FALSE(info(manager, "pg").killed);
}

TEST_F(Graph, AFileWithoutDependsOnStopsEverythingAtOnce) {
  // "c" ignores its SIGTERM and is SIGKILLed only 5 s later: had a and b
  // waited for it (the reverse file order), their signals would come 5 s
  // after its own.
  auto cfg = config({service("a", 0), service("b", 0),
                     service("c", 0, {"--ignore-signals"}, R"("options": {"graceful_time": 5})")});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  for (const auto& name : {"a", "b", "c"}) {
    ASSERT_TRUE(wait_until([&] { return when(log_of(name), "start").has_value(); })) << name;
  }
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s)) << capture.log();
  auto c = when(log_of("c"), "signal 15");
  ASSERT_TRUE(c.has_value()) << testutil::read_file(log_of("c"));
  EXPECT_TRUE(info(manager, "c").killed);
  for (const auto& name : {"a", "b"}) {
    auto signalled = when(log_of(name), "signal 15");
    ASSERT_TRUE(signalled.has_value()) << name;
    EXPECT_LT(*signalled - *c, 4000000) << name << " waited for c";
  }
}

TEST_F(Graph, EnvironmentReachesTheChild) {
  auto cfg = config({R"("env": {"executable": "sh", "arguments": ["-c", "printf '%s|%s\n' \"$GREETING\" \"$HOME\""],
                       "options": {"environment": {"GREETING": "a b 'c' $d", "HOME": "/nowhere"}}})"});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  EXPECT_TRUE(capture.wait_output("a b 'c' $d|/nowhere", 20s))
      << capture.output();
}

TEST_F(Graph, EachLineIsAnEventWithItsProcessAndStreamBeforeAnyFormatting) {
  auto cfg = config({R"("a": {"executable": "sh", "arguments": ["-c", "echo to-out; echo to-err >&2; printf 'tail'; exec sleep 600"]})",
                     R"("b": {"executable": "sh", "arguments": ["-c", "echo from-b; exec sleep 600"],
                        "options": {"suppress_output": true}})"});
  struct Seen {
    std::size_t process;
    std::string name;
    pymanager::OutputStream stream;
    std::string text;
    bool complete;
  };
  std::mutex mutex;
  std::vector<Seen> seen;
  Capture capture;
  auto options = capture.options();
  options.on_output = [&](const pymanager::OutputLine& line) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.push_back({line.process, std::string(line.name), line.stream, std::string(line.text), line.complete});
  };
  pymanager::Manager manager(cfg, options);
  manager.start();
  auto count = [&] {
    std::lock_guard<std::mutex> lock(mutex);
    return seen.size();
  };
  ASSERT_TRUE(wait_until([&] { return count() >= 3; }));
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s));
  std::lock_guard<std::mutex> lock(mutex);
  auto find = [&](const std::string& text) -> const Seen* {
    for (const auto& s : seen) {
      if (s.text == text) return &s;
    }
    return nullptr;
  };
  const Seen* out = find("to-out");
  const Seen* err = find("to-err");
  const Seen* tail = find("tail");
  const Seen* b = find("from-b");
  ASSERT_TRUE(out && err && tail && b);
  EXPECT_EQ(out->stream, pymanager::OutputStream::out);
  EXPECT_EQ(err->stream, pymanager::OutputStream::err);
  EXPECT_EQ(out->name, "a");
  EXPECT_EQ(out->process, 0u);
  EXPECT_TRUE(out->complete);
  EXPECT_FALSE(tail->complete) << "the unfinished last line comes at the end of the stream";
  // A suppressed process's lines are still events (not shown, still seen).
  EXPECT_EQ(b->process, 1u);
  EXPECT_THAT(capture.output(), ::testing::Not(HasSubstr("from-b")));
  EXPECT_THAT(capture.output(), HasSubstr("a | to-err\n"));
}

TEST_F(Graph, ADaemonIsListedStoppedGracefullyAndReplacedOnRestart) {
  int port = testutil::free_port();
  auto cfg = config({service("db", port, {"--daemonize"})});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  // The daemon is adopted (and listed) just before its launcher's exit is
  // reported: wait for both.
  ASSERT_TRUE(wait_until([&] {
    auto db = info(manager, "db");
    return !db.daemons.empty() && db.state == pymanager::ProcessState::daemonized;
  }, 30s)) << capture.log();
  auto first = info(manager, "db");
  auto daemon = pid_of(log_of("db"), "daemon");
  ASSERT_TRUE(daemon.has_value());
  EXPECT_THAT(first.daemons, ElementsAre(*daemon));
  EXPECT_EQ(first.state, pymanager::ProcessState::daemonized);
  EXPECT_FALSE(first.running);
  ASSERT_TRUE(first.exit.has_value());
  EXPECT_EQ(first.exit->code(), 0);

  manager.restart(*manager.index_of("db"));
  // The old daemon had its SIGTERM and was gone before the new launcher ran.
  auto old_signal = when(log_of("db"), "signal 15");
  ASSERT_TRUE(old_signal.has_value()) << testutil::read_file(log_of("db"));
  EXPECT_FALSE(testutil::pid_alive(*daemon));
  auto second_start = when(log_of("db"), "start", 1);
  ASSERT_TRUE(second_start.has_value());
  EXPECT_GT(*second_start, *old_signal);
  ASSERT_TRUE(wait_until([&] { return !info(manager, "db").daemons.empty(); }, 30s));
  auto new_daemon = pid_of(log_of("db"), "daemon", 1);
  ASSERT_TRUE(new_daemon.has_value());
  EXPECT_THAT(info(manager, "db").daemons, ElementsAre(*new_daemon));

  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s));
  EXPECT_TRUE(when(log_of("db"), "signal 15", 1).has_value());
  EXPECT_FALSE(testutil::pid_alive(*new_daemon));
  EXPECT_FALSE(info(manager, "db").killed) << "the daemon should have stopped on its SIGTERM";
}

TEST_F(Graph, ADaemonThatIgnoresItsSignalIsKilledAfterTheGracefulTime) {
  auto cfg = config({service("db", 0, {"--daemonize", "--ignore-signals"}, R"("options": {"graceful_time": 0.5})")},
                    R"("graceful_time": 120)");
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  // Adopted by the manager, and said so itself (either may come first: no
  // verifier holds the start here).
  ASSERT_TRUE(wait_until([&] {
    return !info(manager, "db").daemons.empty() && pid_of(log_of("db"), "daemon").has_value();
  }, 30s)) << capture.log();
  auto daemon = pid_of(log_of("db"), "daemon");
  ASSERT_TRUE(daemon.has_value());
  EXPECT_THAT(info(manager, "db").daemons, ElementsAre(*daemon));
  ASSERT_TRUE(wait_until([&] { return when(log_of("db"), "listening").has_value(); }));
  const auto began = std::chrono::steady_clock::now();
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(60s)) << capture.log();
  EXPECT_LT(std::chrono::steady_clock::now() - began, 30s) << "the daemon's graceful time was not its own 0.5 s";
  // It had its signal first (and ignored it), then it was killed: gone.
  EXPECT_EQ(pid_of(log_of("db"), "signal 15"), daemon) << testutil::read_file(log_of("db"));
  EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(*daemon); }, 5000ms)) << "the daemon survived";
  EXPECT_FALSE(testutil::group_alive(*daemon));
  EXPECT_TRUE(info(manager, "db").daemons.empty());
  EXPECT_TRUE(info(manager, "db").killed) << capture.log();
}

TEST_F(Graph, AStdoutNobodyReadsNeverBlocksTheManager) {
  // A pipe the test never reads: it fills after 64 KiB.
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  // spam prints about 2 MiB: more than the pipe and the writer's backlog hold.
  auto cfg = config({R"("spam": {"executable": "sh", "arguments": ["-c", "seq 1 300000; exec sleep 600"]})",
                     R"("kept": {"executable": "sh", "arguments": ["-c", "seq 1 20000; exec sleep 600"],
                        "options": {"redirect_output": "kept.txt"}})"},
                    R"("graceful_time": 5)");
  std::mutex mutex;
  std::string log;
  pymanager::ManagerOptions options;
  options.output_fd = fds[1];
  options.color = false;
  options.log = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(mutex);
    log += line + "\n";
  };
  std::string expected;
  for (int i = 1; i <= 20000; ++i) expected += std::to_string(i) + "\n";
  {
    pymanager::Manager manager(cfg, options);
    manager.start();
    ASSERT_TRUE(wait_until([&] { return testutil::read_file(file("kept.txt")) == expected; }, 30s));
    // Every line of spam was read (the tail loses nothing), though few were shown.
    ASSERT_TRUE(wait_until([&] { return manager.output_tail(0, 1) == std::vector<std::string>{"300000"}; }, 30s));
    // Said while it happens, not only at the end.
    ASSERT_TRUE(wait_until([&] {
      std::lock_guard<std::mutex> lock(mutex);
      return log.find("lines not shown, the output (fd " + std::to_string(fds[1]) + ") is not being read") != std::string::npos;
    }, 30s));
    const auto began = std::chrono::steady_clock::now();
    manager.shutdown();
    ASSERT_TRUE(manager.wait_finished(30s));
    EXPECT_LT(std::chrono::steady_clock::now() - began, 20s);
  }
  EXPECT_EQ(testutil::read_file(file("kept.txt")), expected);
  std::lock_guard<std::mutex> lock(mutex);
  // The counts add up: of 300,000 lines, what did not fit in the pipe and
  // the 1 MiB backlog (about 160,000 short lines) was counted as dropped.
  long long dropped = 0;
  for (std::size_t at = log.find(" lines not shown"); at != std::string::npos; at = log.find(" lines not shown", at + 1)) {
    std::size_t begin = log.rfind('\n', at);
    dropped += std::atoll(log.c_str() + (begin == std::string::npos ? 0 : begin + 1));
  }
  EXPECT_GE(dropped, 100000) << log;
  EXPECT_LE(dropped, 300000) << log;
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_F(Graph, AReaderThatWentAwayIsSaidOnceNotForEveryLine) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ::close(fds[0]);  // `pymanager | head`, after head exited
  auto cfg = config({R"("chatty": {"executable": "sh", "arguments": ["-c", "seq 1 200000; exec sleep 600"]})"});
  std::mutex mutex;
  std::string log;
  pymanager::ManagerOptions options;
  options.output_fd = fds[1];
  options.log = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(mutex);
    log += line + "\n";
  };
  {
    pymanager::Manager manager(cfg, options);
    manager.start();
    ASSERT_TRUE(wait_until([&] { return manager.output_tail(0, 1) == std::vector<std::string>{"200000"}; }, 30s));
  }
  ::close(fds[1]);
  std::lock_guard<std::mutex> lock(mutex);
  std::size_t notices = 0;
  for (std::size_t at = log.find("lines not shown"); at != std::string::npos; at = log.find("lines not shown", at + 1)) ++notices;
  EXPECT_GE(notices, 1u) << log;
  EXPECT_LE(notices, 3u) << log;
  EXPECT_THAT(log, HasSubstr("was closed by its reader"));
}

TEST_F(Graph, ARedirectToAFifoNobodyReadsBlocksNothing) {
  const std::string fifo = file("out.fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A reader that never reads: the FIFO fills and stays full.
  int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  auto cfg = config({R"("filler": {"executable": "sh", "arguments": ["-c", "seq 1 300000; exec sleep 600"],
                        "options": {"redirect_output": "out.fifo"}})"},
                    R"("graceful_time": 5)");
  Capture capture;
  {
    pymanager::Manager manager(cfg, capture.options());
    manager.start();
    ASSERT_TRUE(wait_until([&] { return manager.output_tail(0, 1) == std::vector<std::string>{"300000"}; }, 30s));
    const auto began = std::chrono::steady_clock::now();
    manager.shutdown();
    EXPECT_TRUE(manager.wait_finished(30s));
    EXPECT_LT(std::chrono::steady_clock::now() - began, 20s);
  }
  ::close(reader);
}

TEST_F(Graph, AFrozenKeeperIsKilledOnceItsStopPlanRunsOutAndNothingIsLeft) {
  auto cfg = config({R"("tree": {"executable": "sh", "arguments": ["-c", "sleep 600 & echo child $!; exec sleep 600"]})"});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  ASSERT_TRUE(capture.wait_output("child ", 20s));
  std::vector<pid_t> pids = testutil::pids_after(capture.output(), "child ");
  pids.push_back(info(manager, "tree").pid);
  const pid_t keeper = manager.keeper_pid();
  ASSERT_EQ(::kill(keeper, SIGSTOP), 0);
  // Even a forced shutdown cannot reach the children through a stopped
  // keeper; after SIGKILL's wait (10 s) the Manager ends the keeper itself.
  manager.shutdown(true);
  EXPECT_TRUE(manager.wait_finished(60s)) << capture.log();
  EXPECT_TRUE(manager.keeper_lost());
  EXPECT_THAT(capture.log(), HasSubstr("the keeper process (pid " + std::to_string(keeper) + ") is stopped"));
  for (pid_t pid : pids) EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(pid); })) << pid;
}

TEST_F(Graph, TwoThousandProcessesStopCleanly) {
  std::vector<std::string> processes;
  for (int i = 0; i < 2000; ++i) {
    processes.push_back("\"s" + std::to_string(i) + R"(": {"executable": "sleep", "arguments": ["600"], "depends_on": []})");
  }
  Capture capture;
  pymanager::Manager manager(config(processes), capture.options());
  manager.start();
  std::vector<pid_t> pids;
  for (const auto& p : manager.processes()) {
    EXPECT_TRUE(p.running) << p.name;
    pids.push_back(p.pid);
  }
  manager.shutdown();
  ASSERT_TRUE(manager.wait_finished(120s)) << capture.log();
  for (pid_t pid : pids) ASSERT_FALSE(testutil::pid_alive(pid)) << pid;
  EXPECT_THAT(capture.log(), ::testing::Not(HasSubstr("SIGKILL")));
}

TEST_F(Graph, AFailedStartOfAThousandProcessesCleansUpEverything) {
  // The clean-up of a failed start-up at scale (it once deadlocked at about
  // 1,000): a thousand sleeps, then one whose verifier fails as it exits 3.
  std::vector<std::string> processes;
  for (int i = 0; i < 1000; ++i) {
    processes.push_back("\"s" + std::to_string(i) + R"(": {"executable": "sleep", "arguments": ["600"], "depends_on": []})");
  }
  processes.push_back(R"("bad": {"executable": "sh", "arguments": ["-c", "exit 3"], "depends_on": [],
      "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier", "arguments": {"url": "http://127.0.0.1:1/"}}})");
  Capture capture;
  pymanager::Manager manager(config(processes), capture.options());
  std::string failure;
  try {
    manager.start();
  } catch (const pymanager::Error& e) {
    failure = e.what();
  }
  EXPECT_THAT(failure, HasSubstr("bad"));
  ASSERT_TRUE(manager.wait_finished(120s)) << capture.log();
  int spawned = 0;
  for (const auto& p : manager.processes()) {
    if (p.pid <= 0) continue;
    ++spawned;
    EXPECT_FALSE(testutil::group_alive(p.pid)) << p.name;
  }
  EXPECT_GT(spawned, 1);
}

TEST_F(Graph, AKilledKeeperLeavesNothingAliveAndIsReported) {
  int port = testutil::free_port();
  auto cfg = config({R"("tree": {"executable": "sh", "arguments": ["-c", "sleep 600 & echo child $!; exec sleep 600"]})",
                     service("db", port, {"--daemonize"}),
                     // A daemon with an empty environment: nobody can claim it.
                     "\"nameless\": {\"executable\": \"env\", \"arguments\": [\"-i\", \"" + stamp_program() +
                         "\", \"--stamp\", \"" + log_of("nameless") + "\", \"--daemonize\"]}"});
  Capture capture;
  pymanager::Manager manager(cfg, capture.options());
  manager.start();
  ASSERT_TRUE(wait_until([&] { return !info(manager, "db").daemons.empty(); }, 30s)) << capture.log();
  ASSERT_TRUE(capture.wait_output("child ", 20s));
  std::vector<pid_t> pids = testutil::pids_after(capture.output(), "child ");
  ASSERT_TRUE(wait_until([&] { return pid_of(log_of("nameless"), "daemon").has_value(); }));
  pid_t nameless = *pid_of(log_of("nameless"), "daemon");
  pids.push_back(info(manager, "tree").pid);
  const pid_t db_daemon = info(manager, "db").daemons.front();
  pids.push_back(db_daemon);
  // The keeper must have reported the nameless one before it is killed.
  ASSERT_TRUE(wait_until([&] { return info(manager, "nameless").state == pymanager::ProcessState::exited; }));
  ASSERT_EQ(::kill(manager.keeper_pid(), SIGKILL), 0);
  ASSERT_TRUE(wait_until([&] { return manager.finished(); }, 30s));
  EXPECT_TRUE(manager.keeper_lost());
  for (pid_t pid : pids) EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(pid); })) << pid;
  EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(nameless); })) << "the daemon nobody claims survived";
  // What the states say afterwards is true.
  auto tree = info(manager, "tree");
  EXPECT_EQ(tree.state, pymanager::ProcessState::stopped);
  EXPECT_FALSE(tree.running);
  ASSERT_TRUE(tree.exit.has_value());
  EXPECT_EQ(tree.exit->code(), -SIGKILL);
  EXPECT_TRUE(info(manager, "db").daemons.empty());
  // And nothing spins once the keeper is gone: the event thread is idle.
  struct timespec before {}, after {};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &before);
  std::this_thread::sleep_for(500ms);  // an interval to measure, not a state to wait for
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &after);
  const double cpu = (after.tv_sec - before.tv_sec) + (after.tv_nsec - before.tv_nsec) / 1e9;
  EXPECT_LT(cpu, 0.2) << "the manager uses CPU after losing its keeper";
  EXPECT_THAT(capture.log(), HasSubstr("the keeper process (pid"));
  EXPECT_THAT(capture.log(), HasSubstr(std::to_string(db_daemon)));
  EXPECT_THAT(capture.log(), HasSubstr(std::to_string(nameless)));
  EXPECT_THAT(capture.log(), HasSubstr("a process that cleared its environment and left its process group may have escaped"));
}

}  // namespace
