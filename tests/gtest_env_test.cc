// pymanager::testing::Services (and what it shares with the Environment) in
// this process, with real children: named ports, the accessors, fault
// injection, failure reports, output files, and that nothing is left behind.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include "gtest_env/environment.hpp"
#include "pymanager/verifiers/builtin.hpp"  // only for the test that parses a config itself
#include "tests/gtest_env_util.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using namespace std::chrono_literals;
using pymanager::testing::ConfigSource;
using pymanager::testing::Options;
using pymanager::testing::Services;
using testutil::wait_until;

const char* kModules = R"("modules": {
    "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]},
    "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}
  })";

nlohmann::ordered_json config_json(const std::string& processes, const std::string& extra = "") {
  return nlohmann::ordered_json::parse(std::string("{") + kModules + ", " + extra + (extra.empty() ? "" : ", ") +
                                       "\"processes\": {" + processes + "}}");
}

ConfigSource source(const std::string& processes, const std::string& extra = "") {
  return ConfigSource::json(config_json(processes, extra), "test-config.json");
}

/// The http_service helper on the named port `name`, verified by HttpOkVerifier.
std::string web_process(const std::string& name = "web") {
  return "\"" + name + "\": {\"executable\": \"" + testutil::runfile("tests/helpers/http_service") +
         "\", \"arguments\": [\"--port\", \"${port:" + name + "}\"], \"verifier\": {\"type\": " +
         "\"pymutils.http_verifier.HttpOkVerifier\", \"arguments\": {\"url\": \"http://127.0.0.1:${port:" + name +
         "}/health\", \"timeout\": 10}}}";
}

/// pymanager's own messages, collected.
class Log {
 public:
  std::function<void(const std::string&)> sink() {
    return [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mutex_);
      text_ += line + "\n";
    };
  }
  std::string text() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }

 private:
  mutable std::mutex mutex_;
  std::string text_;
};

Options quiet(Log* log = nullptr) {
  Options options;
  options.echo_output = false;
  options.outputs_dir = "";
  options.log = log ? log->sink() : [](const std::string&) {};
  return options;
}

/// Takes every test failure reported from any thread while it lives (so
/// that the failures the environment reports can be checked, instead of
/// failing this test). Thread-safe, and can wait for a failure to arrive.
class FailureCollector : public ::testing::ScopedFakeTestPartResultReporter {
 public:
  FailureCollector() : ScopedFakeTestPartResultReporter(INTERCEPT_ALL_THREADS, &unused_) {}
  void ReportTestPartResult(const ::testing::TestPartResult& result) override {
    std::lock_guard<std::mutex> lock(mutex_);
    messages_.push_back(result.message());
    changed_.notify_all();
  }
  std::vector<std::string> messages() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return messages_;
  }
  bool wait_for(std::size_t count, std::chrono::milliseconds timeout = 10000ms) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return messages_.size() >= count; });
  }

 private:
  ::testing::TestPartResultArray unused_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> messages_;
};

std::string joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& line : lines) out += line + "\n---\n";
  return out;
}

bool tail_has(const Services& services, const std::string& name, const std::string& text) {
  for (const auto& line : services.output_tail(name, 100)) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

TEST(Services, BringUpAConfigWithNamedPortsAndTypedAccessors) {
  Services services(source(web_process() + R"(,
    "env": {"executable": "sh", "arguments": ["-c", "echo web=$PYMANAGER_PORT_WEB; exec sleep 300"]})"),
                    quiet());
  ASSERT_TRUE(services.up());
  const int port = services.port("web");
  auto [low, high] = pymanager::detail::ephemeral_port_range();
  EXPECT_TRUE(port < low || port > high) << port << " is in the ephemeral range";
  EXPECT_EQ(services.url("web", "/health"), "http://127.0.0.1:" + std::to_string(port) + "/health");
  auto health = gtest_env_util::http_get(port, "/health");
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, "healthy");

  auto processes = services.processes();
  ASSERT_EQ(processes.size(), 2u);
  EXPECT_EQ(processes[0].name, "web");
  EXPECT_TRUE(processes[0].running);
  EXPECT_EQ(services.pid("web"), processes[0].pid);
  EXPECT_TRUE(testutil::pid_alive(services.pid("web")));
  EXPECT_TRUE(services.running("env"));
  // The children see the port in their environment.
  EXPECT_TRUE(wait_until([&] { return tail_has(services, "env", "web=" + std::to_string(port)); }));
  EXPECT_TRUE(tail_has(services, "web", "listening on 127.0.0.1:" + std::to_string(port)));
  EXPECT_EQ(services.ports(), (std::vector<std::pair<std::string, int>>{{"web", port}}));
  // A name the config does not use is reserved on first use, once.
  int extra = services.port("mine");
  EXPECT_NE(extra, port);
  EXPECT_EQ(services.port("mine"), extra);
  EXPECT_FALSE(services.api_url().has_value());
  EXPECT_EQ(services.output_file("web"), "");  // outputs_dir "" in quiet()
}

TEST(Services, RestartStopStartKillAndSignalAreNotReportedAsFailures) {
  int first = 0, restarted = 0, after_start = 0;
  bool old_gone = false, stopped = false, served_after_restart = false, served_after_start = false;
  bool killed_gone = false, killed_group_gone = false, signalled_gone = false;
  std::string step_output;
  std::vector<std::string> failures;
  {
    FailureCollector collector;
    {
      Services services(source(R"(
        "step": {"executable": "sh", "arguments": ["-c", "echo step done"],
                 "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},)" + web_process()),
                        quiet());
      step_output = joined(services.output_tail("step", 1));
      first = services.pid("web");
      restarted = services.restart("web").pid;
      old_gone = wait_until([&] { return !testutil::pid_alive(first); });
      auto health = gtest_env_util::http_get(services.port("web"), "/health");
      served_after_restart = health && health->status == 200;

      services.stop("web");
      stopped = !services.running("web") && !services.process("web").group_alive;
      after_start = services.start("web").pid;
      health = gtest_env_util::http_get(services.port("web"), "/health");
      served_after_start = health && health->status == 200;

      services.kill("web");
      killed_gone = !testutil::pid_alive(after_start);
      killed_group_gone = !testutil::group_alive(after_start);
      services.start("web");
      int pid = services.pid("web");
      services.signal("web", SIGKILL);
      signalled_gone = wait_until([&] { return !services.running("web"); }) && wait_until([&] { return !testutil::pid_alive(pid); });
    }
    failures = collector.messages();
  }
  EXPECT_EQ(step_output, "step done\n---\n");
  EXPECT_NE(restarted, first);
  EXPECT_TRUE(old_gone);
  EXPECT_TRUE(served_after_restart);
  EXPECT_TRUE(stopped);
  EXPECT_TRUE(served_after_start);
  EXPECT_TRUE(killed_gone);
  EXPECT_TRUE(killed_group_gone);
  EXPECT_TRUE(signalled_gone);
  EXPECT_TRUE(failures.empty()) << joined(failures);
}

TEST(Services, AFailingVerifierThrowsNamingTheProcessAndWhatItSawAndLeavesNothingRunning) {
  std::string dir = testutil::make_temp_dir();
  std::string message;
  try {
    Services services(source(R"(
      "sleeper": {"executable": "sh", "arguments": ["-c", "echo $$ > )" + dir + R"(/sleeper.pid; exec sleep 300"]},
      "broken": {"executable": "sh", "arguments": ["-c", "echo $$ > )" + dir + R"(/broken.pid; echo about to disappoint; exec sleep 300"],
                 "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                              "arguments": {"url": "http://127.0.0.1:${port:nothing}/", "timeout": 0.3}}})"),
                      quiet());
    ADD_FAILURE() << "the set-up should have failed";
  } catch (const pymanager::Error& e) {
    message = e.what();
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::verify_failed);
  }
  EXPECT_THAT(message, StartsWith("pymanager: the services of test-config.json could not be set up"));
  EXPECT_THAT(message, HasSubstr("process 'broken': verifier pymutils.http_verifier.HttpOkVerifier failed: timed out after"));
  EXPECT_THAT(message, HasSubstr("(last attempt: connection refused)"));
  EXPECT_THAT(message, HasSubstr("about to disappoint"));
  for (const char* file : {"/sleeper.pid", "/broken.pid"}) {
    pid_t pid = std::atoi(testutil::read_file(dir + file).c_str());
    ASSERT_GT(pid, 0) << file;
    EXPECT_FALSE(testutil::pid_alive(pid)) << file;
    EXPECT_FALSE(testutil::group_alive(pid)) << file;
  }
}

TEST(Services, TheDestructorLeavesNothingRunningNotEvenADaemonThatLeftItsGroup) {
  std::vector<pid_t> pids;
  {
    Services services(source(R"(
      "tree": {"executable": "sh", "arguments": ["-c", "sleep 300 & echo grandchild $!; setsid sleep 300 & echo daemon $!; wait"]})"),
                      quiet());
    ASSERT_TRUE(wait_until([&] { return tail_has(services, "tree", "daemon "); }));
    std::string text = joined(services.output_tail("tree", 10));
    pids = {services.pid("tree"), testutil::pids_after(text, "grandchild ").at(0), testutil::pids_after(text, "daemon ").at(0)};
    ASSERT_TRUE(wait_until([&] { return ::getsid(pids[2]) == pids[2]; })) << "the daemon did not setsid";
  }
  // Gone when the destructor returns, not some time later.
  for (pid_t p : pids) EXPECT_FALSE(testutil::pid_alive(p)) << "pid " << p;
  EXPECT_FALSE(testutil::group_alive(pids[0]));
}

TEST(Services, AnUnexpectedExitIsAFailureWithTheNameTheSignalAndTheLastLines) {
  std::vector<std::string> failures;
  bool arrived;
  {
    FailureCollector collector;
    {
      Services services(source(R"(
        "victim": {"executable": "sh", "arguments": ["-c", "echo victim says goodbye soon; exec sleep 300"]})"),
                        quiet());
      wait_until([&] { return tail_has(services, "victim", "goodbye"); });
      ::kill(services.pid("victim"), SIGKILL);  // behind the environment's back
      arrived = collector.wait_for(1);
    }
    failures = collector.messages();
  }
  EXPECT_TRUE(arrived) << "the exit was not reported while the services ran";
  ASSERT_EQ(failures.size(), 1u) << "reported once, not again at shutdown:\n" << joined(failures);
  EXPECT_THAT(failures[0], HasSubstr("pymanager: process 'victim' (pid "));
  EXPECT_THAT(failures[0], HasSubstr("exited unexpectedly with signal 9 (Killed) while the tests ran; its last lines:\n"
                                     "  victim says goodbye soon"));
}

TEST(Services, WithReportExitsAtOnceOffAnExitIsReportedAtShutdown) {
  std::vector<std::string> failures;
  std::size_t before_shutdown;
  {
    FailureCollector collector;
    {
      Options options = quiet();
      options.report_exits_at_once = false;
      // It exits once the test lets it: an exit before the set-up is
      // complete would fail the set-up instead.
      std::string go = testutil::make_temp_dir() + "/go";
      Services services(source(R"("crashy": {"executable": "sh", "arguments": ["-c",
          "echo crashing; while [ ! -e )" + go + R"( ]; do sleep 0.01; done; exit 7"]})"),
                        options);
      testutil::write_file(go, "");
      wait_until([&] { return !services.running("crashy"); });
      before_shutdown = collector.messages().size();
    }
    failures = collector.messages();
  }
  EXPECT_EQ(before_shutdown, 0u);
  ASSERT_EQ(failures.size(), 1u) << joined(failures);
  EXPECT_THAT(failures[0], HasSubstr("process 'crashy' (pid "));
  EXPECT_THAT(failures[0], HasSubstr("exited unexpectedly with exit code 7 before the services were shut down; its last lines:\n  crashing"));
}

TEST(Services, AProcessThatNeededSigkillIsLoggedAndWithFailOnKillIsAFailure) {
  const std::string stubborn = R"("stubborn": {"executable": "sh", "arguments": ["-c", "trap '' TERM; echo ready; exec sleep 300"]})";
  for (bool fail_on_kill : {false, true}) {
    Log log;
    std::vector<std::string> failures;
    {
      FailureCollector collector;
      {
        Options options = quiet(&log);
        options.fail_on_kill = fail_on_kill;
        Services services(source(stubborn, R"("graceful-time": 0.2)"), options);
        wait_until([&] { return tail_has(services, "stubborn", "ready"); });
      }
      failures = collector.messages();
    }
    EXPECT_THAT(log.text(), HasSubstr("did not stop within its graceful time 0.2s after SIGTERM and was killed with SIGKILL"));
    ASSERT_EQ(failures.size(), fail_on_kill ? 1u : 0u) << joined(failures);
    if (fail_on_kill) {
      EXPECT_THAT(failures[0], HasSubstr("process 'stubborn' (pid "));
    }
  }
}

TEST(Services, EachProcessFullOutputIsWrittenToTheOutputsFolder) {
  std::string outputs = testutil::make_temp_dir();
  std::string work = testutil::make_temp_dir();
  std::string talker_file, redirected_file;
  int first_pid = 0;
  {
    Options options = quiet();
    options.outputs_dir = outputs;
    Services services(source(R"(
      "step": {"executable": "sh", "arguments": ["-c", "echo step one; echo step two"],
               "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
      "talker": {"executable": "sh", "arguments": ["-c", "echo run $$; exec sleep 300"]},
      "raw": {"executable": "sh", "arguments": ["-c", "echo raw line; exec sleep 300"],
              "options": {"redirect_output": ")" + work + R"(/raw.out"}},
      "quiet": {"executable": "sh", "arguments": ["-c", "echo unseen; exec sleep 300"], "options": {"suppress_output": true}})"),
                      options);
    talker_file = services.output_file("talker");
    EXPECT_EQ(services.output_file("raw"), work + "/raw.out");
    EXPECT_EQ(services.output_file("quiet"), "");
    first_pid = services.pid("talker");
    wait_until([&] { return tail_has(services, "talker", "run "); });
    services.restart("talker");
    wait_until([&] { return tail_has(services, "talker", "run " + std::to_string(services.pid("talker"))); });
    wait_until([&] { return testutil::read_file(work + "/raw.out") == "raw line\n"; });
  }
  std::string scope = outputs + "/pymanager/Services.EachProcessFullOutputIsWrittenToTheOutputsFolder/";
  EXPECT_EQ(talker_file, scope + "talker.log");
  std::string step = testutil::read_file(scope + "step.log");
  EXPECT_THAT(step, StartsWith("step one\nstep two\n[pymanager] pid "));
  EXPECT_THAT(step, HasSubstr(" exited with exit code 0\n"));
  std::string talker = testutil::read_file(scope + "talker.log");
  EXPECT_THAT(talker, StartsWith("run " + std::to_string(first_pid) + "\n[pymanager] pid " + std::to_string(first_pid) +
                                 " exited with signal 15 (Terminated)\nrun "));
  EXPECT_EQ(testutil::pids_after(talker, "run ").size(), 2u) << talker;
  // A redirect_output file is copied next to the others at the end.
  EXPECT_EQ(testutil::read_file(scope + "raw.log"), "raw line\n");
  struct stat st {};
  EXPECT_NE(::stat((scope + "quiet.log").c_str(), &st), 0) << "suppress_output means no output file";
}

TEST(Services, TwoCopiesOfAConfigAtOnceGetTheirOwnPortsAndBothServe) {
  auto config = source(web_process());
  Services a(config, quiet());
  Services b(config, quiet());
  EXPECT_NE(a.port("web"), b.port("web"));
  for (Services* s : {&a, &b}) {
    auto health = gtest_env_util::http_get(s->port("web"), "/health");
    ASSERT_TRUE(health.has_value());
    EXPECT_EQ(health->status, 200);
  }
}

TEST(Services, TheHttpApiOnPortZeroOrANamedPort) {
  for (const char* port : {"0", "\"${port:api}\""}) {
    Services services(source(R"("hello": {"executable": "sleep", "arguments": ["300"]})",
                             std::string(R"("http": {"enabled": true, "port": )") + port + "}"),
                      quiet());
    ASSERT_TRUE(services.api_url().has_value());
    std::string url = *services.api_url();
    ASSERT_THAT(url, StartsWith("http://127.0.0.1:"));
    int api_port = std::atoi(url.c_str() + std::string("http://127.0.0.1:").size());
    if (std::string(port) != "0") {
      EXPECT_EQ(api_port, services.port("api"));
    }
    auto status = gtest_env_util::http_get(api_port, "/status");
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(status->status, 200);
    EXPECT_EQ(status->body, R"({"status":"running"})");
  }
}

TEST(Services, AParsedConfigWithItsOwnPortAllocator) {
  auto ports = std::make_shared<pymanager::PortAllocator>();
  auto json = config_json(web_process());
  pymanager::expand_ports(json, *ports);
  pymanager::Config config = pymanager::parse_config(json, pymanager::builtin_verifiers());
  Services services(ConfigSource::config(config, ports), quiet());
  EXPECT_EQ(services.port("web"), *ports->find("web"));
  auto health = gtest_env_util::http_get(services.port("web"), "/health");
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 200);
}

TEST(Services, ConfigErrorsNameTheConfigAndTheJsonPath) {
  try {
    Services services(source(R"("web": {"executable": "sleep", "arguments": ["${port:}"]})"), quiet());
    ADD_FAILURE() << "a bad placeholder was accepted";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::config_invalid);
    EXPECT_THAT(e.what(), HasSubstr("test-config.json: processes.web.arguments[0]: bad port placeholder '${port:}'"));
  }
}

TEST(Services, AccessorsRefuseUnknownNamesAndStoppedProcesses) {
  Services services(source(R"("hello": {"executable": "sleep", "arguments": ["300"]})"), quiet());
  try {
    services.pid("nope");
    ADD_FAILURE() << "no exception";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::not_found);
    EXPECT_STREQ(e.what(), "no process named 'nope' in test-config.json (processes: hello)");
  }
  services.stop("hello");
  try {
    services.pid("hello");
    ADD_FAILURE() << "no exception";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::not_found);
    EXPECT_THAT(e.what(), HasSubstr("process 'hello' is not running (it exited with signal 15"));
  }
}

/// The shape the README recommends for one test suite's services.
class SharedServices : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { services_ = std::make_unique<Services>(source(web_process()), quiet()); }
  static void TearDownTestSuite() { services_.reset(); }
  static std::unique_ptr<Services> services_;
  static int first_pid_;
};
std::unique_ptr<Services> SharedServices::services_;
int SharedServices::first_pid_ = 0;

TEST_F(SharedServices, FirstTestSeesTheSuiteServices) {
  first_pid_ = services_->pid("web");
  EXPECT_TRUE(gtest_env_util::http_get(services_->port("web"), "/health").has_value());
}

TEST_F(SharedServices, SecondTestSeesTheSameProcess) { EXPECT_EQ(services_->pid("web"), first_pid_); }

TEST(ResolvePath, FindsAFileInTheCurrentFolderOrTheRunfilesTree) {
  // `bazel test` starts this test in <runfiles>/pymanager.
  std::string cwd = pymanager::detail::current_directory();
  EXPECT_EQ(pymanager::testing::resolve_path("tests/gtest_env_data/minimal.json"), cwd + "/tests/gtest_env_data/minimal.json");
  // With the workspace name in front, as a runfiles path.
  std::string found = pymanager::testing::resolve_path("pymanager/tests/gtest_env_data/minimal.json");
  EXPECT_EQ(testutil::read_file(found), testutil::read_file(cwd + "/tests/gtest_env_data/minimal.json"));
  EXPECT_EQ(pymanager::testing::resolve_path(found), found);
}

TEST(ResolvePath, SaysWhereItLookedWhenNothingIsThere) {
  try {
    pymanager::testing::resolve_path("no/such.json");
    ADD_FAILURE() << "no exception";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::config_not_found);
    EXPECT_THAT(e.what(), StartsWith("config file not found: no/such.json (looked for "));
    EXPECT_THAT(e.what(), HasSubstr(pymanager::detail::current_directory() + "/no/such.json"));
  }
  EXPECT_THROW(pymanager::testing::resolve_path("/no/such/absolute.json"), pymanager::Error);
}

TEST(Environment, AccessorsBeforeSetUpSayTheServicesAreNotUp) {
  pymanager::testing::Environment env("tests/gtest_env_data/minimal.json", quiet());
  EXPECT_FALSE(env.up());
  EXPECT_EQ(&pymanager::testing::environment(), &env);
  try {
    env.processes();
    ADD_FAILURE() << "no exception";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("the services of tests/gtest_env_data/minimal.json are not up"));
  }
  env.TearDown();  // harmless without SetUp
}

TEST(Environment, SetUpAndTearDownCalledDirectly) {
  pymanager::testing::Environment env("tests/gtest_env_data/minimal.json", quiet());
  env.SetUp();
  ASSERT_TRUE(env.up());
  int pid = env.pid("hello");
  EXPECT_TRUE(testutil::pid_alive(pid));
  env.TearDown();
  EXPECT_FALSE(env.up());
  EXPECT_FALSE(testutil::pid_alive(pid));
  EXPECT_FALSE(testutil::group_alive(pid));
  env.TearDown();  // idempotent
}

}  // namespace

namespace {

TEST(Services, ADependencyGraphComesUpAndDownAsInTheManager) {
  const std::string service = testutil::runfile("tests/helpers/http_service");
  auto web = [&](const std::string& name, const std::string& depends) {
    return "\"" + name + "\": {\"executable\": \"" + service + "\", \"arguments\": [\"--port\", \"${port:" + name +
           "}\"], \"depends_on\": " + depends + ", \"verifier\": {\"type\": \"pymutils.http_verifier.HttpOkVerifier\", " +
           "\"arguments\": {\"url\": \"http://127.0.0.1:${port:" + name + "}/health\", \"timeout\": 10}}}";
  };
  std::vector<pid_t> pids;
  {
    Services services(source(web("db", "[]") + ", " + web("api", "[\"db\"]") + ", " + web("worker", "{\"db\": \"started\"}")),
                      quiet());
    for (const auto& p : services.processes()) {
      EXPECT_EQ(p.state, pymanager::ProcessState::ready) << p.name;
      EXPECT_TRUE(p.running) << p.name;
      pids.push_back(p.pid);
    }
    EXPECT_EQ(pids.size(), 3u);
  }
  for (pid_t pid : pids) EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(pid); })) << pid;
}

}  // namespace
