// End-to-end tests of the built binary //tools:pymanager on real configs:
// exit codes, signals, keep-alive, daemon mode, messages, and that nothing
// it launched is left alive afterwards.
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>
#include <regex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "pymanager/config_schema.hpp"
#include "tests/json_util.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;
using testutil::wait_until;

const char* kModules = R"("modules": {
    "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]},
    "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}
  })";

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testutil::make_temp_dir();
    binary_ = testutil::runfile("tools/pymanager");
    greeter_ = testutil::runfile("examples/greeter");
    http_service_ = testutil::runfile("tests/helpers/http_service");
  }

  /// Writes cfg.json in the test's folder from a processes body and extra keys.
  std::string write_config(const std::string& processes, const std::string& extra = "") {
    std::string text = std::string("{") + kModules + ", " + extra + (extra.empty() ? "" : ", ") + "\"processes\": {" +
                       processes + "}}";
    testutil::write_file(dir_ + "/cfg.json", text);
    return dir_ + "/cfg.json";
  }

  std::vector<std::string> command(std::vector<std::string> args) {
    args.insert(args.begin(), binary_);
    return args;
  }

  testutil::RunResult run(std::vector<std::string> args, std::chrono::milliseconds timeout = 30000ms) {
    return testutil::run(command(std::move(args)), dir_, timeout);
  }

  std::unique_ptr<testutil::Child> start(std::vector<std::string> args) {
    return std::make_unique<testutil::Child>(command(std::move(args)), dir_);
  }

  std::vector<pid_t> pids_in(const std::string& file) const { return testutil::pids_in_file(dir_ + "/" + file); }

  /// The port of the API the running manager wrote in cfg.json's state file
  /// (its "url", http://127.0.0.1:PORT); 0 when there is none such.
  int api_port_from_state() const {
    auto state = nlohmann::json::parse(testutil::read_file(dir_ + "/cfg.json.pymanager-state"), nullptr, false);
    const std::string prefix = "http://127.0.0.1:";
    const std::string url = state.is_object() ? state.value("url", "") : "";
    return url.rfind(prefix, 0) == 0 ? std::atoi(url.c_str() + prefix.size()) : 0;
  }

  /// Every pid listed in `file` (written by the children) is gone, and so is
  /// its process group.
  void expect_all_gone(const std::string& file) {
    auto pids = pids_in(file);
    EXPECT_FALSE(pids.empty()) << "no pids recorded in " << file;
    for (pid_t p : pids) {
      EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(p); }, 2000ms)) << "pid " << p << " is still alive";
      EXPECT_TRUE(wait_until([&] { return !testutil::group_alive(p); }, 2000ms)) << "group " << p << " is not empty";
    }
  }

  /// A process body that records its pid (and its group's) in pids.txt and sleeps.
  static std::string sleeper(const std::string& name) {
    return "\"" + name + R"(": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; echo )" + name +
           R"( up; exec sleep 1000"]})";
  }

  std::string dir_;
  std::string binary_;
  std::string greeter_;
  std::string http_service_;
};

/// True when this machine has an IPv6 loopback to listen on.
bool has_ipv6_loopback() {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

TEST_F(Cli, VersionAndHelp) {
  auto version = run({"-V"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_THAT(version.out, ::testing::MatchesRegex("pymanager [0-9]+\\.[0-9]+\\.[0-9]+\n"));
  auto help = run({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag : {"--file", "--daemon", "--verbose", "--debug", "--logfile", "--version"}) {
    EXPECT_THAT(help.out, HasSubstr(flag));
  }
  auto bad = run({"--frobnicate"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("unrecognized argument: --frobnicate"));
}

TEST_F(Cli, ExitCode1WhenTheConfigFileIsMissing) {
  auto result = run({"-f", "absent.json"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("absent.json"));
  // The default file name is pymanager.json, in the current folder.
  auto by_default = run({});
  EXPECT_EQ(by_default.exit_code, 1);
  EXPECT_THAT(by_default.err, HasSubstr("pymanager.json"));
}

TEST_F(Cli, ExitCode2WhenTheConfigCannotBeRead) {
  ::mkdir((dir_ + "/folder.json").c_str(), 0755);
  auto result = run({"--file", "folder.json"});
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.err, HasSubstr("folder.json"));
}

TEST_F(Cli, ExitCode3WhenTheConfigIsNotJson) {
  testutil::write_file(dir_ + "/broken.json", "{\"processes\": {");
  auto result = run({"-f", "broken.json"});
  EXPECT_EQ(result.exit_code, 3);
  EXPECT_THAT(result.err, HasSubstr("broken.json: not valid JSON"));
}

TEST_F(Cli, ExitCode4WhenThereAreNoProcesses) {
  testutil::write_file(dir_ + "/empty.json", "{\"processes\": {}}");
  auto result = run({"-f", "empty.json"});
  EXPECT_EQ(result.exit_code, 4);
  EXPECT_THAT(result.err, HasSubstr("no processes"));
}

TEST_F(Cli, ExitCode5ForAnInvalidConfigBeforeAnythingRuns) {
  write_config(R"("first": {"executable": "sh", "arguments": ["-c", "echo ran > ran.txt"]},
                  "web": {"executable": "sh", "arguments": [], "options": {"redirect_ouput": "x.log"}})");
  auto result = run({"-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 5);
  EXPECT_THAT(result.err, HasSubstr("processes.web.options.redirect_ouput: unknown key (did you mean redirect_output?)"));
  EXPECT_NE(::access((dir_ + "/ran.txt").c_str(), F_OK), 0) << "a process ran although the config was invalid";
}

TEST_F(Cli, ExitCode5WhenAProcessCannotBeSpawned) {
  write_config(sleeper("db") + R"(, "ghost": {"executable": "./not-there", "arguments": []})");
  auto result = run({"-f", "cfg.json", "--verbose"});
  EXPECT_EQ(result.exit_code, 5);
  EXPECT_THAT(result.err, HasSubstr("cannot start process 'ghost' (./not-there): No such file or directory"));
  // "db" was launched (and may not have had time to record its pid): the
  // verbose log names the group it stopped.
  auto groups = testutil::pids_after(result.err, "SIGTERM to 'db' (process group ");
  ASSERT_EQ(groups.size(), 1u) << result.err;
  EXPECT_TRUE(wait_until([&] { return !testutil::group_alive(groups[0]); }, 2000ms));
}

// Hostile or broken config files: each gets its exit code and a message
// naming the problem, before anything is launched; none crashes or hangs.
struct BadInput {
  const char* name;
  std::string content;  ///< written to cfg.json ("" for the special files below)
  const char* file;     ///< the -f argument
  int exit_code;
  const char* message;
};

class CliBadInput : public Cli, public ::testing::WithParamInterface<BadInput> {};

TEST_P(CliBadInput, GetsItsExitCodeAndAMessage) {
  const BadInput& input = GetParam();
  if (!input.content.empty()) testutil::write_file(dir_ + "/cfg.json", input.content);
  if (std::string(input.name) == "fifo") {
    ASSERT_EQ(::mkfifo((dir_ + "/cfg.json").c_str(), 0600), 0);
  }
  auto result = run({"-f", input.file, "-v"}, 60000ms);
  EXPECT_FALSE(result.timed_out);
  EXPECT_EQ(result.exit_code, input.exit_code) << result.err.substr(0, 2000);
  EXPECT_THAT(result.err.substr(0, 4000), HasSubstr(input.message));
  if (std::string(input.name).rfind("deep", 0) == 0) {
    EXPECT_THAT(result.err, HasSubstr("nested deeper than 64 levels"));
  }
  EXPECT_THAT(result.err, Not(HasSubstr("launching"))) << "something was launched";
  EXPECT_NE(::access((dir_ + "/ran").c_str(), F_OK), 0) << "a process ran";
}

const char* kRanProcess = R"("p": {"executable": "sh", "arguments": ["-c", "touch ran"]})";

std::string config_text(const std::string& top, const std::string& processes = kRanProcess) {
  return "{" + top + (top.empty() ? "" : ", ") + R"("processes": {)" + processes + "}}";
}

INSTANTIATE_TEST_SUITE_P(
    Each, CliBadInput,
    ::testing::Values(
        BadInput{"deep_top", std::string(30000, '[') + std::string(30000, ']'), "cfg.json", 5,
                 "cfg.json: [0][0][0][0]"},
        BadInput{"deep_arguments",
                 config_text("", R"("p": {"executable": "sh", "arguments": )" + std::string(100000, '[') +
                                     std::string(100000, ']') + "}"),
                 "cfg.json", 5, "cfg.json: processes.p.arguments[0][0]"},
        BadInput{"number_overflow", config_text(R"("graceful-time": 1e999)"), "cfg.json", 3, "number overflow"},
        BadInput{"absurd_time", config_text(R"("graceful-time": 1e10)"), "cfg.json", 5,
                 "cfg.json: graceful-time: must be at most 604800 seconds (a week), got 10000000000.0"},
        BadInput{"absurd_restart_time", config_text(R"("restart-graceful-time": 1e308)"), "cfg.json", 5,
                 "cfg.json: restart-graceful-time: must be at most 604800 seconds"},
        BadInput{"dev_zero", "", "/dev/zero", 2, "cannot read config file /dev/zero: not a regular file"},
        BadInput{"fifo", "", "cfg.json", 2, "cannot read config file cfg.json: not a regular file"},
        BadInput{"nul_in_argument",
                 config_text("", R"("p": {"executable": "sh", "arguments": ["-c", "touch ran", "one\u0000INJECTED=1"]})"),
                 "cfg.json", 5, "cfg.json: processes.p.arguments[2]: contains a NUL byte"},
        BadInput{"nul_in_working_directory",
                 config_text("", R"("p": {"executable": "sh", "arguments": ["-c", "touch ran"],
                                          "options": {"working_directory": ".\u0000/x"}})"),
                 "cfg.json", 5, "cfg.json: processes.p.options.working_directory: contains a NUL byte"},
        BadInput{"duplicate_process",
                 config_text("", std::string(kRanProcess) + ", " + kRanProcess), "cfg.json", 5,
                 "cfg.json: processes.p: duplicate key"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(Cli, ExitCode5WhenAVerifierFailsAndEverythingLaunchedIsStopped) {
  int port = testutil::free_port();
  write_config(sleeper("db") + R"(, "web": {"executable": "sh",
      "arguments": ["-c", "echo $$ >> pids.txt; echo 'service unavailable: no database' >&2; exec sleep 1000"],
      "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                   "arguments": {"url": "http://127.0.0.1:)" + std::to_string(port) + R"(/", "timeout": 0.5}}},
    "after": {"executable": "sh", "arguments": ["-c", "echo ran > after.txt"]})");
  auto result = run({"-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 5);
  EXPECT_THAT(result.err, HasSubstr("process 'web': verifier pymutils.http_verifier.HttpOkVerifier failed: timed out after 0.5s"));
  EXPECT_THAT(result.err, HasSubstr("connection refused"));
  EXPECT_THAT(result.err, HasSubstr("service unavailable: no database"));
  EXPECT_NE(::access((dir_ + "/after.txt").c_str(), F_OK), 0) << "a process after the failed one was launched";
  expect_all_gone("pids.txt");
}

TEST_F(Cli, AFailureInAGraphCancelsTheSiblingsVerifierStopsEverythingAndExits5) {
  // slow is verified by a file nobody creates (for up to 120 s); bad, its
  // sibling, exits 3 once slow runs; after depends on bad. The run must end
  // with bad's failure, long before slow's verifier would give up.
  testutil::write_file(dir_ + "/cfg.json", R"({"modules": {"pymanager.verifiers": {"verifiers": ["FileVerifier"]},
      "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}}, "processes": {
    "slow": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; echo $$ > slow.pid; exec sleep 1000"],
             "depends_on": [],
             "verifier": {"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "never", "timeout": 120}}},
    "bad": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; while [ ! -s slow.pid ]; do sleep 0.01; done; echo 'no schema' >&2; exit 3"],
            "depends_on": [],
            "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"timeout": 120}}},
    "after": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; echo ran > after.txt"], "depends_on": ["bad"]}}})");
  const auto began = std::chrono::steady_clock::now();
  auto result = run({"-f", "cfg.json"}, 100000ms);
  EXPECT_LT(std::chrono::steady_clock::now() - began, 60s) << "slow's verifier was not cancelled";
  EXPECT_EQ(result.exit_code, 5) << result.err;
  EXPECT_THAT(result.err, HasSubstr("process 'bad': verifier pymutils.exited_verifier.ExitedVerifier failed: exited with exit code 3"));
  EXPECT_THAT(result.err, HasSubstr("no schema"));
  EXPECT_THAT(result.err, Not(HasSubstr("process 'slow': verifier"))) << "slow's cancelled verifier is not the failure";
  EXPECT_NE(::access((dir_ + "/after.txt").c_str(), F_OK), 0) << "a dependent of the failed process was launched";
  EXPECT_EQ(pids_in("pids.txt").size(), 2u);
  expect_all_gone("pids.txt");
}

TEST_F(Cli, HttpVerifierPassesAgainstARealServiceAndFollowsRedirectsToIt) {
  int port = testutil::free_port();
  write_config(R"("greeter": {"executable": ")" + greeter_ + R"(", "arguments": ["--port", ")" + std::to_string(port) +
               R"("], "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                                   "arguments": {"url": "http://localhost:)" + std::to_string(port) +
               R"(/health", "headers": {"X-Test": "1"}}}},
    "check": {"executable": "sh", "arguments": ["-c", "echo checked"],
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}})",
               R"("keep-alive": true)");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("all processes are up")) << child->err();
  EXPECT_THAT(child->err(), HasSubstr("'greeter' verified by pymutils.http_verifier.HttpOkVerifier: status 200"));
  httplib::Client client("127.0.0.1", port);
  auto response = client.Get("/");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  child->signal(SIGTERM);
  auto result = child->wait(10000ms);
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_FALSE(httplib::Client("127.0.0.1", port).Get("/")) << "the service still answers after the shutdown";
}

TEST_F(Cli, LocalhostFindsAServiceThatListensOnlyOnIpv6Loopback) {
  if (!has_ipv6_loopback()) GTEST_SKIP() << "no ::1 on this machine";
  int port = testutil::free_port();
  write_config(R"("v6": {"executable": ")" + http_service_ + R"(", "arguments": ["--host", "::1", "--port", ")" +
               std::to_string(port) + R"("], "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                   "arguments": {"url": "http://localhost:)" + std::to_string(port) + R"(/health", "timeout": 10}}})");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("all processes are up")) << child->err();
  EXPECT_THAT(child->err(), HasSubstr("'v6' verified by pymutils.http_verifier.HttpOkVerifier: status 200"));
  child->signal(SIGTERM);
  EXPECT_EQ(child->wait(10000ms).exit_code, 0);
}

TEST_F(Cli, HttpVerifierRetriesFromMillisecondsAndFollowsRedirects) {
  int port = testutil::free_port();
  // The service listens only once the test creates "listen".
  write_config(R"("late": {"executable": ")" + http_service_ + R"(", "arguments": ["--port", ")" + std::to_string(port) +
               R"(", "--wait-for", "listen"], "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                   "arguments": {"url": "http://127.0.0.1:)" + std::to_string(port) + R"(/redirect", "timeout": 600, "interval": 60}}})",
               R"("messages": ["verifier.fail"])");
  auto child = start({"-f", "cfg.json", "-v"});
  // A failure that repeats is logged again once a second, with its attempt's
  // number: had the retries waited for `interval` (60 s), the second line
  // would come after a minute and say attempt 2; they come every millisecond.
  ASSERT_TRUE(child->wait_for_output("attempt 1 failed: connection refused", 30000ms)) << child->err();
  ASSERT_TRUE(wait_until([&] {
    const std::string& err = child->err();
    return err.find("failed: connection refused", err.find("attempt 1 failed") + 20) != std::string::npos;
  }, 30000ms)) << child->err();
  {
    const std::string& err = child->err();
    auto second = err.find("attempt ", err.find("attempt 1 failed") + 20);
    ASSERT_NE(second, std::string::npos) << err;
    EXPECT_GT(std::atol(err.c_str() + second + 8), 100) << err;
  }
  testutil::write_file(dir_ + "/listen", "");
  ASSERT_TRUE(child->wait_for_output("all processes are up")) << child->err();
  EXPECT_THAT(child->err(), HasSubstr("'late' verified by pymutils.http_verifier.HttpOkVerifier: status 200"));
  child->signal(SIGTERM);
  EXPECT_EQ(child->wait(10000ms).exit_code, 0);
}

TEST_F(Cli, HttpVerifierFailsOnANon2xxStatusAfterARedirect) {
  int port = testutil::free_port();
  write_config(R"("web": {"executable": ")" + http_service_ + R"(", "arguments": ["--port", ")" + std::to_string(port) +
               R"("], "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                   "arguments": {"url": "http://127.0.0.1:)" + std::to_string(port) + R"(/slow-path", "timeout": 3}}})");
  auto result = run({"-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 5);
  EXPECT_THAT(result.err, HasSubstr("process 'web': verifier pymutils.http_verifier.HttpOkVerifier failed: timed out after 3s (last attempt: status 503)"));
}

TEST_F(Cli, ALauncherThatDaemonizesAndExitsZeroIsStillVerified) {
  // Like `pg_ctl start`: the launcher starts the service in its own session
  // and exits 0; the verifier keeps polling and passes.
  int port = testutil::free_port();
  write_config(R"("db": {"executable": "sh", "arguments": ["-c", "setsid )" + http_service_ + " --port " +
                   std::to_string(port) + R"( --delay-ms 200 & echo $! > daemon.pid; exit 0"],
      "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                   "arguments": {"url": "http://127.0.0.1:)" + std::to_string(port) + R"(/health", "timeout": 10}}})",
               R"("keep-alive": true)");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("all processes are up")) << child->err();
  EXPECT_THAT(child->err(), HasSubstr("'db' verified by pymutils.http_verifier.HttpOkVerifier: status 200"));
  child->signal(SIGTERM);
  EXPECT_EQ(child->wait(10000ms).exit_code, 0);
  // The daemon left the group; the keeper kills it when the manager goes.
  pid_t daemon = pids_in("daemon.pid").at(0);
  EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(daemon); }, 2000ms));
}

TEST_F(Cli, AClosedStdoutDoesNotKillTheManager) {
  write_config(R"("chatty": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; while :; do echo tick >> ticks.txt; echo tick; sleep 0.01; done"]})",
               R"("keep-alive": true)");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("all processes are up")) << child->err();
  child->close_stdout();
  // Every tick after this is forwarded to a closed stdout (EPIPE). Had that
  // killed the manager, the keeper would have killed "chatty" at once and
  // the ticks would stop.
  auto ticks = [&] {
    std::string text = testutil::read_file(dir_ + "/ticks.txt");
    return std::count(text.begin(), text.end(), '\n');
  };
  const auto before = ticks();
  ASSERT_TRUE(wait_until([&] { return ticks() >= before + 20; }));
  ASSERT_TRUE(testutil::pid_alive(child->pid()));
  child->signal(SIGTERM);
  auto result = child->wait(10000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err, HasSubstr("received TERM"));
  expect_all_gone("pids.txt");
}

class CliSignal : public Cli, public ::testing::WithParamInterface<int> {};

TEST_P(CliSignal, BeginsTheGracefulShutdownAndExitsZero) {
  write_config(sleeper("one") + ", " + sleeper("two") + R"(, "tree": {"executable": "sh",
      "arguments": ["-c", "echo $$ >> pids.txt; sleep 1000 & echo $! >> pids.txt; wait"]})",
               R"("keep-alive": true)");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("all processes are up")) << child->err();
  ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 4; }));
  child->signal(GetParam());
  auto result = child->wait(10000ms);
  EXPECT_FALSE(result.timed_out);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err, HasSubstr(std::string("received ") + ::sigabbrev_np(GetParam())));
  expect_all_gone("pids.txt");
}

INSTANTIATE_TEST_SUITE_P(EachSignal, CliSignal, ::testing::Values(SIGINT, SIGTERM, SIGQUIT, SIGHUP),
                         [](const auto& info) { return std::string(::sigabbrev_np(info.param)); });

TEST_F(Cli, Sigusr1AndSigusr2AreIgnored) {
  write_config(sleeper("one"), R"("keep-alive": true)");
  auto child = start({"-f", "cfg.json"});
  ASSERT_TRUE(child->wait_for_output("one | one up")) << child->err();
  child->signal(SIGUSR1);
  child->signal(SIGUSR2);
  ASSERT_TRUE(child->wait_for_output("received USR2: ignored")) << child->err();
  EXPECT_THAT(child->err(), HasSubstr("received USR1: ignored"));
  EXPECT_TRUE(testutil::pid_alive(child->pid()));
  EXPECT_TRUE(testutil::pid_alive(pids_in("pids.txt").at(0)));
  child->signal(SIGTERM);
  auto result = child->wait(10000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  expect_all_gone("pids.txt");
}

TEST_F(Cli, AProcessIgnoringSigtermIsKilledAfterTheGracefulTimeAndTheWaitNamesIt) {
  write_config(R"("stubborn": {"executable": "sh",
      "arguments": ["-c", "trap '' TERM; echo $$ >> pids.txt; echo ready; while :; do sleep 0.05; done"]})",
               R"("keep-alive": true, "graceful-time": 2.5)");
  auto child = start({"-f", "cfg.json"});
  ASSERT_TRUE(child->wait_for_output("stubborn | ready"));
  child->signal(SIGTERM);
  auto result = child->wait(15000ms);
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_THAT(result.err, HasSubstr("waiting for process 'stubborn'"));
  EXPECT_THAT(result.err, HasSubstr("did not stop within its graceful time: SIGKILL"));
  expect_all_gone("pids.txt");
}

TEST_F(Cli, ASecondSigintKillsAtOnce) {
  write_config(R"("stubborn": {"executable": "sh",
      "arguments": ["-c", "trap '' TERM INT; echo $$ >> pids.txt; echo ready; while :; do sleep 0.05; done"]})",
               R"("keep-alive": true, "graceful-time": 300)");
  auto child = start({"-f", "cfg.json"});
  ASSERT_TRUE(child->wait_for_output("stubborn | ready"));
  child->signal(SIGINT);
  ASSERT_TRUE(child->wait_for_output("received INT"));
  child->signal(SIGINT);
  // Far less than the 300 s graceful time.
  auto result = child->wait(20000ms);
  EXPECT_FALSE(result.timed_out);
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_THAT(result.err, HasSubstr("second SIGINT"));
  expect_all_gone("pids.txt");
}

TEST_F(Cli, WithoutKeepAliveItExitsOnceEveryProcessHasExited) {
  write_config(R"("a": {"executable": "sh", "arguments": ["-c", "echo a done"]},
                  "b": {"executable": "sh", "arguments": ["-c", "sleep 0.2; echo b done"]})",
               R"("messages": ["process.exit"])");
  auto result = run({"-f", "cfg.json"}, 15000ms);
  EXPECT_FALSE(result.timed_out);
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_THAT(result.out, HasSubstr("a | a done"));
  EXPECT_THAT(result.out, HasSubstr("b | b done"));
  EXPECT_THAT(result.err, HasSubstr("process 'a' (pid"));
  EXPECT_THAT(result.err, HasSubstr("exited with code 0"));
}

TEST_F(Cli, AnExitBySignalIsSaidAsASignal) {
  write_config(R"("a": {"executable": "sh", "arguments": ["-c", "kill -9 $$"]},
                  "b": {"executable": "sh", "arguments": ["-c", "exit 3"]})",
               R"("messages": ["process.exit"])");
  auto result = run({"-f", "cfg.json"}, 15000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err, ::testing::ContainsRegex("process 'a' \\(pid [0-9]+\\) exited with signal 9 \\(Killed\\)\n"));
  EXPECT_THAT(result.err, ::testing::ContainsRegex("process 'b' \\(pid [0-9]+\\) exited with code 3\n"));
  EXPECT_THAT(result.err, Not(HasSubstr("code -9")));
}

TEST_F(Cli, WithKeepAliveItStaysAfterEveryProcessHasExited) {
  write_config(R"("a": {"executable": "sh", "arguments": ["-c", "exit 3"]})",
               R"("keep-alive": true, "messages": ["process.exit"])");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("exited with code 3"));
  // It has handled the exit; a manager without keep-alive says so at once
  // and exits (see the test above). This one waits for a signal.
  child->signal(SIGTERM);
  auto result = child->wait(10000ms);
  EXPECT_EQ(result.exit_code, 0);
  EXPECT_THAT(result.err, HasSubstr("received TERM"));
  EXPECT_THAT(result.err, Not(HasSubstr("all processes have exited")));
}

// Careful users write both spellings (the original's README documents the
// hyphen, the original reads the underscore): such a file runs with the
// underscore's values, and one warning per differing pair.
TEST_F(Cli, BothSpellingsInOneFileRunWithTheValuesTheOriginalReads) {
  // keep_alive (true) wins over keep-alive (false): the manager stays after
  // its only process has exited.
  write_config(R"("a": {"executable": "sh", "arguments": ["-c", "exit 3"]})",
               R"("keep-alive": false, "keep_alive": true, "messages": ["process.exit"])");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("exited with code 3")) << child->err();
  child->signal(SIGTERM);
  auto result = child->wait(10000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err, HasSubstr("pymanager: cfg.json: warning: keep-alive is false but keep_alive is true: using "
                                    "keep_alive (true), the spelling the original reads\n"));
  EXPECT_THAT(result.err, HasSubstr("received TERM"));
  EXPECT_THAT(result.err, Not(HasSubstr("all processes have exited")));

  // graceful_time (60) wins over graceful-time (0): a process that takes its
  // time over SIGTERM is waited for, not killed at once. Same values for
  // the restart spellings: no warning.
  write_config(R"("slow": {"executable": "sh", "arguments": ["-c",
      "echo $$ >> pids.txt; trap 'echo term > got; while [ ! -e go ]; do sleep 0.01; done; exit 0' TERM; echo ready; while :; do sleep 0.05; done"]})",
               R"("keep-alive": true, "graceful-time": 0, "graceful_time": 60,
                  "restart-graceful-time": 3, "restart_graceful_time": 3.0)");
  child = start({"-f", "cfg.json"});
  ASSERT_TRUE(child->wait_for_output("slow | ready")) << child->err();
  child->signal(SIGTERM);
  ASSERT_TRUE(wait_until([&] { return testutil::read_file(dir_ + "/got") == "term\n"; }, 20000ms)) << child->err();
  EXPECT_TRUE(testutil::pid_alive(pids_in("pids.txt").at(0))) << child->err();
  testutil::write_file(dir_ + "/go", "");
  result = child->wait(20000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err, HasSubstr("cfg.json: warning: graceful-time is 0 but graceful_time is 60: using graceful_time (60)"));
  EXPECT_THAT(result.err, Not(HasSubstr("restart")));
  EXPECT_THAT(result.err, Not(HasSubstr("SIGKILL")));
  expect_all_gone("pids.txt");
}

TEST_F(Cli, OptionsAndMessagesEndToEnd) {
  ::mkdir((dir_ + "/www").c_str(), 0755);
  testutil::write_file(dir_ + "/app.env", "APP_MODE=test\n");
  write_config(R"(
    "where": {"executable": "sh", "arguments": ["-c", "echo \"cwd=$(pwd) mode=$APP_MODE\""],
              "options": {"working_directory": "www", "environment_file": "app.env"},
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "quiet": {"executable": "sh", "arguments": ["-c", "echo hidden"], "options": {"suppress_output": true},
              "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "logged": {"executable": "sh", "arguments": ["-c", "echo into-the-file"], "options": {"redirect_output": "logged.txt"},
               "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
    "shelled": {"executable": "echo shell:$0", "arguments": ["zero"], "options": {"shell": true},
                "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}})",
               R"("messages": ["process.exit", "verifier.verbose"])");
  auto result = run({"-f", "cfg.json"}, 15000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("where   | cwd=" + dir_ + "/www mode=test\n"));
  EXPECT_THAT(result.out, Not(HasSubstr("hidden")));
  EXPECT_THAT(result.out, Not(HasSubstr("into-the-file")));
  EXPECT_EQ(testutil::read_file(dir_ + "/logged.txt"), "into-the-file\n");
  EXPECT_THAT(result.out, HasSubstr("shelled | shell:zero\n"));
  EXPECT_THAT(result.err, HasSubstr("verifier of 'where': waiting up to 30s for exit code 0"));
  EXPECT_THAT(result.err, HasSubstr("process 'quiet' (pid"));
}

// A full disk (here /dev/full, where every write fails with ENOSPC) loses
// output, but says so once and blocks nothing.
TEST_F(Cli, AFullDiskIsReportedOnceAndBlocksNothing) {
  write_config(R"("full": {"executable": "sh", "arguments": ["-c",
      "echo $$ >> pids.txt; for i in 1 2 3 4 5; do echo line $i; done; touch written; exec sleep 1000"],
      "options": {"redirect_output": "/dev/full"}})",
               R"("keep-alive": true)");
  auto child = start({"-f", "cfg.json"});
  ASSERT_TRUE(wait_until([&] { return ::access((dir_ + "/written").c_str(), F_OK) == 0; })) << child->err();
  ASSERT_TRUE(child->wait_for_output("cannot write the output of 'full' to /dev/full: No space left on device"))
      << child->err();
  EXPECT_TRUE(testutil::pid_alive(pids_in("pids.txt").at(0)));
  child->signal(SIGTERM);
  auto result = child->wait(10000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  std::string err = result.err;
  std::size_t first = err.find("cannot write the output");
  EXPECT_EQ(err.find("cannot write the output", first + 1), std::string::npos) << "said more than once:\n" << err;
  expect_all_gone("pids.txt");

  // The log file on a full disk: one warning on stderr.
  ::unlink((dir_ + "/pids.txt").c_str());
  write_config(sleeper("one"), R"("keep-alive": true)");
  child = start({"-f", "cfg.json", "-v", "-l", "/dev/full"});
  ASSERT_TRUE(child->wait_for_output("one | one up")) << child->err();
  ASSERT_TRUE(child->wait_for_output("pymanager: warning: cannot write log file /dev/full: No space left on device"));
  child->signal(SIGTERM);
  result = child->wait(10000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  first = result.err.find("cannot write log file");
  EXPECT_EQ(result.err.find("cannot write log file", first + 1), std::string::npos) << result.err;
  expect_all_gone("pids.txt");
}

TEST_F(Cli, VerifierFailMessagesShowWhatAttemptsSawWhenItChanges) {
  int port = testutil::free_port();
  write_config(R"("web": {"executable": "sleep", "arguments": ["1000"],
      "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                   "arguments": {"url": "http://127.0.0.1:)" + std::to_string(port) + R"(/", "timeout": 0.3, "interval": 0.05}}})",
               R"("messages": ["verifier.fail"])");
  auto result = run({"-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 5);
  EXPECT_THAT(result.err, HasSubstr("verifier of 'web': attempt 1 failed: connection refused"));
  // The same failure again is not logged again within a second (attempts come every millisecond).
  EXPECT_THAT(result.err, Not(HasSubstr("verifier of 'web': attempt 2 failed")));
}

TEST_F(Cli, DaemonReturnsOnceEverythingIsVerified) {
  int port = testutil::free_port();
  write_config(R"("greeter": {"executable": ")" + greeter_ + R"(", "arguments": ["--port", ")" + std::to_string(port) +
               R"("], "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                                   "arguments": {"url": "http://127.0.0.1:)" + std::to_string(port) + R"(/health"}}})",
               R"("keep-alive": true)");
  auto result = run({"-d", "-f", "cfg.json", "-l", "daemon.log"}, 20000ms);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  // Verified before -d returned: the service answers right away.
  auto response = httplib::Client("127.0.0.1", port).Get("/");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200);
  pid_t daemon = testutil::pids_after(result.err, "in the background as pid ").at(0);
  ASSERT_TRUE(testutil::pid_alive(daemon));
  EXPECT_NE(::getsid(daemon), ::getsid(0)) << "the daemon did not leave the session";
  ::kill(daemon, SIGTERM);
  EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(daemon); }, 10000ms));
  EXPECT_FALSE(httplib::Client("127.0.0.1", port).Get("/"));
  std::string log = testutil::read_file(dir_ + "/daemon.log");
  EXPECT_THAT(log, HasSubstr("pymanager: received TERM: shutting down"));
  EXPECT_THAT(log, HasSubstr("greeter | greeter: listening on"));
}

TEST_F(Cli, DaemonExitsFiveWhenSetUpFails) {
  write_config(sleeper("db") + R"(, "migrate": {"executable": "sh", "arguments": ["-c", "exit 4"],
      "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}})");
  auto result = run({"--daemon", "-f", "cfg.json"}, 20000ms);
  EXPECT_EQ(result.exit_code, 5);
  EXPECT_THAT(result.err, HasSubstr("process 'migrate': verifier pymutils.exited_verifier.ExitedVerifier failed: exited with exit code 4"));
  expect_all_gone("pids.txt");
}

TEST_F(Cli, SigkilledManagerLeavesNothingBehind) {
  write_config(sleeper("one") + R"(, "tree": {"executable": "sh",
      "arguments": ["-c", "echo $$ >> pids.txt; sleep 1000 & echo $! >> pids.txt; setsid sleep 1000 & echo $! >> pids.txt; wait"]})",
               R"("keep-alive": true)");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("all processes are up"));
  ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 4; }));
  child->signal(SIGKILL);
  child->wait(5000ms);
  // Within a second of the manager's death, even the daemon that left its group.
  for (pid_t p : pids_in("pids.txt")) {
    EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(p); }, 1000ms)) << "pid " << p << " survived";
  }
}

/// The pids of the children of `pid` (/proc/PID/task/PID/children).
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  std::istringstream in(testutil::read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children"));
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

/// The comm name of a process ("pymanager-keep..." for the keeper).
std::string comm_of(pid_t pid) { return testutil::read_file("/proc/" + std::to_string(pid) + "/comm"); }

TEST_F(Cli, AStdoutNobodyReadsDoesNotStopTheShutdown) {
  // (pymanager -f cfg.json | sleep 600): the pipe fills and stays full.
  write_config(R"("spam": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; seq 1 300000; exec sleep 1000"]},
                  "kept": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; echo $$ > kept.pid; seq 1 5000; exec sleep 1000"],
                           "options": {"redirect_output": "kept.txt"}})",
               R"("keep-alive": true, "graceful-time": 5, "http": {"enabled": true, "port": 0})");
  testutil::Child pipeline({"/bin/sh", "-c", "\"$0\" -f cfg.json 2>err.txt | sleep 600", binary_}, dir_);
  std::string expected;
  for (int i = 1; i <= 5000; ++i) expected += std::to_string(i) + "\n";
  ASSERT_TRUE(wait_until([&] { return testutil::read_file(dir_ + "/kept.txt") == expected; }, 30000ms));
  ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 2; }));
  // The state under test: the manager has begun to drop lines (said as soon
  // as it begins). Until then the spam may still be in its pipe.
  const std::string dropping = "[0-9]+ lines not shown, stdout is not being read";
  ASSERT_TRUE(wait_until([&] { return std::regex_search(testutil::read_file(dir_ + "/err.txt"), std::regex(dropping)); }, 60000ms))
      << testutil::read_file(dir_ + "/err.txt");
  // The manager is the pipeline's first child: find it by its state file.
  ASSERT_TRUE(wait_until([&] { return testutil::read_file(dir_ + "/cfg.json.pymanager-state").find("\"pid\"") != std::string::npos; }));
  auto state = nlohmann::json::parse(testutil::read_file(dir_ + "/cfg.json.pymanager-state"), nullptr, false);
  pid_t manager = static_cast<pid_t>(testutil::integer(state, {"pid"}));
  ASSERT_GT(manager, 0);
  // The API still answers, and a stop through it is carried out (the issue's
  // "POST /stop times out").
  const int api_port = api_port_from_state();
  ASSERT_GT(api_port, 0) << testutil::read_file(dir_ + "/cfg.json.pymanager-state");
  httplib::Client api("127.0.0.1", api_port);
  api.set_read_timeout(20, 0);
  // Both pids are written before the launch phase has ended; until it has,
  // a stop is refused with 409. Wait for the launch to end (bounded).
  int status = 0;
  std::string body;
  ASSERT_TRUE(wait_until([&] {
    auto stopped = api.Post("/stop/2");
    status = stopped ? stopped->status : -1;
    body = stopped ? stopped->body : httplib::to_string(stopped.error());
    return status != 409;
  }, 20000ms)) << "still launching after 20 s: " << body;
  EXPECT_EQ(status, 200) << body;
  EXPECT_FALSE(testutil::group_alive(pids_in("kept.pid").at(0)));
  const auto began = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(manager, SIGTERM), 0);
  EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(manager); }, 20000ms)) << "the manager hangs on its stdout";
  EXPECT_LT(std::chrono::steady_clock::now() - began, 20s);
  expect_all_gone("pids.txt");
  EXPECT_EQ(testutil::read_file(dir_ + "/kept.txt"), expected);
  EXPECT_THAT(testutil::read_file(dir_ + "/err.txt"), ::testing::HasSubstr("received TERM: shutting down"));
}

TEST_F(Cli, TooFewFileDescriptorsIsAClearErrorBeforeAnythingRuns) {
  std::string processes;
  for (int i = 0; i < 60; ++i) {
    processes += std::string(i ? ", " : "") + "\"p" + std::to_string(i) +
                 R"(": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; exec sleep 1000"]})";
  }
  write_config(processes, R"("keep-alive": true)");
  // `ulimit -n` in sh sets the hard limit too: the manager cannot raise it.
  auto result = testutil::run({"/bin/sh", "-c", "ulimit -n 100 && exec \"$0\" -f cfg.json", binary_}, dir_);
  EXPECT_EQ(result.exit_code, 5) << result.err;
  EXPECT_THAT(result.err, ::testing::ContainsRegex("cannot start 60 processes: they need about [0-9]+ file descriptors, "
                                                   "but the limit is 100 \\(hard limit 100; raise it with ulimit -n\\)"));
  EXPECT_TRUE(pids_in("pids.txt").empty()) << "processes were launched";
}

TEST_F(Cli, WithDescriptorsForOnlyOnePipeEachStdoutAndStderrShareIt) {
  // 60 processes: about 424 descriptors with two pipes each, 364 with one.
  std::string processes = R"("talker": {"executable": "sh", "arguments": ["-c", "echo to-stderr >&2; exec sleep 1000"]})";
  for (int i = 1; i < 60; ++i) {
    processes += ", \"p" + std::to_string(i) + R"(": {"executable": "sleep", "arguments": ["1000"]})";
  }
  write_config(processes, R"("keep-alive": true)");
  testutil::Child child({"/bin/sh", "-c", "ulimit -n 400 && exec \"$0\" -f cfg.json -v", binary_}, dir_);
  ASSERT_TRUE(child.wait_for_output("all processes are up")) << child.err();
  EXPECT_THAT(child.err(), HasSubstr("60 processes need about 424 file descriptors to read stdout and stderr apart, "
                                     "but the limit is 400"));
  ASSERT_TRUE(child.wait_for_output("talker | to-stderr")) << child.out();
  child.signal(SIGTERM);
  auto result = child.wait(30000ms);
  EXPECT_EQ(result.exit_code, 0) << result.err;
}

TEST_F(Cli, DescriptorsInFlightElsewhereForTheSameUserDoNotLoseTheKeeper) {
  // The kernel counts every descriptor in flight on unix sockets, for all of
  // a user's processes, against the sender's RLIMIT_NOFILE (ETOOMANYREFS):
  // another test sending many at once must not make the manager's spawn
  // requests fail. Here this test keeps 500 in flight itself.
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair), 0);
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(null_fd, 0);
  int sent = 0;
  for (int batch = 0; batch < 10; ++batch) {
    int fds[50];
    for (int& fd : fds) fd = null_fd;
    char byte = 0;
    struct iovec iov = {&byte, 1};
    alignas(8) char control[CMSG_SPACE(sizeof fds)] = {};
    struct msghdr msg {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    std::memcpy(CMSG_DATA(c), fds, sizeof fds);
    if (::sendmsg(pair[0], &msg, MSG_DONTWAIT) == 1) sent += 50;
  }
  EXPECT_EQ(sent, 500);
  write_config(sleeper("one") + R"(, "two": {"executable": "sleep", "arguments": ["1000"]})", R"("keep-alive": true)");
  testutil::Child child({"/bin/sh", "-c", "ulimit -n 400 && exec \"$0\" -f cfg.json -v", binary_}, dir_);
  // Its first spawn request meets the limit; then the burst ends, as the
  // other test's would: the descriptors are received (and closed).
  ASSERT_TRUE(child.wait_for_output("launching 'one'")) << child.err();
  for (int batch = 0; batch < 10; ++batch) {
    char byte = 0;
    struct iovec iov = {&byte, 1};
    alignas(8) char control[CMSG_SPACE(sizeof(int) * 50)] = {};
    struct msghdr msg {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    if (::recvmsg(pair[1], &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) != 1) break;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t k = 0; k < count; ++k) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
        ::close(fd);
      }
    }
  }
  EXPECT_TRUE(child.wait_for_output("all processes are up")) << child.err();
  EXPECT_THAT(child.err(), Not(HasSubstr("keeper process")));
  EXPECT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 1; }));
  child.signal(SIGTERM);
  EXPECT_EQ(child.wait(30000ms).exit_code, 0);
  expect_all_gone("pids.txt");
  ::close(pair[0]);
  ::close(pair[1]);
  ::close(null_fd);
}

TEST_F(Cli, ClosedStandardDescriptorsAreHeldByDevNull) {
  write_config(sleeper("one"), R"("keep-alive": true)");
  testutil::Child child({"/bin/sh", "-c", "exec \"$0\" -f cfg.json <&- >&- 2>&-", binary_}, dir_);
  ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 1; }));
  for (int fd = 0; fd <= 2; ++fd) {
    char target[256] = {};
    std::string link = "/proc/" + std::to_string(child.pid()) + "/fd/" + std::to_string(fd);
    ASSERT_GT(::readlink(link.c_str(), target, sizeof target - 1), 0) << link;
    EXPECT_STREQ(target, "/dev/null") << "fd " << fd;
  }
  child.signal(SIGTERM);
  EXPECT_EQ(child.wait(30000ms).exit_code, 0);
  expect_all_gone("pids.txt");
}

TEST_F(Cli, ACycleIsRefusedBeforeAnythingRuns) {
  write_config(R"("a": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; exec sleep 1000"], "depends_on": ["b"]},
                  "b": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; exec sleep 1000"], "depends_on": ["a"]},
                  "c": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; exec sleep 1000"]})");
  auto result = run({"-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 5);
  EXPECT_THAT(result.err, HasSubstr("processes.a.depends_on: cycle a -> b -> a"));
  EXPECT_TRUE(pids_in("pids.txt").empty());
}

TEST_F(Cli, WithoutTheKeeperProgramTheKeeperIsForkedAndVerboseSaysSo) {
  // A copy of the binary, alone in a folder and without runfiles: no
  // pymanager-keeper next to it. It still runs its processes.
  write_config(R"("hello": {"executable": "sh", "arguments": ["-c", "echo hello from the child"]})");
  ASSERT_EQ(testutil::run({"/bin/cp", binary_, dir_ + "/pm"}).exit_code, 0);
  auto result = testutil::run({"/usr/bin/env", "-u", "RUNFILES_DIR", "-u", "TEST_SRCDIR", "-u", "RUNFILES_MANIFEST_FILE",
                               "-u", "PYMANAGER_KEEPER", dir_ + "/pm", "-f", "cfg.json", "-v"},
                              dir_);
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("hello from the child"));
  EXPECT_THAT(result.err, HasSubstr("keeper forked from this process: no pymanager-keeper program"));
  // The binary in its runfiles finds the program and says nothing of it.
  auto normal = testutil::run({binary_, "-f", "cfg.json", "-v"}, dir_);
  EXPECT_EQ(normal.exit_code, 0) << normal.err;
  EXPECT_THAT(normal.err, ::testing::Not(HasSubstr("keeper forked")));
}

TEST_F(Cli, AKilledKeeperIsReportedAndEndsTheRunWithExitCode6) {
  write_config(sleeper("one") + R"(, "tree": {"executable": "sh",
      "arguments": ["-c", "echo $$ >> pids.txt; sleep 1000 & echo $! >> pids.txt; exec sleep 1000"]})",
               R"("keep-alive": true)");
  auto child = start({"-f", "cfg.json", "-v"});
  ASSERT_TRUE(child->wait_for_output("all processes are up"));
  ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 3; }));
  pid_t keeper = 0;
  for (pid_t p : children_of(child->pid())) {
    if (comm_of(p).rfind("pymanager-keep", 0) == 0) keeper = p;
  }
  ASSERT_GT(keeper, 0) << "no keeper among the manager's children";
  ASSERT_EQ(::kill(keeper, SIGKILL), 0);
  auto result = child->wait(30000ms);
  EXPECT_EQ(result.exit_code, 6) << result.err;
  EXPECT_THAT(result.err, HasSubstr("the keeper process (pid " + std::to_string(keeper) + ") was killed"));
  for (pid_t p : pids_in("pids.txt")) {
    EXPECT_TRUE(wait_until([&] { return !testutil::pid_alive(p); }, 5000ms)) << "pid " << p << " survived";
  }
}

// ------------------------------------------------------------ check, schema

TEST_F(Cli, CheckValidatesWithoutLaunchingAndShowsWhatWouldRunInOrder) {
  write_config(R"("migrate": {"executable": "sh", "arguments": ["-c", "echo ran > ran.txt"],
                   "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
                  "web": {"executable": "sleep", "arguments": ["1000", "two words"],
                          "options": {"working_directory": "."}})");
  auto result = run({"check", "-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.err, "");
  EXPECT_THAT(result.out, HasSubstr("cfg.json: valid, 2 processes\n"
                                    "start: in file order, each once the previous one's verifier passed\n"
                                    "processes:\n"
                                    "  1. migrate\n"
                                    "     command: sh -c 'echo ran > ran.txt'\n"));
  EXPECT_THAT(result.out, ::testing::ContainsRegex("     program: (/usr)?/bin/sh\n"
                                                   "     verifier: pymutils.exited_verifier.ExitedVerifier\n"
                                                   "  2. web\n"
                                                   "     command: sleep 1000 'two words'\n"
                                                   "     program: (/usr)?/bin/sleep\n"
                                                   "     working directory: [^\n]*/\\.\n"
                                                   "     ready once spawned \\(no verifier\\)\n"));
  EXPECT_NE(::access((dir_ + "/ran.txt").c_str(), F_OK), 0) << "check launched a process";
}

TEST_F(Cli, CheckShowsTheGraphsWavesAndThePortsInTheCommands) {
  testutil::write_file(dir_ + "/cfg.json", R"({"$schema": "https://pymanager.invalid/config.schema.json",
    "modules": {"pymanager.verifiers": {"verifiers": ["TcpVerifier"]}}, "processes": {
    "web": {"executable": "sleep", "arguments": ["--port=${port:web}"], "depends_on": ["api", "worker"]},
    "api": {"executable": "sleep", "arguments": ["1"], "depends_on": ["db"]},
    "worker": {"executable": "sleep", "arguments": ["1"], "depends_on": {"db": "started"}},
    "db": {"executable": "sleep", "arguments": ["${port:db}"], "depends_on": [],
           "verifier": {"type": "pymanager.verifiers.TcpVerifier", "arguments": {"port": "${port:db}"}}}}})");
  auto result = run({"check", "-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  std::smatch ports;
  ASSERT_TRUE(std::regex_search(result.out, ports, std::regex("ports: db=([0-9]+) web=([0-9]+) \\(reserved for this check only")))
      << result.out;
  EXPECT_THAT(result.out, HasSubstr("start: a dependency graph in 3 waves"));
  EXPECT_THAT(result.out, HasSubstr("  wave 1: db\n"
                                    "  wave 2: api (after db), worker (after db started)\n"
                                    "  wave 3: web (after api, worker)\n"));
  EXPECT_THAT(result.out, HasSubstr("command: sleep --port=" + ports[2].str() + "\n"));
  EXPECT_THAT(result.out, HasSubstr("command: sleep " + ports[1].str() + "\n"));
  EXPECT_THAT(result.out, HasSubstr("verifier: pymanager.verifiers.TcpVerifier {\"port\":\"" + ports[1].str() + "\"}"));
}

TEST_F(Cli, CheckRefusesWhatAStartRefusesWithTheSameMessageAndExitCode) {
  struct Bad {
    const char* name;
    std::string text;  ///< the file, or "" for no file at all
    int code;
  };
  const std::string good_plugin = testutil::runfile("tests/plugins/libgood_plugin.so");
  const std::string abi2_plugin = testutil::runfile("tests/plugins/libabi2_plugin.so");
  const std::vector<Bad> cases = {
      {"missing", "", 1},
      {"not_json", "{\"processes\": ", 3},
      {"no_processes", "{\"processes\": {}}", 4},
      {"unknown_key", R"({"processes": {"a": {"executable": "sleep", "arguments": [], "optoins": {}}}})", 5},
      {"cycle", R"({"processes": {"a": {"executable": "sleep", "arguments": [], "depends_on": ["b"]},
                                  "b": {"executable": "sleep", "arguments": [], "depends_on": ["a"]}}})", 5},
      {"verifier_argument", R"({"modules": {"pymanager.verifiers": {"verifiers": ["TcpVerifier"]}}, "processes": {"a":
          {"executable": "sleep", "arguments": [], "verifier": {"type": "pymanager.verifiers.TcpVerifier", "arguments": {"port": 70000}}}}})", 5},
      {"plugin_abi", R"({"modules": {"mytests.files": {"library": ")" + abi2_plugin + R"(", "verifiers": ["MarkerFileVerifier"]}},
          "processes": {"a": {"executable": "sleep", "arguments": []}}})", 5},
      {"plugin_class", R"({"modules": {"mytests.files": {"library": ")" + good_plugin + R"(", "verifiers": ["NoSuchVerifier"]}},
          "processes": {"a": {"executable": "sleep", "arguments": []}}})", 5},
      // A shell form where http.port's number goes (it once crashed both).
      {"http_port_shell_form", R"({"http": {"port": "${port:-a}"}, "processes": {"a": {"executable": "true", "arguments": []}}})", 5},
      // Bytes after a NUL were once ignored.
      {"nul_byte", std::string("{\"processes\": {\"a\": {\"executable\": \"true\", \"arguments\": []}}}\0 {{{", 66), 3},
  };
  for (const auto& c : cases) {
    const std::string file = std::string(c.name) + ".json";
    if (!c.text.empty()) testutil::write_file(dir_ + "/" + file, c.text);
    auto checked = run({"check", "-f", file});
    auto started = run({"-f", file}, 20000ms);
    EXPECT_EQ(checked.exit_code, c.code) << c.name << ": " << checked.err;
    EXPECT_EQ(started.exit_code, c.code) << c.name << ": " << started.err;
    EXPECT_EQ(checked.err, started.err) << c.name;
    EXPECT_THAT(checked.err, ::testing::StartsWith("pymanager: ")) << c.name;
    EXPECT_EQ(checked.out, "") << c.name;
  }
}

TEST_F(Cli, CheckOfALongDependencyChainWrittenBackwardsEnds) {
  // p0 waits for p1, which waits for p2, ...: 20,000 waves. The waves are
  // found in one pass (they once took a pass per wave: minutes here).
  std::string processes;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    processes += std::string(i ? ", " : "") + "\"p" + std::to_string(i) + R"(": {"executable": "true", "arguments": [], "depends_on": [)" +
                 (i + 1 < n ? "\"p" + std::to_string(i + 1) + "\"" : std::string()) + "]}";
  }
  write_config(processes);
  auto result = run({"check", "-f", "cfg.json"}, 120000ms);
  EXPECT_FALSE(result.timed_out);
  EXPECT_EQ(result.exit_code, 0) << result.err.substr(0, 500);
  EXPECT_THAT(result.out, HasSubstr("start: a dependency graph in 20000 waves"));
  EXPECT_THAT(result.out, HasSubstr("  wave 1: p19999\n  wave 2: p19998 (after p19999)\n"));
  EXPECT_THAT(result.out, HasSubstr("  wave 20000: p0 (after p1)\n"));
}

TEST_F(Cli, CheckWarnsOfALaunchThatWouldFailAndStrictMakesItAnError) {
  write_config(R"("a": {"executable": "./not-built-yet", "arguments": []},
                  "b": {"executable": "sleep", "arguments": [], "options": {"working_directory": "no-such-folder"}})");
  auto result = run({"check", "-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  EXPECT_THAT(result.err, HasSubstr("pymanager: warning: cannot start process 'a' (./not-built-yet): No such file or directory"));
  EXPECT_THAT(result.err, ::testing::ContainsRegex("pymanager: warning: cannot start process 'b': working_directory [^\n]*/no-such-folder: No such file or directory"));
  EXPECT_THAT(result.out, HasSubstr("command: ./not-built-yet  (cannot start now: see above)"));
  auto strict = run({"check", "--strict", "-f", "cfg.json"});
  EXPECT_EQ(strict.exit_code, 5);
  EXPECT_THAT(strict.err, HasSubstr("pymanager: cannot start process 'a' (./not-built-yet): No such file or directory\n"));
  // The same words a start prints when it gets there.
  auto started = run({"-f", "cfg.json"});
  EXPECT_EQ(started.exit_code, 5);
  EXPECT_THAT(started.err, HasSubstr("cannot start process 'a' (./not-built-yet): No such file or directory"));
}

TEST_F(Cli, SchemaPrintsTheConfigSchema) {
  auto result = run({"schema"});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  auto schema = nlohmann::ordered_json::parse(result.out, nullptr, false);
  ASSERT_FALSE(schema.is_discarded()) << result.out.substr(0, 200);
  EXPECT_EQ(schema, pymanager::config_schema());
  EXPECT_EQ(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
  EXPECT_EQ(run({"schema", "extra"}).exit_code, 2);
}

}  // namespace

namespace {

/// Runs `pymanager ctl ARGS...` in the test's folder.
class Ctl : public Cli {
 protected:
  testutil::RunResult ctl(std::vector<std::string> args, const std::vector<std::string>& env = {}) {
    args.insert(args.begin(), "ctl");
    testutil::Child child(command(std::move(args)), dir_, env);
    return child.wait(30000ms);
  }
  /// Starts a manager with the HTTP API on a free port and waits until it is up.
  std::unique_ptr<testutil::Child> start_manager(const std::string& processes, const std::string& http,
                                                 const std::vector<std::string>& env = {}) {
    write_config(processes, R"("keep-alive": true, "graceful-time": 2, "http": )" + http);
    auto child = std::make_unique<testutil::Child>(command({"-f", "cfg.json", "-v"}), dir_, env);
    EXPECT_TRUE(child->wait_for_output("all processes are up")) << child->err();
    return child;
  }
};

TEST_F(Ctl, FindsTheRunningManagerByItsStateFileAndDrivesIt) {
  auto manager = start_manager(sleeper("db") + R"(, "talker": {"executable": "sh",
      "arguments": ["-c", "echo $$ >> pids.txt; echo first; echo second; exec sleep 1000"]})",
                               R"({"enabled": true, "port": 0})");
  std::string state = testutil::read_file(dir_ + "/cfg.json.pymanager-state");
  EXPECT_THAT(state, HasSubstr("\"url\": \"http://127.0.0.1:"));
  EXPECT_THAT(state, HasSubstr("\"pid\": " + std::to_string(manager->pid())));

  auto list = ctl({"-f", "cfg.json", "list"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_THAT(list.out, ::testing::MatchesRegex("ID +NAME +STATUS +STATE +PID/CODE +COMMAND\n"
                                                "1 +db +running +ready +pid [0-9]+ +sh -c .*\n"
                                                "2 +talker +running +ready +pid [0-9]+ +sh -c .*\n"));
  auto status = ctl({"-f", "cfg.json", "status"});
  EXPECT_EQ(status.out, "running\n");
  ASSERT_TRUE(wait_until([&] { return ctl({"-f", "cfg.json", "output", "talker", "-n", "1"}).out == "second\n"; }));

  auto restarted = ctl({"-f", "cfg.json", "--json", "restart", "talker"});
  EXPECT_EQ(restarted.exit_code, 0) << restarted.err;
  auto body = nlohmann::json::parse(restarted.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_EQ(testutil::field(body, {"success"}), true);
  EXPECT_EQ(testutil::field(body, {"process", "name"}), "talker");

  auto stopped = ctl({"-f", "cfg.json", "stop", "1"});
  EXPECT_EQ(stopped.exit_code, 0) << stopped.err;
  EXPECT_THAT(stopped.out, ::testing::ContainsRegex("1 +db +terminated +stopped +code -15"));
  auto started = ctl({"-f", "cfg.json", "start", "db"});
  EXPECT_EQ(started.exit_code, 0) << started.err;
  EXPECT_THAT(started.out, ::testing::ContainsRegex("1 +db +running +ready +pid [0-9]+"));

  auto missing = ctl({"-f", "cfg.json", "restart", "9"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("no process with id 9 (HTTP 404)"));

  auto down = ctl({"-f", "cfg.json", "shutdown"});
  EXPECT_EQ(down.exit_code, 0) << down.err;
  EXPECT_EQ(down.out, "shutdown requested\n");
  EXPECT_EQ(manager->wait(15000ms).exit_code, 0);
  expect_all_gone("pids.txt");
  EXPECT_NE(::access((dir_ + "/cfg.json.pymanager-state").c_str(), F_OK), 0) << "the state file was not removed";
  auto after = ctl({"-f", "cfg.json", "list"});
  EXPECT_EQ(after.exit_code, 3);
  EXPECT_THAT(after.err, HasSubstr("no running pymanager found for cfg.json"));
}

TEST_F(Ctl, ListShowsTheDaemonsALauncherLeft) {
  // pg_ctl start in miniature: the launcher exits 0, its daemon lives on.
  auto manager = start_manager(R"("db": {"executable": "sh",
      "arguments": ["-c", "setsid sleep 1000 & echo $! >> pids.txt; exit 0"]})",
                               R"({"enabled": true, "port": 0})");
  ASSERT_TRUE(wait_until([&] { return pids_in("pids.txt").size() == 1; }));
  const pid_t daemon = pids_in("pids.txt").front();
  testutil::RunResult list;
  ASSERT_TRUE(wait_until([&] {
    list = ctl({"-f", "cfg.json", "list"});
    // Listed just before the launcher's exit is reported: wait for both.
    return list.out.find("[daemons: " + std::to_string(daemon) + "]") != std::string::npos &&
           list.out.find("daemonized") != std::string::npos;
  })) << list.out << list.err;
  EXPECT_THAT(list.out, ::testing::ContainsRegex("1 +db +terminated +daemonized +code 0 +sh -c .*  \\[daemons: " +
                                                 std::to_string(daemon) + "\\]"));
  EXPECT_EQ(ctl({"-f", "cfg.json", "shutdown"}).exit_code, 0);
  auto result = manager->wait(15000ms);
  EXPECT_EQ(result.exit_code, 0);
  expect_all_gone("pids.txt");
  // With -v: adopted, signalled with the process's stop signal, gone.
  const std::string pid = std::to_string(daemon);
  EXPECT_THAT(result.err, HasSubstr("process 'db' left daemon pid " + pid));
  EXPECT_THAT(result.err, ::testing::ContainsRegex("SIGTERM to 'db' [^\n]*\\(daemons " + pid + "\\)"));
  EXPECT_THAT(result.err, HasSubstr("daemon pid " + pid + " of 'db' is gone"));
}

TEST_F(Ctl, ListAndTheApiShowWhatAProcessIsWaitingForDuringTheStart) {
  // db is verified by a file the test creates when it has looked; api waits
  // for db. Both views are taken while the start is held there.
  testutil::write_file(dir_ + "/cfg.json", R"({"modules": {"pymanager.verifiers": {"verifiers": ["FileVerifier"]}},
    "keep-alive": true, "graceful-time": 2, "http": {"enabled": true, "port": 0}, "processes": {
    "db": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; exec sleep 1000"],
           "verifier": {"type": "pymanager.verifiers.FileVerifier",
                        "arguments": {"path": "db-ready", "timeout": 120, "interval": 0.05}}},
    "api": {"executable": "sh", "arguments": ["-c", "echo $$ >> pids.txt; echo $$ > api.pid; exec sleep 1000"],
            "depends_on": ["db"]}}})");
  auto manager = start({"-f", "cfg.json", "-v"});
  testutil::RunResult list;
  ASSERT_TRUE(wait_until([&] {
    // Until db is spawned it is "starting"; from then on the file holds it.
    list = ctl({"-f", "cfg.json", "list"});
    return list.exit_code == 0 && list.out.find("verifying") != std::string::npos;
  }, 30000ms)) << list.out << list.err << manager->err();
  EXPECT_THAT(list.out, ::testing::ContainsRegex("1 +db +running +verifying +pid [0-9]+ +sh -c .*\n"));
  EXPECT_THAT(list.out, ::testing::ContainsRegex("2 +api +[^\n]* waiting +[^\n]*  \\[waiting for: db\\]\n")) << list.out;

  const int api_port = api_port_from_state();
  ASSERT_GT(api_port, 0) << testutil::read_file(dir_ + "/cfg.json.pymanager-state");
  httplib::Client api("127.0.0.1", api_port);
  api.set_read_timeout(20, 0);
  // GET / and the process named `name` in it (null when absent).
  auto get_one = [&](const std::string& name) {
    auto r = api.Get("/");
    auto all = r && r->status == 200 ? nlohmann::json::parse(r->body, nullptr, false) : nlohmann::json();
    if (all.is_object() && all.contains("processes") && all["processes"].is_array()) {
      for (const auto& p : all["processes"]) {
        if (p.is_object() && p.value("name", "") == name) return p;
      }
    }
    return nlohmann::json();
  };
  auto api_json = get_one("api");
  EXPECT_EQ(testutil::field(api_json, {"state"}), "waiting") << api_json.dump();
  EXPECT_EQ(testutil::field(api_json, {"waiting_for"}), nlohmann::json::array({"db"})) << api_json.dump();
  auto db_json = get_one("db");
  EXPECT_EQ(testutil::field(db_json, {"state"}), "verifying") << db_json.dump();
  EXPECT_FALSE(db_json.contains("waiting_for")) << db_json.dump();
  EXPECT_NE(::access((dir_ + "/api.pid").c_str(), F_OK), 0) << "api started before db was verified";

  testutil::write_file(dir_ + "/db-ready", "");
  ASSERT_TRUE(manager->wait_for_output("all processes are up")) << manager->err();
  api_json = get_one("api");
  EXPECT_EQ(testutil::field(api_json, {"state"}), "ready") << api_json.dump();
  EXPECT_FALSE(api_json.contains("waiting_for")) << api_json.dump();
  list = ctl({"-f", "cfg.json", "list"});
  EXPECT_THAT(list.out, Not(HasSubstr("waiting for"))) << list.out;
  EXPECT_EQ(pids_in("api.pid").size(), 1u);

  EXPECT_EQ(ctl({"-f", "cfg.json", "shutdown"}).exit_code, 0);
  EXPECT_EQ(manager->wait(15000ms).exit_code, 0);
  expect_all_gone("pids.txt");
}

TEST_F(Ctl, ThePortsThatPlaceholdersBecameArePrintedListedAndServed) {
  // Each child writes the port it was given, in its argument and in its
  // environment; the binary, GET / and ctl list must all say the same.
  auto manager = start_manager(R"("web": {"executable": "sh",
      "arguments": ["-c", "echo $$ >> pids.txt; echo ${port:web} $PYMANAGER_PORT_WEB > web.port; exec sleep 1000"]},
    "db": {"executable": "sh",
      "arguments": ["-c", "echo $$ >> pids.txt; echo ${port:db} $PYMANAGER_PORT_DB > db.port; exec sleep 1000"]})",
                               R"({"enabled": true, "port": 0})");
  ASSERT_TRUE(wait_until([&] {
    return testutil::read_file(dir_ + "/web.port").size() > 2 && testutil::read_file(dir_ + "/db.port").size() > 2;
  }));
  auto port_of = [&](const std::string& name) {
    std::istringstream in(testutil::read_file(dir_ + "/" + name + ".port"));
    int argument = 0, environment = 0;
    in >> argument >> environment;
    EXPECT_EQ(argument, environment) << name;
    return argument;
  };
  const int web = port_of("web"), db = port_of("db");
  ASSERT_GT(web, 0);
  ASSERT_GT(db, 0);
  ASSERT_NE(web, db);
  const std::string line = "ports: db=" + std::to_string(db) + " web=" + std::to_string(web);
  EXPECT_THAT(manager->err(), HasSubstr("pymanager: " + line + "\n"));

  auto list = ctl({"-f", "cfg.json", "list"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_THAT(list.out, ::testing::EndsWith("\n" + line + "\n")) << list.out;
  auto json_list = ctl({"-f", "cfg.json", "--json", "list"});
  auto body = nlohmann::json::parse(json_list.out, nullptr, false);
  EXPECT_EQ(testutil::field(body, {"ports"}), (nlohmann::json{{"db", db}, {"web", web}})) << json_list.out;

  EXPECT_EQ(ctl({"-f", "cfg.json", "shutdown"}).exit_code, 0);
  EXPECT_EQ(manager->wait(15000ms).exit_code, 0);
  expect_all_gone("pids.txt");
}

// "By default, no additional output is displayed": an exit nobody asked
// about is printed only with process.exit in messages (or -v / -w).
TEST_F(Ctl, AnExitIsPrintedOnlyWhenProcessExitIsAskedFor) {
  for (const bool asked : {false, true}) {
    SCOPED_TRACE(asked ? "with process.exit" : "without process.exit");
    write_config(sleeper("db") + R"(, "q": {"executable": "sh", "arguments": ["-c", "echo bye; exit 47"]})",
                 std::string(R"("keep-alive": true, "http": {"enabled": true, "port": 0})") +
                     (asked ? R"(, "messages": ["process.exit"])" : ""));
    auto manager = start({"-f", "cfg.json"});
    ASSERT_TRUE(manager->wait_for_output("HTTP API on")) << manager->err();
    // The manager has handled the exit once the API reports its code.
    ASSERT_TRUE(wait_until([&] {
      auto list = ctl({"-f", "cfg.json", "list"});
      return list.out.find("code 47") != std::string::npos;
    }, 20000ms)) << manager->err();
    manager->signal(SIGTERM);
    auto result = manager->wait(15000ms);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_THAT(result.out, HasSubstr("q  | bye"));
    if (asked) {
      EXPECT_THAT(result.err, ::testing::ContainsRegex("process 'q' \\(pid [0-9]+\\) exited with code 47"));
    } else {
      EXPECT_THAT(result.err, Not(HasSubstr("'q'"))) << result.err;
      EXPECT_THAT(result.err, Not(HasSubstr("exited"))) << result.err;
    }
    expect_all_gone("pids.txt");
    ::unlink((dir_ + "/pids.txt").c_str());
  }
}

TEST_F(Ctl, AStaleStateFileIsReportedAsSuch) {
  write_config(sleeper("db"));
  // The pid of a process that has exited and been reaped.
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  int status;
  ::waitpid(dead, &status, 0);
  testutil::write_file(dir_ + "/cfg.json.pymanager-state",
                       "{\"pid\": " + std::to_string(dead) + ", \"url\": \"http://127.0.0.1:1\", \"token\": null}");
  auto result = ctl({"-f", "cfg.json", "status"});
  EXPECT_EQ(result.exit_code, 3);
  EXPECT_THAT(result.err, HasSubstr("stale state file cfg.json.pymanager-state: pid " + std::to_string(dead) + " is not running"));
}

// Another user who can write the config's folder must not be able to point
// ctl, and its token, at an address of theirs.
TEST_F(Ctl, AStateFileItCannotTrustIsRefusedAndGetsNoToken) {
  write_config(sleeper("db"));
  testutil::Listener attacker;
  const std::string state = dir_ + "/cfg.json.pymanager-state";
  const std::string planted = R"({"pid": 1, "url": "http://127.0.0.1:)" + std::to_string(attacker.port()) +
                              R"(", "token": "environment"})";
  auto refused = [&](const std::string& why) {
    auto result = ctl({"-f", "cfg.json", "status"}, {"PYMANAGER_TOKEN=secret"});
    EXPECT_EQ(result.exit_code, 3) << result.err;
    EXPECT_THAT(result.err, HasSubstr(why));
    EXPECT_FALSE(attacker.was_connected()) << "ctl connected to the address in an untrusted state file";
  };
  // pid 1 is always alive, but it does not listen there.
  testutil::write_file(state, planted);
  ::chmod(state.c_str(), 0644);
  refused("pid 1 does not listen on http://127.0.0.1:" + std::to_string(attacker.port()) + ": not trusted");
  // Writable by others.
  ::chmod(state.c_str(), 0666);
  refused("is writable by others (mode 0666): not trusted");
  // A symbolic link.
  ::unlink(state.c_str());
  testutil::write_file(dir_ + "/elsewhere", planted);
  ASSERT_EQ(::symlink((dir_ + "/elsewhere").c_str(), state.c_str()), 0);
  refused("is a symbolic link: not trusted");
  ::unlink(state.c_str());
  // Not a loopback address (0.0.0.0 would still reach this machine).
  testutil::write_file(state, R"({"pid": 1, "url": "http://0.0.0.0:)" + std::to_string(attacker.port()) + R"("})");
  ::chmod(state.c_str(), 0644);
  refused("which is not a loopback address: not trusted");
  // Another user's file: root can make one, where uid 65534 exists (not in
  // every sandbox's user namespace).
  testutil::write_file(state, planted);
  if (::chown(state.c_str(), 65534, 65534) == 0) {
    refused("belongs to uid 65534, not to you: not trusted");
  } else {
    std::cerr << "note: cannot chown to uid 65534 here (" << std::strerror(errno) << "): the owner check is not run\n";
  }
}

// The state file is never written through a link another user planted.
TEST_F(Ctl, TheStateFileIsNeverWrittenThroughAPlantedLink) {
  const std::string victim = dir_ + "/victim.txt";
  testutil::write_file(victim, "precious\n");
  ASSERT_EQ(::symlink(victim.c_str(), (dir_ + "/cfg.json.pymanager-state").c_str()), 0);
  auto manager = start_manager(sleeper("db"), R"({"enabled": true, "port": 0})");
  EXPECT_EQ(testutil::read_file(victim), "precious\n") << "the state was written through the link";
  struct stat st {};
  ASSERT_EQ(::lstat((dir_ + "/cfg.json.pymanager-state").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode)) << "the link was not replaced by the state file";
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  auto status = ctl({"-f", "cfg.json", "status"});
  EXPECT_EQ(status.out, "running\n") << status.err;
  manager->signal(SIGTERM);
  EXPECT_EQ(manager->wait(15000ms).exit_code, 0);
  EXPECT_EQ(testutil::read_file(victim), "precious\n");
}

TEST_F(Ctl, AnAnswerOfAnUnexpectedShapeIsReportedNotACrash) {
  // Something that answers JSON on `GET /`, but not pymanager's.
  int port = testutil::free_port();
  testutil::Child service({http_service_, "--port", std::to_string(port)}, dir_);
  ASSERT_TRUE(service.wait_for_output("listening on")) << service.err();
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  for (const char* command : {"list", "status"}) {
    SCOPED_TRACE(command);
    auto result = ctl({"--url", url, command});
    EXPECT_EQ(result.exit_code, 1) << result.err;
    EXPECT_THAT(result.err, HasSubstr("unexpected answer from " + url + " (HTTP "));
  }
  auto result = ctl({"--url", url, "output", "x"});
  EXPECT_EQ(result.exit_code, 1) << result.err;
}

TEST_F(Ctl, TheTokenComesFromWhereTheManagerTookIt) {
  // From the environment: the manager and ctl both have PYMANAGER_TOKEN.
  // The children do not inherit it: the token is for whoever drives pymanager.
  auto manager = start_manager(sleeper("db") + R"(, "nosy": {"executable": "sh", "arguments": ["-c",
      "echo \"token=[$PYMANAGER_TOKEN]\"; exec sleep 1000"]})", R"({"enabled": true, "port": 0})", {"PYMANAGER_TOKEN=from-env"});
  ASSERT_TRUE(manager->wait_for_output("nosy | token=[")) << manager->out();
  EXPECT_THAT(manager->out(), HasSubstr("nosy | token=[]\n"));
  EXPECT_THAT(testutil::read_file(dir_ + "/cfg.json.pymanager-state"), HasSubstr("\"token\": \"environment\""));
  auto without = ctl({"-f", "cfg.json", "status"});
  EXPECT_EQ(without.exit_code, 2);
  EXPECT_THAT(without.err, HasSubstr("takes its token from PYMANAGER_TOKEN"));
  auto wrong = ctl({"-f", "cfg.json", "status"}, {"PYMANAGER_TOKEN=nope"});
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_THAT(wrong.err, HasSubstr("HTTP 401"));
  auto right = ctl({"-f", "cfg.json", "status"}, {"PYMANAGER_TOKEN=from-env"});
  EXPECT_EQ(right.exit_code, 0) << right.err;
  EXPECT_EQ(right.out, "running\n");
  manager->signal(SIGTERM);
  EXPECT_EQ(manager->wait(15000ms).exit_code, 0);

  // From the config: ctl reads it there.
  auto second = start_manager(sleeper("db"), R"({"enabled": true, "port": 0, "token": "in-config"})");
  EXPECT_THAT(testutil::read_file(dir_ + "/cfg.json.pymanager-state"), HasSubstr("\"token\": \"config\""));
  EXPECT_THAT(testutil::read_file(dir_ + "/cfg.json.pymanager-state"), Not(HasSubstr("in-config")));
  auto list = ctl({"-f", "cfg.json", "list"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  // --url talks to an address directly (with PYMANAGER_TOKEN, here unset: 401).
  std::string state = testutil::read_file(dir_ + "/cfg.json.pymanager-state");
  std::string url = testutil::text(nlohmann::json::parse(state, nullptr, false), {"url"});
  auto direct = ctl({"--url", url, "status"});
  EXPECT_EQ(direct.exit_code, 1);
  EXPECT_THAT(direct.err, HasSubstr("HTTP 401"));
  auto direct_ok = ctl({"--url", url, "status"}, {"PYMANAGER_TOKEN=in-config"});
  EXPECT_EQ(direct_ok.out, "running\n");
  second->signal(SIGTERM);
  EXPECT_EQ(second->wait(15000ms).exit_code, 0);
}

TEST_F(Ctl, APortInUseFailsBeforeAnythingIsLaunched) {
  testutil::Listener listener;
  int taken = listener.port();
  write_config(R"("first": {"executable": "sh", "arguments": ["-c", "echo ran > ran.txt"]})",
               R"("http": {"enabled": true, "port": )" + std::to_string(taken) + "}");
  auto result = run({"-f", "cfg.json"});
  EXPECT_EQ(result.exit_code, 5);
  EXPECT_THAT(result.err, HasSubstr("cannot listen on 127.0.0.1:" + std::to_string(taken)));
  EXPECT_NE(::access((dir_ + "/ran.txt").c_str(), F_OK), 0) << "a process was launched although the API could not bind";
}

TEST_F(Ctl, UsageErrors) {
  EXPECT_EQ(ctl({}).exit_code, 2);
  auto unknown = ctl({"frobnicate"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_THAT(unknown.err, HasSubstr("unknown command 'frobnicate'"));
  EXPECT_EQ(ctl({"restart"}).exit_code, 2);
  auto help = ctl({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("output ID"));
}

}  // namespace
