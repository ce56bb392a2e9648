// The HTTP API with real HTTP on 127.0.0.1, over a Manager with real
// children: every endpoint, status code and error shape, the token, port 0,
// a port in use, restarts whose verifier fails, concurrent restarts, and a
// restart racing the shutdown.
#include <arpa/inet.h>
#include <poll.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <mutex>
#include <sstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pymanager/pymanager.hpp"
#include "tests/json_util.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
using nlohmann::json;
using testutil::wait_until;

const char* kModules = R"("modules": {
    "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]},
    "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}
  })";

/// A manager with the API on a free port, and a client for it.
class Api : public ::testing::Test {
 protected:
  void start(const std::string& processes, const std::string& extra = "\"keep-alive\": true",
             std::optional<std::string> token = std::nullopt) {
    dir_ = testutil::make_temp_dir();
    std::string text = std::string("{") + kModules + ", " + extra + ", \"processes\": {" + processes + "}}";
    auto config = pymanager::parse_config(nlohmann::ordered_json::parse(text), pymanager::builtin_verifiers());
    config.base_directory = dir_;
    pymanager::ManagerOptions options;
    null_fd_ = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    options.output_fd = null_fd_;
    options.log = [this](const std::string& line) { add_log(line); };
    manager_ = std::make_unique<pymanager::Manager>(config, options);
    pymanager::HttpApiOptions api_options;
    api_options.port = 0;
    api_options.token = token;
    api_options.limits = limits_;
    api_options.log = [this](const std::string& line) { add_log(line); };
    api_ = std::make_unique<pymanager::HttpApi>(*manager_, api_options);
    api_->start();
    manager_->start();
  }
  void TearDown() override {
    if (api_) api_->stop();
    manager_.reset();
    if (null_fd_ >= 0) ::close(null_fd_);
  }

  void add_log(const std::string& line) {
    std::lock_guard<std::mutex> lock(log_mutex_);
    log_ += line + "\n";
  }
  std::string log() {
    std::lock_guard<std::mutex> lock(log_mutex_);
    return log_;
  }

  httplib::Client client(std::chrono::seconds timeout = 60s) {
    httplib::Client c("127.0.0.1", api_->port());
    c.set_read_timeout(timeout);
    return c;
  }

  /// Sends a request; returns {status, parsed body}. Fails the test on no
  /// answer within `timeout`.
  std::pair<int, json> call(const std::string& method, const std::string& path, const httplib::Headers& headers = {},
                            std::chrono::seconds timeout = 60s) {
    auto c = client(timeout);
    httplib::Result r = method == "GET"      ? c.Get(path.c_str(), headers)
                        : method == "POST"   ? c.Post(path.c_str(), headers, "", "application/json")
                        : method == "DELETE" ? c.Delete(path.c_str(), headers)
                        : method == "PUT"    ? c.Put(path.c_str(), headers, "", "application/json")
                                             : c.Patch(path.c_str(), headers, "", "application/json");
    if (!r) {
      ADD_FAILURE() << method << " " << path << ": no answer (" << httplib::to_string(r.error()) << ")";
      return {0, json()};
    }
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json") << method << " " << path;
    // A body that is not JSON is a failure below, not an exception here.
    return {r->status, json::parse(r->body, nullptr, /*allow_exceptions=*/false)};
  }

  static void expect_error(const std::pair<int, json>& result, int status, const std::string& fragment) {
    EXPECT_EQ(result.first, status) << result.second.dump();
    EXPECT_EQ(testutil::field(result.second, {"success"}), false) << result.second.dump();
    EXPECT_THAT(testutil::text(result.second, {"error", "message"}), HasSubstr(fragment));
  }

  /// Sends `text` as it is over a new connection to the API and returns what
  /// comes back: the headers only, or everything until the server closes
  /// (each read bounded by `timeout_s`).
  std::string raw_request(const std::string& text, bool until_headers, int timeout_s) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(api_->port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string answer;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::send(fd, text.data(), text.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(text.size())) {
      ADD_FAILURE() << "cannot send a request to port " << api_->port();
      ::close(fd);
      return answer;
    }
    timeval timeout{timeout_s, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    char buffer[4096];
    for (ssize_t n; !(until_headers && answer.find("\r\n\r\n") != std::string::npos) &&
                    (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) {
      answer.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return answer;
  }

  std::string service(const std::string& name, int port, const std::string& extra_args = "") {
    return "\"" + name + "\": {\"executable\": \"" + testutil::runfile("tests/helpers/http_service") +
           "\", \"arguments\": [\"--port\", \"" + std::to_string(port) + "\"" + extra_args +
           "], \"verifier\": {\"type\": \"pymutils.http_verifier.HttpOkVerifier\", \"arguments\": "
           "{\"url\": \"http://127.0.0.1:" + std::to_string(port) + "/health\", \"timeout\": 20}}}";
  }

  /// A connected socket to the API that sends nothing (an idle client).
  int connect_raw() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(api_->port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  /// `n` connections that send nothing (-1 for one that failed).
  std::vector<int> connect_idle(int n) {
    std::vector<int> fds;
    for (int i = 0; i < n; ++i) fds.push_back(connect_raw());
    return fds;
  }

  /// True once the server has closed `fd` (EOF or reset), within `timeout`.
  static bool closed_by_server(int fd, std::chrono::milliseconds timeout) {
    struct pollfd p = {fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
    char c;
    return ::recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
  }

  pymanager::detail::HttpLimits limits_;
  std::string dir_;
  int null_fd_ = -1;
  std::unique_ptr<pymanager::Manager> manager_;
  std::unique_ptr<pymanager::HttpApi> api_;
  std::mutex log_mutex_;
  std::string log_;
};

TEST_F(Api, ListAndStatusHaveTheOriginalShapes) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]},
           "once": {"executable": "sh", "arguments": ["-c", "exit 3"],
                    "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"expect_code": 3}}})");
  EXPECT_THAT(log(), HasSubstr("HTTP API on http://127.0.0.1:" + std::to_string(api_->port()) + "\n"));
  auto [status, body] = call("GET", "/");
  ASSERT_EQ(status, 200);
  auto processes = manager_->processes();
  json expected = {{"count", 2},
                   {"processes",
                    {{{"id", 1}, {"name", "web"}, {"command", "sleep 1000"}, {"status", "running"}, {"pid", processes[0].pid},
                      {"state", "ready"}, {"daemons", json::array()}},
                     {{"id", 2}, {"name", "once"}, {"command", "sh -c exit 3"}, {"status", "terminated"}, {"code", 3},
                      {"state", "exited"}, {"daemons", json::array()}}}},
                   {"ports", json::object()}};  // none: no ${port:NAME} in this config
  EXPECT_EQ(body, expected);
  EXPECT_EQ(call("GET", "/status"), std::make_pair(200, json{{"status", "running"}}));
  auto one = call("GET", "/processes/web");
  EXPECT_EQ(one.first, 200);
  EXPECT_EQ(testutil::field(one.second, {"process"}), expected["processes"][0]);
  EXPECT_EQ(testutil::field(call("GET", "/processes/2").second, {"process"}), expected["processes"][1]);
}

TEST_F(Api, IdsAreNumbersOrNamesAndBadOnesGetTheOriginalErrors) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  expect_error(call("POST", "/restart/7"), 404, "no process with id 7");
  expect_error(call("POST", "/restart/0"), 404, "no process with id 0");
  // An unknown name is 404 on every endpoint that takes an id.
  expect_error(call("POST", "/restart/abc"), 404, "no process named 'abc'");
  expect_error(call("POST", "/stop/abc"), 404, "no process named 'abc'");
  expect_error(call("POST", "/start/abc"), 404, "no process named 'abc'");
  expect_error(call("GET", "/processes/nope"), 404, "no process named 'nope'");
  expect_error(call("GET", "/processes/nope/output"), 404, "no process named 'nope'");
  // What can be neither a number nor a name stays 400, as in the seed.
  expect_error(call("POST", "/restart/-1"), 400, "invalid process id '-1'");
  expect_error(call("POST", "/stop/+1"), 400, "invalid process id '+1'");
  expect_error(call("GET", "/processes/12345678901"), 400, "invalid process id '12345678901'");
  expect_error(call("GET", "/processes/we%01b"), 400, "invalid process id 'we\\x01b'");
  expect_error(call("GET", "/processes/%00"), 400, "invalid process id '\\x00': not a number");
  expect_error(call("GET", "/processes/5/output"), 404, "no process with id 5");
  EXPECT_EQ(call("GET", "/processes/web").first, 200);
}

TEST_F(Api, AProcessNamedWithDigitsIsReachedByItsNameWhenNoProcessHasThatNumber) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]},
           "123": {"executable": "sleep", "arguments": ["1000"]})");
  EXPECT_EQ(testutil::field(call("GET", "/processes/123").second, {"process", "name"}), "123");
  EXPECT_EQ(testutil::field(call("GET", "/processes/2").second, {"process", "name"}), "123");
  EXPECT_EQ(testutil::field(call("GET", "/processes/001").second, {"process", "name"}), "web");  // a number, as in the seed
  expect_error(call("GET", "/processes/124"), 404, "no process with id 124");
}

TEST_F(Api, RestartAnswersAfterTheVerifierPassedWithTheNewPid) {
  int port = testutil::free_port();
  start(service("web", port, R"(, "--delay-ms", "200")"));
  pid_t before = manager_->processes()[0].pid;
  auto [status, body] = call("POST", "/restart/web");
  ASSERT_EQ(status, 200) << body.dump();
  EXPECT_EQ(testutil::field(body, {"success"}), true);
  EXPECT_EQ(testutil::field(body, {"process", "status"}), "running");
  EXPECT_NE(testutil::field(body, {"process", "pid"}), before);
  EXPECT_EQ(testutil::field(body, {"process", "pid"}), manager_->processes()[0].pid);
  EXPECT_FALSE(testutil::group_alive(before));
  // Verified before the answer: the service (which binds 200 ms after its
  // start) answers at once.
  auto health = httplib::Client("127.0.0.1", port).Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

TEST_F(Api, ARestartWhoseVerifierFailsSaysSoAndShowsTheProcessAsItIs) {
  // Passes its verifier the first time; after a restart it exits 2.
  start(R"("step": {"executable": "sh", "arguments": ["-c", "if [ -f ran ]; then echo 'second run fails' >&2; exit 2; fi; touch ran"],
                    "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}})");
  auto [status, body] = call("POST", "/restart/1");
  EXPECT_EQ(status, 500);
  EXPECT_EQ(testutil::field(body, {"success"}), false);
  std::string message = testutil::text(body, {"error", "message"});
  EXPECT_THAT(message, HasSubstr("process 'step': verifier pymutils.exited_verifier.ExitedVerifier failed"));
  EXPECT_THAT(message, HasSubstr("exited with exit code 2"));
  EXPECT_THAT(message, HasSubstr("second run fails"));
  EXPECT_EQ(testutil::field(body, {"process", "status"}), "terminated");
  EXPECT_EQ(testutil::field(body, {"process", "code"}), 2);
}

TEST_F(Api, StopAndStartOneProcess) {
  start(R"("web": {"executable": "sh", "arguments": ["-c", "echo started; exec sleep 1000"]},
           "other": {"executable": "sleep", "arguments": ["1000"]})");
  pid_t first = manager_->processes()[0].pid;
  auto stopped = call("POST", "/stop/web");
  ASSERT_EQ(stopped.first, 200) << stopped.second.dump();
  EXPECT_EQ(testutil::field(stopped.second, {"process"}), (json{{"id", 1}, {"name", "web"}, {"command", "sh -c echo started; exec sleep 1000"},
                                            {"status", "terminated"}, {"code", -SIGTERM},
                                            {"state", "stopped"}, {"daemons", json::array()}}));
  EXPECT_FALSE(testutil::group_alive(first));
  EXPECT_TRUE(manager_->processes()[1].running) << "stopping one process stopped another";
  EXPECT_FALSE(manager_->shutdown_begun());
  auto started = call("POST", "/start/web");
  ASSERT_EQ(started.first, 200) << started.second.dump();
  EXPECT_EQ(testutil::field(started.second, {"process", "status"}), "running");
  EXPECT_NE(testutil::field(started.second, {"process", "pid"}), first);
}

TEST_F(Api, OutputReturnsTheLastLines) {
  start(R"("talker": {"executable": "sh", "arguments": ["-c", "for i in 1 2 3 4 5; do echo line $i; done; exec sleep 1000"]})");
  ASSERT_TRUE(wait_until([&] { return manager_->output_tail(0, 1) == std::vector<std::string>{"line 5"}; }));
  auto [status, body] = call("GET", "/processes/talker/output?lines=2");
  ASSERT_EQ(status, 200);
  EXPECT_EQ(testutil::field(body, {"lines"}), (json{"line 4", "line 5"}));
  EXPECT_EQ(testutil::field(body, {"process", "name"}), "talker");
  EXPECT_EQ(testutil::field(call("GET", "/processes/1/output").second, {"lines"}).size(), 5u);
  expect_error(call("GET", "/processes/1/output?lines=many"), 400, "lines must be a non-negative integer");
}

TEST_F(Api, DeleteShutsDownAsynchronouslyAndLaterRequestsAreRefused) {
  // "stubborn" ignores SIGTERM and the graceful time is long: the shutdown
  // cannot finish before the test forces it.
  start(R"("stubborn": {"executable": "sh", "arguments": ["-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]})",
        R"("keep-alive": true, "graceful-time": 600)");
  ASSERT_TRUE(wait_until([&] { return manager_->output_tail(0, 1) == std::vector<std::string>{"ready"}; }));
  pid_t pid = manager_->processes()[0].pid;
  EXPECT_EQ(call("DELETE", "/"), std::make_pair(200, json{{"success", true}}));
  // The answer came while the process still runs: the shutdown is asynchronous.
  EXPECT_TRUE(manager_->shutdown_begun());
  EXPECT_FALSE(manager_->finished());
  EXPECT_TRUE(testutil::group_alive(pid));
  expect_error(call("GET", "/"), 403, "shutdown");
  expect_error(call("POST", "/restart/1"), 403, "shutdown");
  expect_error(call("POST", "/start/1"), 403, "shutdown");
  expect_error(call("DELETE", "/"), 403, "shutdown");
  EXPECT_EQ(call("GET", "/status").second, (json{{"status", "shutdown"}}));
  manager_->shutdown(/*force=*/true);
  ASSERT_TRUE(manager_->wait_finished(30s));
  EXPECT_EQ(call("GET", "/status").second, (json{{"status", "force shutdown"}}));
  EXPECT_FALSE(testutil::group_alive(pid));
}

TEST_F(Api, UnknownRoutesAre404AndWrongMethods405InJson) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  expect_error(call("GET", "/nope"), 404, "no such endpoint: GET /nope");
  expect_error(call("GET", "/restart/1/extra"), 404, "no such endpoint");
  auto wrong = call("PUT", "/");
  expect_error(wrong, 405, "method PUT not allowed on / (allowed: GET, DELETE)");
  expect_error(call("GET", "/restart/1"), 405, "allowed: POST");
  expect_error(call("DELETE", "/status"), 405, "allowed: GET");
  auto c = client();
  auto r = c.Put("/", "", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->get_header_value("Allow"), "GET, DELETE");
}

TEST_F(Api, MalformedRequestsNeverCrashTheManager) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  for (const std::string& raw : {std::string("GARBAGE\r\n\r\n"), std::string("GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n"),
                                std::string("\x01\x02\x03\r\n\r\n"), std::string(20000, 'A') + "\r\n\r\n",
                                std::string("POST /restart/1 HTTP/1.1\r\nHost: x\r\n\r\n")}) {
    std::string answer = raw_request(raw, /*until_headers=*/true, 5);
    // An answer, if any, is well-formed HTTP (the parser may also just close).
    if (!answer.empty()) {
      EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 ")) << raw.substr(0, 40);
    }
  }
  EXPECT_EQ(call("GET", "/status"), std::make_pair(200, json{{"status", "running"}}));
  EXPECT_TRUE(manager_->processes()[0].running);
}

TEST_F(Api, TokenIsRequiredWhenSetAndA401ChangesNothing) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})", "\"keep-alive\": true", std::string("s3cret"));
  expect_error(call("GET", "/"), 401, "token");
  expect_error(call("DELETE", "/"), 401, "token");
  expect_error(call("DELETE", "/", {{"Authorization", "Bearer wrong"}}), 401, "token");
  expect_error(call("DELETE", "/", {{"Authorization", "s3cret"}}), 401, "token");
  EXPECT_FALSE(manager_->shutdown_begun()) << "a request without the token shut the manager down";
  expect_error(call("DELETE", "/", {{"Authorization", "Bearer s3cret2"}}), 401, "token");
  expect_error(call("DELETE", "/", {{"Authorization", "Bearers3cret"}}), 401, "token");
  EXPECT_EQ(call("GET", "/status", {{"Authorization", "Bearer s3cret"}}).first, 200);
  // The scheme is case-insensitive (RFC 7235); the token is not.
  EXPECT_EQ(call("GET", "/status", {{"Authorization", "bearer s3cret"}}).first, 200);
  EXPECT_EQ(call("GET", "/status", {{"Authorization", "BEARER  s3cret"}}).first, 200);
  expect_error(call("GET", "/status", {{"Authorization", "Bearer S3CRET"}}), 401, "token");
  EXPECT_EQ(call("DELETE", "/", {{"Authorization", "Bearer s3cret"}}).first, 200);
  EXPECT_TRUE(manager_->wait_finished(10s));
}

TEST_F(Api, APortInUseIsAnErrorNamingThePort) {
  testutil::Listener listener;
  int taken = listener.port();
  auto config = pymanager::parse_config(nlohmann::ordered_json::parse(R"({"processes": {"x": {"executable": "true", "arguments": []}}})"),
                                        pymanager::builtin_verifiers());
  pymanager::Manager manager(config);
  pymanager::HttpApiOptions options;
  options.port = taken;
  pymanager::HttpApi api(manager, options);
  try {
    api.start();
    FAIL() << "start() should have thrown";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot listen on 127.0.0.1:" + std::to_string(taken)));
    EXPECT_THAT(e.what(), HasSubstr("Address already in use"));
  }
  EXPECT_FALSE(pymanager::is_loopback_host("0.0.0.0"));
  EXPECT_TRUE(pymanager::is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(pymanager::is_loopback_host("::1"));
}

TEST_F(Api, ConcurrentRestartsOfOneProcessRunOneAfterTheOther) {
  int port = testutil::free_port();
  start(service("web", port, R"(, "--delay-ms", "100")"));
  pid_t original = manager_->processes()[0].pid;
  auto restart = [&] { return call("POST", "/restart/web"); };
  auto a = std::async(std::launch::async, restart);
  auto b = std::async(std::launch::async, restart);
  auto ra = a.get();
  auto rb = b.get();
  ASSERT_EQ(ra.first, 200) << ra.second.dump();
  ASSERT_EQ(rb.first, 200) << rb.second.dump();
  pid_t pa = static_cast<pid_t>(testutil::integer(ra.second, {"process", "pid"}));
  pid_t pb = static_cast<pid_t>(testutil::integer(rb.second, {"process", "pid"}));
  EXPECT_NE(pa, pb);
  EXPECT_NE(pa, original);
  // One ran after the other: the earlier one's process is gone, the later one runs.
  pid_t last = manager_->processes()[0].pid;
  EXPECT_TRUE(last == pa || last == pb);
  EXPECT_FALSE(testutil::group_alive(last == pa ? pb : pa));
  EXPECT_TRUE(testutil::pid_alive(last));
  EXPECT_EQ(manager_->processes()[0].restarts, 2);
}

TEST_F(Api, ARestartRacingTheShutdownEndsInTheShutdown) {
  int port = testutil::free_port();
  start(service("web", port, R"(, "--delay-ms", "300")"));
  std::vector<pid_t> seen{manager_->processes()[0].pid};
  auto restart = std::async(std::launch::async, [&] { return call("POST", "/restart/web"); });
  // The restart is under way (its new process is starting) when the shutdown comes.
  ASSERT_TRUE(wait_until([&] {
    auto p = manager_->processes()[0];
    return p.restarts == 1 || !p.running;
  }));
  EXPECT_EQ(call("DELETE", "/").first, 200);
  auto answer = restart.get();
  EXPECT_TRUE(answer.first == 403 || answer.first == 500 || answer.first == 200) << answer.second.dump();
  ASSERT_TRUE(manager_->wait_finished(10s));
  seen.push_back(manager_->processes()[0].pid);
  for (pid_t p : seen) EXPECT_FALSE(testutil::group_alive(p)) << "process group " << p << " left behind";
  EXPECT_FALSE(httplib::Client("127.0.0.1", port).Get("/health"));
}

}  // namespace

namespace {

TEST_F(Api, WithoutKeepAliveARestartOfTheOnlyProcessDoesNotEndTheManagerButAStopDoes) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})", R"("keep-alive": false)");
  auto restarted = call("POST", "/restart/web");
  EXPECT_EQ(restarted.first, 200) << restarted.second.dump();
  EXPECT_FALSE(manager_->shutdown_begun()) << log();
  EXPECT_TRUE(manager_->processes()[0].running);
  // Stopping the last running process is "all processes have terminated":
  // a manager without keep-alive then ends, as the original did.
  auto stopped = call("POST", "/stop/web");
  EXPECT_EQ(stopped.first, 200) << stopped.second.dump();
  EXPECT_TRUE(manager_->wait_finished(10s));
}

TEST_F(Api, ABarePostWithoutContentLengthIsServed) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  pid_t before = manager_->processes()[0].pid;
  // What `curl -X POST http://.../restart/1` sends: no Content-Length.
  std::string answer = raw_request("POST /restart/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                                   /*until_headers=*/false, 20);
  EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(answer, HasSubstr("\"success\":true"));
  EXPECT_NE(manager_->processes()[0].pid, before);
}

TEST_F(Api, StopStartAndRestartAre409WhileTheProcessesAreStillLaunching) {
  dir_ = testutil::make_temp_dir();
  // "slow" holds start() in its verifier until the test creates the file "go".
  auto config = pymanager::parse_config(nlohmann::ordered_json::parse(std::string("{") + kModules + R"(,
    "keep-alive": true, "processes": {
      "slow": {"executable": "sh", "arguments": ["-c", "while [ ! -e go ]; do sleep 0.01; done"],
               "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"timeout": 600}}},
      "web": {"executable": "sleep", "arguments": ["1000"]}}})"),
                                        pymanager::builtin_verifiers());
  config.base_directory = dir_;
  pymanager::ManagerOptions options;
  options.log = [this](const std::string& line) { add_log(line); };
  manager_ = std::make_unique<pymanager::Manager>(config, options);
  pymanager::HttpApiOptions api_options;
  api_options.port = 0;
  api_ = std::make_unique<pymanager::HttpApi>(*manager_, api_options);
  api_->start();
  auto starting = std::async(std::launch::async, [&] { manager_->start(); });
  ASSERT_TRUE(wait_until([&] { return manager_->processes()[0].running; }));
  expect_error(call("POST", "/start/web"), 409, "cannot start process 'web': the processes are still being launched");
  expect_error(call("POST", "/restart/slow"), 409, "still being launched");
  expect_error(call("POST", "/stop/slow"), 409, "still being launched");
  EXPECT_EQ(manager_->state(), pymanager::ManagerState::launching);
  testutil::write_file(dir_ + "/go", "");
  ASSERT_EQ(starting.wait_for(60s), std::future_status::ready);
  starting.get();
  auto web = manager_->processes()[1];
  EXPECT_TRUE(web.running);
  EXPECT_EQ(web.restarts, 0);
}

}  // namespace

namespace {

TEST_F(Api, ASecondApiOnTheSamePortFailsInsteadOfSharingIt) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  pymanager::HttpApiOptions options;
  options.port = api_->port();
  pymanager::HttpApi second(*manager_, options);
  try {
    second.start();
    FAIL() << "a second API bound port " << api_->port() << " that the first one serves";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot listen on 127.0.0.1:" + std::to_string(api_->port())));
  }
}

}  // namespace

namespace {

// ---------------------------------------------------------------------------
// A hostile or careless client never stalls the API (issue: eight idle
// connections stalled every request for 5 s, 500 stopped the API).

TEST_F(Api, IdleConnectionsNeverStallARead) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  std::vector<int> idle = connect_idle(64);
  ASSERT_EQ(std::count(idle.begin(), idle.end(), -1), 0);
  // Served at once, next to 64 connections that say nothing (the bound is
  // generous: the benchmark measures; idle connections used to hold every
  // worker for 5 s).
  auto answer = call("GET", "/", {}, 3s);
  EXPECT_EQ(answer.first, 200);
  EXPECT_EQ(testutil::integer(answer.second, {"count"}), 1);
  for (int fd : idle) ::close(fd);
}

TEST_F(Api, IdleConnectionsAreClosedAndTheirNumberIsBounded) {
  limits_.max_connections = 16;
  limits_.idle_timeout = 300ms;
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  // Three times the bound: the extra ones wait in the kernel's backlog and
  // are served once the idle ones are closed.
  std::vector<int> idle = connect_idle(48);
  ASSERT_EQ(std::count(idle.begin(), idle.end(), -1), 0);
  auto answer = call("GET", "/status");
  EXPECT_EQ(answer.first, 200) << answer.second.dump();
  for (int fd : idle) {
    EXPECT_TRUE(closed_by_server(fd, 20000ms)) << "an idle connection was kept open";
    ::close(fd);
  }
}

TEST_F(Api, AStatusReadIsServedWhileSlowRestartsRun) {
  // Each process takes its time over SIGTERM: until the test creates "go".
  std::string processes;
  for (int i = 0; i < 12; ++i) {
    processes += std::string(i ? ", " : "") + "\"p" + std::to_string(i) +
                 R"(": {"executable": "sh", "arguments": ["-c", "trap 'while [ ! -e go ]; do sleep 0.01; done; exit 0' TERM; echo $$ >> trapped; while :; do sleep 0.05; done"]})";
  }
  start(processes, R"("keep-alive": true, "restart-graceful-time": 600)");
  // A SIGTERM before the trap is set would end a process at once.
  ASSERT_TRUE(wait_until([&] {
    std::istringstream in(testutil::read_file(dir_ + "/trapped"));
    return std::distance(std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()) == 12;
  }));
  std::vector<std::future<std::pair<int, json>>> restarts;
  for (int i = 0; i < 12; ++i) {
    restarts.push_back(std::async(std::launch::async, [this, i] { return call("POST", "/restart/p" + std::to_string(i)); }));
  }
  // Every restart is under way: each process has its SIGTERM.
  ASSERT_TRUE(wait_until([&] {
    auto list = manager_->processes();
    const std::string text = log();
    for (int i = 0; i < 12; ++i) {
      if (text.find("restart of process 'p" + std::to_string(i) + "'") == std::string::npos) return false;
    }
    return std::all_of(list.begin(), list.end(), [](const auto& p) { return p.running; });
  }));
  auto answer = call("GET", "/");
  EXPECT_EQ(answer.first, 200);
  EXPECT_EQ(call("GET", "/status").first, 200);
  for (auto& r : restarts) {
    const bool ended = r.wait_for(0s) == std::future_status::ready;
    EXPECT_FALSE(ended) << "a restart ended before the test let it: " << (ended ? r.get().second.dump() : "");
  }
  testutil::write_file(dir_ + "/go", "");
  for (auto& r : restarts) {
    ASSERT_EQ(r.wait_for(60s), std::future_status::ready);
    EXPECT_EQ(r.get().first, 200);
  }
}

TEST_F(Api, OversizedRequestsAreRefusedInJsonBeforeTheyAreReadWhole) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  auto expect_refused = [&](const std::string& raw, const char* status, const char* message) {
    std::string answer = raw_request(raw, /*until_headers=*/false, 10);
    EXPECT_THAT(answer, ::testing::StartsWith(std::string("HTTP/1.1 ") + status)) << answer.substr(0, 200);
    EXPECT_THAT(answer, HasSubstr("\"success\":false"));
    EXPECT_THAT(answer, HasSubstr(message));
    EXPECT_THAT(answer, HasSubstr("Content-Type: application/json"));
  };
  expect_refused("GET /" + std::string(100000, 'a') + " HTTP/1.1\r\n\r\n", "414", "request line longer than 8192 bytes");
  std::string many = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  for (int i = 0; i < 200; ++i) many += "X-" + std::to_string(i) + ": 1\r\n";
  expect_refused(many + "\r\n", "431", "more than 64 request headers");
  expect_refused("GET / HTTP/1.1\r\nX-Big: " + std::string(100000, 'b') + "\r\n\r\n", "431",
                 "request headers larger than 16384 bytes");
  expect_refused("POST /stop/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\n", "413",
                 "request body larger than 65536 bytes");
  // The refusal reaches a client that is still sending its body (the rest
  // is read and dropped for a while instead of the connection being reset).
  expect_refused("POST /stop/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n" +
                     std::string(200000, 'x'),
                 "413", "request body larger than 65536 bytes");
  // A request line without end: the server answers and closes long before
  // 64 MB have been sent, so it never holds them.
  int fd = connect_raw();
  ASSERT_GE(fd, 0);
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  std::string chunk = "GET /" + std::string(1 << 20, 'c');
  std::size_t sent = 0;
  while (sent < (64u << 20)) {
    ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<std::size_t>(n);
  }
  EXPECT_LT(sent, 64u << 20) << "the server kept reading an endless request line";
  ::close(fd);
  EXPECT_TRUE(manager_->processes()[0].running);
  EXPECT_EQ(call("GET", "/status").first, 200);
}

TEST_F(Api, ARequestThatNeverCompletesIsAnsweredWith408) {
  limits_.request_timeout = 300ms;
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  std::string answer = raw_request("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", /*until_headers=*/false, 20);
  EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 408")) << answer;
}

TEST_F(Api, BytesThatAreNotUtf8NeverBreakAnAnswer) {
  // The tail holds a 0xFF byte, and a line of two-byte characters longer
  // than the 4096 bytes kept of a line.
  std::string long_line;
  for (int i = 0; i < 3000; ++i) long_line += "\u00e9";
  start(R"("talker": {"executable": "printf", "arguments": ["bad \\377 byte\n)" + long_line + R"(\n"]},
           "web": {"executable": "sleep", "arguments": ["1000"]})");
  ASSERT_TRUE(wait_until([&] { return manager_->output_tail(0, 2).size() == 2; }));
  auto [status, body] = call("GET", "/processes/talker/output");
  ASSERT_EQ(status, 200) << body.dump();
  auto lines = testutil::field(body, {"lines"});
  ASSERT_TRUE(lines.is_array() && lines.size() == 2) << body.dump();
  EXPECT_EQ(lines[0], "bad \xEF\xBF\xBD byte");  // U+FFFD
  std::string kept = lines[1].get<std::string>();
  EXPECT_EQ(kept.size(), 4096u + 3) << "cut inside a character, or not at the limit";
  EXPECT_EQ(kept.substr(kept.size() - 3), "...");
  EXPECT_EQ(kept.substr(0, 4), "\xC3\xA9\xC3\xA9");
  // Ids that are not UTF-8: 400 and 404, never 500.
  expect_error(call("GET", "/processes/%FF"), 400, "invalid process id '\xEF\xBF\xBD'");
  expect_error(call("GET", "/%FF%FE"), 404, "no such endpoint");
}

TEST_F(Api, RequestsFromWebPagesAndForeignHostsAreRefused) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]},
           "b": {"executable": "sleep", "arguments": ["1000"]})");
  const std::string port = std::to_string(api_->port());
  // A browser's "simple" POST from any web page.
  std::string answer = raw_request("POST /stop/b HTTP/1.1\r\nHost: 127.0.0.1:" + port +
                                       "\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n"
                                       "Content-Length: 0\r\nConnection: close\r\n\r\n",
                                   /*until_headers=*/false, 10);
  EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 403")) << answer;
  EXPECT_THAT(answer, HasSubstr("requests from the web page at 'http://evil.example' are not accepted"));
  EXPECT_TRUE(manager_->processes()[1].running) << "a web page stopped a process";
  // DNS rebinding: the browser names the attacker's host.
  answer = raw_request("GET / HTTP/1.1\r\nHost: evil.example:" + port + "\r\nConnection: close\r\n\r\n", false, 10);
  EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 403")) << answer;
  EXPECT_THAT(answer, HasSubstr("Host 'evil.example:" + port + "' is not this API's address"));
  // A page on http://localhost (port 80) is another origin.
  answer = raw_request("POST /stop/b HTTP/1.1\r\nHost: 127.0.0.1:" + port +
                           "\r\nOrigin: http://localhost\r\nConnection: close\r\n\r\n", false, 10);
  EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 403")) << answer;
  EXPECT_TRUE(manager_->processes()[1].running);
  // A name that merely starts with 127.
  answer = raw_request("GET / HTTP/1.1\r\nHost: 127.0.0.1.evil.example:" + port + "\r\nConnection: close\r\n\r\n",
                       false, 10);
  EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 403")) << answer;
  // HTTP/1.1 without a Host at all.
  answer = raw_request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false, 10);
  EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 403")) << answer;
  // Its own names are fine, and so is a page served by the API's own origin.
  for (const std::string& host : {"127.0.0.1:" + port, "localhost:" + port, std::string("LOCALHOST"), "[::1]:" + port}) {
    answer = raw_request("GET /status HTTP/1.1\r\nHost: " + host + "\r\nOrigin: http://localhost:" + port +
                             "\r\nConnection: close\r\n\r\n",
                         false, 10);
    EXPECT_THAT(answer, ::testing::StartsWith("HTTP/1.1 200")) << host << ": " << answer;
  }
}

TEST_F(Api, AKeepAliveConnectionServesManyRequests) {
  start(R"("web": {"executable": "sleep", "arguments": ["1000"]})");
  httplib::Client client("127.0.0.1", api_->port());
  client.set_keep_alive(true);
  for (int i = 0; i < 200; ++i) {
    auto r = client.Get("/status");
    ASSERT_TRUE(r) << "request " << i;
    EXPECT_EQ(r->status, 200);
  }
  // Pipelined: two requests in one write, two answers.
  std::string both = raw_request("GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                 "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                                 /*until_headers=*/false, 10);
  EXPECT_EQ(std::count(both.begin(), both.end(), '{'), 2) << both;
}

}  // namespace

namespace {

TEST_F(Api, ANameWithASlashIsOneId) {
  start(R"("web/main": {"executable": "sleep", "arguments": ["1000"]})");
  auto answer = call("GET", "/processes/web%2Fmain");
  EXPECT_EQ(answer.first, 200) << answer.second.dump();
  EXPECT_EQ(testutil::text(answer.second, {"process", "name"}), "web/main");
}

}  // namespace

namespace {

TEST_F(Api, ARestartUsesTheProcessOwnGracefulTime) {
  // It ignores SIGTERM: with the top-level restart-graceful-time of two
  // minutes the restart would take that long; its own 0.3 s applies.
  start(R"("stubborn": {"executable": "sh", "arguments": ["-c", "trap '' TERM; while :; do sleep 1; done"],
                        "options": {"graceful_time": 0.3}})",
        R"("keep-alive": true, "restart_graceful_time": 120)");
  const pid_t first = manager_->processes()[0].pid;
  const auto began = std::chrono::steady_clock::now();
  auto restarted = call("POST", "/restart/stubborn");
  ASSERT_EQ(restarted.first, 200) << restarted.second.dump();
  EXPECT_LT(std::chrono::steady_clock::now() - began, 60s);
  EXPECT_NE(testutil::integer(restarted.second, {"process", "pid"}), first);
  EXPECT_FALSE(testutil::group_alive(first));
}

}  // namespace

namespace {

TEST_F(Api, ADaemonizedProcessShowsItsStateAndDaemons) {
  const std::string stamp = testutil::runfile("tests/helpers/stamp_service");
  start("\"db\": {\"executable\": \"" + stamp + "\", \"arguments\": [\"--stamp\", \"stamps\", \"--daemonize\"]}");
  // The daemon is listed just before its launcher's exit is reported: wait for both.
  ASSERT_TRUE(testutil::wait_until([&] {
    auto db = manager_->processes()[0];
    return !db.daemons.empty() && db.state == pymanager::ProcessState::daemonized;
  }));
  auto [status, body] = call("GET", "/processes/db");
  ASSERT_EQ(status, 200);
  EXPECT_EQ(testutil::field(body, {"process", "state"}), "daemonized");
  EXPECT_EQ(testutil::field(body, {"process", "status"}), "terminated");
  EXPECT_EQ(testutil::field(body, {"process", "code"}), 0);
  EXPECT_EQ(testutil::field(body, {"process", "daemons"}), json::array({manager_->processes()[0].daemons[0]}));
}

TEST(ProcessJson, AWaitingProcessSaysWhatItWaitsFor) {
  pymanager::ProcessInfo info;
  info.id = 3;
  info.name = "web";
  info.command = "./web";
  info.state = pymanager::ProcessState::waiting;
  info.waiting_for = {"api", "worker"};
  auto out = pymanager::process_to_json(info);
  EXPECT_EQ(out["state"], "waiting");
  EXPECT_EQ(out["waiting_for"], json::array({"api", "worker"}));
  EXPECT_EQ(out["status"], "terminated");
  EXPECT_TRUE(out["code"].is_null());
  info.state = pymanager::ProcessState::ready;
  EXPECT_FALSE(pymanager::process_to_json(info).contains("waiting_for"));
}

}  // namespace

namespace {

/// The pids that wrote `event` ("listening", "signal 2") to a stamp file.
std::vector<pid_t> stamped(const std::string& file, const std::string& event) {
  std::vector<pid_t> out;
  std::istringstream in(testutil::read_file(file));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(event + " ", 0) != 0) continue;
    std::istringstream rest(line.substr(event.size() + 1));
    pid_t pid = 0;
    if (rest >> pid) out.push_back(pid);
  }
  return out;
}

TEST_F(Api, AStopOrRestartThroughTheApiSendsTheProcessOwnStopSignal) {
  // pg stops on SIGINT, as `postgres` does for a fast shutdown; the API's
  // restart and stop must send that, not SIGTERM.
  const std::string stamp = testutil::runfile("tests/helpers/stamp_service");
  const std::string stamps = testutil::make_temp_dir() + "/pg-stamps";
  start("\"pg\": {\"executable\": \"" + stamp + "\", \"arguments\": [\"--stamp\", \"" + stamps +
        "\"], \"options\": {\"stop_signal\": \"SIGINT\"}}");
  // Its signal handling is in place once it says "listening".
  ASSERT_TRUE(wait_until([&] { return stamped(stamps, "listening").size() == 1; })) << testutil::read_file(stamps);
  const pid_t first = stamped(stamps, "listening")[0];
  EXPECT_EQ(manager_->processes()[0].pid, first);

  auto restarted = call("POST", "/restart/pg");
  ASSERT_EQ(restarted.first, 200) << restarted.second.dump();
  EXPECT_EQ(stamped(stamps, "signal 2"), std::vector<pid_t>{first}) << testutil::read_file(stamps);
  const pid_t second = static_cast<pid_t>(testutil::integer(restarted.second, {"process", "pid"}));
  EXPECT_NE(second, first);
  ASSERT_TRUE(wait_until([&] { return stamped(stamps, "listening").size() == 2; })) << testutil::read_file(stamps);
  EXPECT_EQ(stamped(stamps, "listening")[1], second);

  auto stopped = call("POST", "/stop/pg");
  ASSERT_EQ(stopped.first, 200) << stopped.second.dump();
  EXPECT_EQ(stamped(stamps, "signal 2"), (std::vector<pid_t>{first, second})) << testutil::read_file(stamps);
  EXPECT_TRUE(stamped(stamps, "signal 15").empty()) << testutil::read_file(stamps);
  // It exited 0 on its SIGINT, within its graceful time: not killed.
  EXPECT_EQ(testutil::field(stopped.second, {"process", "code"}), 0) << stopped.second.dump();
  EXPECT_FALSE(manager_->processes()[0].killed);
  EXPECT_FALSE(testutil::group_alive(second));
}

}  // namespace
