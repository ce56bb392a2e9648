// pymanager.verifiers.TcpVerifier and HttpVerifier (and HttpOkVerifier on
// the same machinery) through a Manager, with real processes and real
// sockets, HTTP and HTTPS servers on loopback that the test starts when it
// chooses: passing, timing out with what was seen, failing at once when the
// process exits, argument errors naming their path, TLS with and without
// `insecure`, statuses, body, method, localhost on ::1.
// The one translation unit of this test that includes httplib.h (through
// pymanager.hpp).
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <string>
#include <thread>

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

const char* kModules = R"("modules": {
    "pymanager.verifiers": {"verifiers": ["TcpVerifier", "HttpVerifier"]},
    "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]}
  }, "messages": ["verifier.fail"])";

pymanager::Config parse(const std::string& processes) {
  std::string text = std::string("{") + kModules + ", \"processes\": {" + processes + "}}";
  return pymanager::parse_config(nlohmann::ordered_json::parse(text), pymanager::builtin_verifiers());
}

/// A process "web" (sleeping) verified by `type` with `arguments` (JSON text).
pymanager::Config sleeper_verified_by(const std::string& type, const std::string& arguments) {
  return parse(R"("web": {"executable": "sleep", "arguments": ["1000"],
                 "verifier": {"type": ")" + type + R"(", "arguments": )" + arguments + "}}");
}

/// The config error for these arguments; a test failure when there is none.
std::string argument_error(const std::string& type, const std::string& arguments) {
  try {
    sleeper_verified_by(type, arguments);
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::config_invalid) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error for " << type << " " << arguments;
  return {};
}

/// start() on another thread: "" when it returned, else the error's text.
std::future<std::string> start_async(pymanager::Manager& manager) {
  return std::async(std::launch::async, [&manager]() -> std::string {
    try {
      manager.start();
      return "";
    } catch (const pymanager::Error& e) {
      return e.what();
    }
  });
}

/// start() here: "" when it returned, else the error's text.
std::string start_result(pymanager::Manager& manager) {
  auto future = start_async(manager);
  if (future.wait_for(60s) != std::future_status::ready) {
    ADD_FAILURE() << "start() did not end";
    manager.shutdown(true);
  }
  return future.get();
}

/// Waits until the verifier has reported a failed attempt containing `seen`.
bool saw_failure(Capture& capture, const std::string& seen) {
  return wait_until([&] {
    std::string log = capture.log();
    auto failed = log.find("failed: ");
    return failed != std::string::npos && log.find(seen, failed) != std::string::npos;
  });
}

/// The capture's options, verbose: passes are logged too.
pymanager::ManagerOptions verbose(Capture& capture) {
  pymanager::ManagerOptions options = capture.options();
  options.verbose = true;
  return options;
}

/// A socket listening on host:port (IPv6 only for an IPv6 address).
class PortListener {
 public:
  PortListener(const std::string& host, int port) {
    bool v6 = host.find(':') != std::string::npos;
    fd_ = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc = -1;
    if (v6) {
      ::setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
      sockaddr_in6 addr{};
      addr.sin6_family = AF_INET6;
      addr.sin6_port = htons(static_cast<unsigned short>(port));
      ::inet_pton(AF_INET6, host.c_str(), &addr.sin6_addr);
      rc = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    } else {
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<unsigned short>(port));
      ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
      rc = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    }
    ok_ = rc == 0 && ::listen(fd_, 16) == 0;
  }
  ~PortListener() { ::close(fd_); }
  PortListener(const PortListener&) = delete;
  PortListener& operator=(const PortListener&) = delete;
  bool ok() const { return ok_; }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

/// True when the machine can listen on ::1.
bool have_ipv6_loopback() {
  PortListener probe("::1", 0);
  return probe.ok();
}

/// An httplib server on its own thread, listening only when told to.
class ServerThread {
 public:
  explicit ServerThread(std::unique_ptr<httplib::Server> server = std::make_unique<httplib::Server>())
      : server_(std::move(server)) {}
  ~ServerThread() {
    if (thread_.joinable()) {
      wait_until([&] { return server_->is_running(); });
      server_->stop();
      thread_.join();
    }
  }
  ServerThread(const ServerThread&) = delete;
  ServerThread& operator=(const ServerThread&) = delete;
  httplib::Server& server() { return *server_; }
  bool listen(const std::string& host, int port) {
    if (host.find(':') != std::string::npos) server_->set_address_family(AF_INET6);
    if (!server_->bind_to_port(host.c_str(), port)) return false;
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    return true;
  }

 private:
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

std::string url(int port, const std::string& path, const std::string& scheme = "http", const std::string& host = "127.0.0.1") {
  return scheme + "://" + host + ":" + std::to_string(port) + path;
}

/// A process that waits until the test writes to its fifo, then exits 3.
struct ExitOnSignal {
  std::string dir = testutil::make_temp_dir();
  std::string fifo = dir + "/gate";
  ExitOnSignal() { EXPECT_EQ(::mkfifo(fifo.c_str(), 0600), 0); }
  std::string process(const std::string& type, const std::string& arguments) const {
    return R"("web": {"executable": "sh", "arguments": ["-c", "read line < )" + fifo +
           R"(; echo 'bind: address in use' >&2; exit 3"],
                 "verifier": {"type": ")" + type + R"(", "arguments": )" + arguments + "}}";
  }
  void release() const {
    int fd = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);  // the shell has it open for reading
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "go\n", 3), 3);
    ::close(fd);
  }
};

/// Runs a verifier whose process exits 3 while it waits (timeout 60 s): the
/// failure comes at once, with the exit code, what it saw, and the output.
void expect_fails_at_once_on_exit_3(const std::string& type, const std::string& arguments, const std::string& seen) {
  ExitOnSignal gate;
  Capture capture;
  pymanager::Manager manager(parse(gate.process(type, arguments)), capture.options());
  auto started = std::chrono::steady_clock::now();
  auto future = start_async(manager);
  ASSERT_TRUE(saw_failure(capture, seen)) << capture.log();
  gate.release();
  ASSERT_EQ(future.wait_for(30s), std::future_status::ready);
  std::string error = future.get();
  EXPECT_THAT(error, HasSubstr("process 'web': verifier " + type + " failed: process exited with exit code 3"));
  EXPECT_THAT(error, HasSubstr(seen));
  EXPECT_THAT(error, HasSubstr("bind: address in use"));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 30s);  // far from the 60 s timeout
}

// ---------------------------------------------------------------- TcpVerifier

TEST(TcpVerifier, PassesOnceSomethingListensOnThePortGivenAsAString) {
  int port = testutil::free_port();
  // "${port:db}" expands to a string of digits before the config is parsed.
  Capture capture;
  pymanager::Manager manager(
      sleeper_verified_by("pymanager.verifiers.TcpVerifier", R"({"port": ")" + std::to_string(port) + R"(", "timeout": 120})"),
      verbose(capture));
  auto future = start_async(manager);
  ASSERT_TRUE(saw_failure(capture, "127.0.0.1:" + std::to_string(port) + ": connection refused")) << capture.log();
  PortListener listener("127.0.0.1", port);
  ASSERT_TRUE(listener.ok());
  ASSERT_EQ(future.wait_for(30s), std::future_status::ready);
  EXPECT_EQ(future.get(), "");
  EXPECT_THAT(capture.log(), HasSubstr("'web' verified by pymanager.verifiers.TcpVerifier: connected to 127.0.0.1:" +
                                       std::to_string(port)));
}

TEST(TcpVerifier, TimesOutSayingTheConnectionWasRefused) {
  int port = testutil::free_port();
  Capture capture;
  pymanager::Manager manager(
      sleeper_verified_by("pymanager.verifiers.TcpVerifier", R"({"port": )" + std::to_string(port) + R"(, "timeout": 0.3})"),
      capture.options());
  EXPECT_THAT(start_result(manager),
              HasSubstr("verifier pymanager.verifiers.TcpVerifier failed: timed out after 0.3s (last attempt: 127.0.0.1:" +
                        std::to_string(port) + ": connection refused)"));
}

TEST(TcpVerifier, FailsAtOnceWhenTheProcessExitsWithCode3) {
  expect_fails_at_once_on_exit_3("pymanager.verifiers.TcpVerifier",
                                 R"({"port": )" + std::to_string(testutil::free_port()) + R"(, "timeout": 60})",
                                 "connection refused");
}

TEST(TcpVerifier, StopsWhenShutdownBegins) {
  Capture capture;
  pymanager::Manager manager(
      sleeper_verified_by("pymanager.verifiers.TcpVerifier", R"({"port": )" + std::to_string(testutil::free_port()) +
                                                                 R"(, "timeout": 120})"),
      capture.options());
  auto future = start_async(manager);
  ASSERT_TRUE(saw_failure(capture, "127.0.0.1:")) << capture.log();
  manager.shutdown();
  ASSERT_EQ(future.wait_for(20s), std::future_status::ready);  // long before the 120 s timeout
  EXPECT_THAT(future.get(), HasSubstr("shut"));
}

TEST(TcpVerifier, ArgumentErrorsNameThePath) {
  const std::string type = "pymanager.verifiers.TcpVerifier";
  const std::string at = "processes.web.verifier.arguments.";
  EXPECT_THAT(argument_error(type, "{}"), HasSubstr(at + "port: required key is missing"));
  EXPECT_THAT(argument_error(type, R"({"prot": 80})"), HasSubstr(at + "prot: unknown key (did you mean port?)"));
  for (const char* bad : {"0", "65536", "-1", "\"\"", "\"80a\"", "\"123456\"", "\"0\"", "8.5"}) {
    EXPECT_THAT(argument_error(type, std::string(R"({"port": )") + bad + "}"),
                HasSubstr(at + "port: expected a port number 1-65535 or a string of digits, got"))
        << bad;
  }
  EXPECT_THAT(argument_error(type, R"({"port": true})"), HasSubstr(at + "port: expected a port number 1-65535 or a string of digits, got true"));
  EXPECT_THAT(argument_error(type, R"({"port": 80, "host": ""})"), HasSubstr(at + "host: expected a host name or an IP address"));
  EXPECT_THAT(argument_error(type, R"({"port": 80, "host": "a b"})"), HasSubstr(at + "host: expected a host name or an IP address"));
  EXPECT_THAT(argument_error(type, R"({"port": 80, "host": "::zz"})"), HasSubstr(at + "host: expected a host name or an IP address"));
  EXPECT_THAT(argument_error(type, R"({"port": 80, "host": 1})"), HasSubstr(at + "host: expected a string"));
  EXPECT_THAT(argument_error(type, R"({"port": 80, "timeout": -1})"), HasSubstr(at + "timeout: must be at least 0"));
  EXPECT_THAT(argument_error(type, R"({"port": 80, "interval": "1"})"), HasSubstr(at + "interval: expected a number"));
  // And these are fine.
  EXPECT_NO_THROW(sleeper_verified_by(type, R"({"port": "65535", "host": "[::1]"})"));
  EXPECT_NO_THROW(sleeper_verified_by(type, R"({"port": 1, "host": "db.example"})"));
}

TEST(TcpVerifier, LocalhostTriesIpv6LoopbackAndAnIpv6LiteralWorks) {
  if (!have_ipv6_loopback()) GTEST_SKIP() << "::1 cannot be bound here";
  int port = testutil::free_port();
  PortListener v6_only("::1", port);
  if (!v6_only.ok()) GTEST_SKIP() << "::1:" << port << " cannot be bound";
  for (const char* host : {"localhost", "::1", "[::1]"}) {
    Capture capture;
    pymanager::Manager manager(sleeper_verified_by("pymanager.verifiers.TcpVerifier",
                                                   R"({"port": )" + std::to_string(port) + R"(, "host": ")" + host +
                                                       R"(", "timeout": 20})"),
                               capture.options());
    EXPECT_EQ(start_result(manager), "") << host;
  }
  // Nothing on 127.0.0.1: the default host does not pass.
  Capture capture;
  pymanager::Manager manager(
      sleeper_verified_by("pymanager.verifiers.TcpVerifier", R"({"port": )" + std::to_string(port) + R"(, "timeout": 0.2})"),
      capture.options());
  EXPECT_THAT(start_result(manager), HasSubstr("connection refused"));
}

TEST(TcpVerifier, LocalhostRefusedOnBothAddressesSaysWhatEachSaid) {
  // Nothing listens on either address: the attempts alternate between
  // 127.0.0.1 and ::1, and the timeout reports the last word of each.
  int port = testutil::free_port();
  Capture capture;
  pymanager::Manager manager(sleeper_verified_by("pymanager.verifiers.TcpVerifier",
                                                 R"({"port": )" + std::to_string(port) +
                                                     R"(, "host": "localhost", "timeout": 0.2})"),
                             capture.options());
  std::string result = start_result(manager);
  EXPECT_THAT(result, HasSubstr("127.0.0.1: connection refused"));
  if (have_ipv6_loopback()) {
    EXPECT_THAT(result, HasSubstr("; ::1: connection refused"));
  }
}

// --------------------------------------------------------------- HttpVerifier

/// A server with the paths the tests ask for.
std::unique_ptr<httplib::Server> make_paths(std::unique_ptr<httplib::Server> server) {
  server->Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("healthy", "text/plain"); });
  server->Get("/redirect", [](const httplib::Request&, httplib::Response& res) { res.set_redirect("/health"); });
  server->Get("/unavailable", [](const httplib::Request&, httplib::Response& res) {
    res.status = 503;
    res.set_content("try later", "text/plain");
  });
  server->Get("/starting", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"state\": \"starting\"}", "application/json");
  });
  // 405 to GET, 200 to HEAD and POST.
  server->Get("/head-only", [](const httplib::Request& req, httplib::Response& res) {
    res.status = req.method == "HEAD" ? 200 : 405;
  });
  server->Post("/head-only", [](const httplib::Request&, httplib::Response& res) { res.status = 201; });
  server->Get("/big", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(100 * 1024, 'a'), "text/plain");
  });
  server->Get("/headers", [](const httplib::Request& req, httplib::Response& res) {
    res.status = req.get_header_value("X-Token") == "secret" ? 200 : 401;
  });
  return server;
}

const std::string kHttp = "pymanager.verifiers.HttpVerifier";
const std::string kHttpOk = "pymutils.http_verifier.HttpOkVerifier";

/// The result of start() for `type` with these arguments against a server
/// already listening on 127.0.0.1.
std::string against_server(const std::string& type, const std::string& arguments) {
  Capture capture;
  pymanager::Manager manager(sleeper_verified_by(type, arguments), capture.options());
  return start_result(manager);
}

TEST(HttpVerifier, PassesOnceTheServiceListensFollowingARedirectAndMatchingTheBody) {
  int port = testutil::free_port();
  for (const std::string& type : {kHttp, kHttpOk}) {
    std::string extra = type == kHttp ? R"(, "body": "^heal+thy$")" : "";
    Capture capture;
    pymanager::Manager manager(
        sleeper_verified_by(type, R"({"url": ")" + url(port, "/redirect") + R"(", "timeout": 120)" + extra + "}"),
        verbose(capture));
    auto future = start_async(manager);
    ASSERT_TRUE(saw_failure(capture, "connection refused")) << capture.log();
    {
      ServerThread server(make_paths(std::make_unique<httplib::Server>()));
      ASSERT_TRUE(server.listen("127.0.0.1", port));
      ASSERT_EQ(future.wait_for(30s), std::future_status::ready);
      EXPECT_EQ(future.get(), "") << type;
    }
    EXPECT_THAT(capture.log(), HasSubstr("'web' verified by " + type + ": status 200")) << type;
  }
}

TEST(HttpVerifier, TimesOutSayingWhatItLastSaw) {
  ServerThread server(make_paths(std::make_unique<httplib::Server>()));
  int port = testutil::free_port();
  ASSERT_TRUE(server.listen("127.0.0.1", port));
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + url(port, "/unavailable") + R"(", "timeout": 0.3})"),
              HasSubstr("failed: timed out after 0.3s (last attempt: status 503)"));
  // HttpOkVerifier's message is the seed's.
  EXPECT_THAT(against_server(kHttpOk, R"({"url": ")" + url(port, "/unavailable") + R"(", "timeout": 0.3})"),
              HasSubstr("failed: timed out after 0.3s (last attempt: status 503)"));
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + url(port, "/starting") + R"(", "body": "\"state\": \"ready\"", "timeout": 0.3})"),
              HasSubstr(R"((last attempt: status 200, body did not match /"state": "ready"/ (body: "{\"state\": \"starting\"}")))"));
  int nothing = testutil::free_port();
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + url(nothing, "/") + R"(", "timeout": 0.3})"),
              HasSubstr("(last attempt: connection refused)"));
}

TEST(HttpVerifier, FailsAtOnceWhenTheProcessExitsWithCode3) {
  int port = testutil::free_port();
  expect_fails_at_once_on_exit_3(kHttp, R"({"url": ")" + url(port, "/") + R"(", "timeout": 60})", "connection refused");
  // Also while the service answers "not yet" (the pause of an answered attempt ends on the exit).
  ServerThread server(make_paths(std::make_unique<httplib::Server>()));
  ASSERT_TRUE(server.listen("127.0.0.1", port));
  expect_fails_at_once_on_exit_3(kHttp, R"({"url": ")" + url(port, "/unavailable") + R"(", "timeout": 60})", "status 503");
}

TEST(HttpVerifier, ABigBodyIsReadInPartAndMatchedWithoutRunningOutOfStack) {
  ServerThread server(make_paths(std::make_unique<httplib::Server>()));
  int port = testutil::free_port();
  ASSERT_TRUE(server.listen("127.0.0.1", port));
  const std::string u = url(port, "/big");
  // std::regex recurses per character: this pattern on 16 KiB overflows an 8 MiB stack.
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + u + R"(", "body": "^(a|b)*$", "timeout": 20})"), "");
  {
    // What an attempt saw is logged when it changes (the last attempt's match
    // may be cut short by the deadline on a slow machine).
    Capture capture;
    pymanager::Manager manager(sleeper_verified_by(kHttp, R"({"url": ")" + u + R"(", "body": "^b", "timeout": 5})"),
                               capture.options());
    auto future = start_async(manager);
    EXPECT_TRUE(saw_failure(capture, R"(status 200, body did not match /^b/ (body: "aaaa)")) << capture.log();
    EXPECT_THAT(capture.log(), HasSubstr(R"(aaaa"..., first 16 KiB read))"));
    manager.shutdown();
    ASSERT_EQ(future.wait_for(20s), std::future_status::ready);
  }
  // A search is quadratic: this one takes seconds on 16 KiB; the attempt gives up
  // on it after 1 s and the verifier's timeout holds.
  auto started = std::chrono::steady_clock::now();
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + u + R"(", "body": "(a|b)*c", "timeout": 1.5})"),
              HasSubstr("the regular expression is too slow for this body"));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

TEST(HttpVerifier, StopsWhenShutdownBeginsWhileTheServiceAnswersNotYet) {
  ServerThread server(make_paths(std::make_unique<httplib::Server>()));
  int port = testutil::free_port();
  ASSERT_TRUE(server.listen("127.0.0.1", port));
  Capture capture;
  pymanager::Manager manager(sleeper_verified_by(kHttp, R"({"url": ")" + url(port, "/unavailable") + R"(", "timeout": 120})"),
                             capture.options());
  auto future = start_async(manager);
  ASSERT_TRUE(saw_failure(capture, "status 503")) << capture.log();
  manager.shutdown();
  ASSERT_EQ(future.wait_for(20s), std::future_status::ready);  // long before the 120 s timeout
  EXPECT_THAT(future.get(), HasSubstr("shut"));
}

TEST(HttpVerifier, StatusListsAndRanges) {
  ServerThread server(make_paths(std::make_unique<httplib::Server>()));
  int port = testutil::free_port();
  ASSERT_TRUE(server.listen("127.0.0.1", port));
  const std::string u = url(port, "/unavailable");
  for (const char* status : {"503", "[503]", "\"500-599\"", "\"503\"", "[200, \"500-503\"]", "[\"100-199\", 503]"}) {
    EXPECT_EQ(against_server(kHttp, R"({"url": ")" + u + R"(", "status": )" + status + R"(, "timeout": 20})"), "") << status;
  }
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + u + R"(", "status": [200, "500-502"], "timeout": 0.3})"),
              HasSubstr("(last attempt: status 503 (expected 200, 500-502))"));
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + url(port, "/health") + R"(", "status": 204, "timeout": 0.3})"),
              HasSubstr("(last attempt: status 200 (expected 204))"));
}

TEST(HttpVerifier, MethodAndHeaders) {
  ServerThread server(make_paths(std::make_unique<httplib::Server>()));
  int port = testutil::free_port();
  ASSERT_TRUE(server.listen("127.0.0.1", port));
  const std::string u = url(port, "/head-only");
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + u + R"(", "method": "HEAD", "timeout": 20})"), "");
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + u + R"(", "method": "POST", "status": 201, "timeout": 20})"), "");
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + u + R"(", "timeout": 0.3})"), HasSubstr("(last attempt: status 405)"));
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + u + R"(", "method": "PUT", "timeout": 0.3})"),
              HasSubstr("(last attempt: status 404)"));
  const std::string h = url(port, "/headers");
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + h + R"(", "headers": {"X-Token": "secret"}, "timeout": 20})"), "");
  EXPECT_EQ(against_server(kHttpOk, R"({"url": ")" + h + R"(", "headers": {"X-Token": "secret"}, "timeout": 20})"), "");
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + h + R"(", "timeout": 0.3})"), HasSubstr("(last attempt: status 401)"));
}

TEST(HttpVerifier, ArgumentErrorsNameThePath) {
  const std::string at = "processes.web.verifier.arguments.";
  const std::string ok_url = R"("url": "http://127.0.0.1:1/")";
  auto with = [&](const std::string& more) { return "{" + ok_url + ", " + more + "}"; };
  EXPECT_THAT(argument_error(kHttp, "{}"), HasSubstr(at + "url: required key is missing"));
  EXPECT_THAT(argument_error(kHttp, R"({"url": "ftp://x/"})"), HasSubstr(at + "url: expected an http:// or https:// URL, got 'ftp://x/'"));
  EXPECT_THAT(argument_error(kHttp, R"({"url": "http://h:99999/"})"), HasSubstr(at + "url: expected an http:// or https:// URL"));
  EXPECT_THAT(argument_error(kHttp, with(R"("method": "FETCH")")),
              HasSubstr(at + "method: expected one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, got \"FETCH\""));
  EXPECT_THAT(argument_error(kHttp, with(R"("method": "get")")), HasSubstr(at + "method: expected one of"));
  EXPECT_THAT(argument_error(kHttp, with(R"("method": 1)")), HasSubstr(at + "method: expected a string"));
  for (const char* bad : {"99", "600", "\"200-\"", "\"299-200\"", "\"2xx\"", "true", "\"\"", "{}"}) {
    EXPECT_THAT(argument_error(kHttp, with(std::string(R"("status": )") + bad)),
                HasSubstr(at + "status: expected a status (a number 100-599 or a range such as \"200-299\") or a list of them, got"))
        << bad;
  }
  EXPECT_THAT(argument_error(kHttp, with(R"("status": [])")), HasSubstr(at + "status: expected a status"));
  EXPECT_THAT(argument_error(kHttp, with(R"("status": [200, "x"])")), HasSubstr(at + "status[1]: expected a status"));
  std::string bad_regex = argument_error(kHttp, with(R"("body": "(unclosed")"));
  EXPECT_THAT(bad_regex, HasSubstr(at + "body: not a valid regular expression (ECMAScript): "));
  EXPECT_THAT(bad_regex, Not(::testing::EndsWith("(ECMAScript): ")));  // the regex error follows
  EXPECT_THAT(argument_error(kHttp, with(R"("body": "(a)\\1")")),
              HasSubstr(at + "body: not a valid regular expression (ECMAScript): Unexpected back-reference"));
  EXPECT_THAT(argument_error(kHttp, with(R"("body": 5)")), HasSubstr(at + "body: expected a string"));
  EXPECT_THAT(argument_error(kHttp, with(R"("headers": {"X": 1})")), HasSubstr(at + "headers.X: expected a string"));
  EXPECT_THAT(argument_error(kHttp, with(R"("headers": {"Bad Name": "v"})")), HasSubstr(at + "headers.Bad Name: not a valid header name"));
  EXPECT_THAT(argument_error(kHttp, with(R"("headers": {"X": "a\r\nEvil: 1"})")), HasSubstr(at + "headers.X: a header value cannot hold CR or LF"));
  EXPECT_THAT(argument_error(kHttpOk, with(R"("headers": {"X": "a\nb"})")), HasSubstr(at + "headers.X: a header value cannot hold CR or LF"));
  EXPECT_THAT(argument_error(kHttp, with(R"("insecure": "yes")")), HasSubstr(at + "insecure: expected true or false"));
  EXPECT_THAT(argument_error(kHttp, with(R"("ca_file": "")")), HasSubstr(at + "ca_file: expected a path"));
  EXPECT_THAT(argument_error(kHttp, with(R"("timeout": -1)")), HasSubstr(at + "timeout: must be at least 0"));
  EXPECT_THAT(argument_error(kHttp, with(R"("interval": false)")), HasSubstr(at + "interval: expected a number"));
  EXPECT_THAT(argument_error(kHttp, with(R"("stauts": 200)")), HasSubstr(at + "stauts: unknown key (did you mean status?)"));
  // HttpOkVerifier keeps the seed's arguments only.
  EXPECT_THAT(argument_error(kHttpOk, with(R"("method": "HEAD")")), HasSubstr(at + "method: unknown key"));
}

// ---------------------------------------------------------------------- HTTPS

/// A self-signed certificate for 127.0.0.1, ::1 and localhost, and its key,
/// written as PEM files in `dir`.
struct SelfSigned {
  std::string cert;
  std::string key;
};

SelfSigned make_self_signed(const std::string& dir) {
  SelfSigned out{dir + "/cert.pem", dir + "/key.pem"};
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  if (key == nullptr || x == nullptr) throw std::runtime_error("openssl: cannot make a key");
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("pymanager test"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  for (auto ext_def : {std::make_pair(NID_subject_alt_name, "IP:127.0.0.1,IP:::1,DNS:localhost"),
                       std::make_pair(NID_basic_constraints, "critical,CA:TRUE")}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, ext_def.first, ext_def.second);
    if (ext == nullptr) throw std::runtime_error("openssl: cannot make an extension");
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (X509_sign(x, key, EVP_sha256()) == 0) throw std::runtime_error("openssl: cannot sign");
  FILE* f = std::fopen(out.cert.c_str(), "w");
  PEM_write_X509(f, x);
  std::fclose(f);
  f = std::fopen(out.key.c_str(), "w");
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  X509_free(x);
  EVP_PKEY_free(key);
  return out;
}

TEST(HttpVerifier, HttpsWithASelfSignedCertificateNeedsInsecureOrItsCaFile) {
  std::string dir = testutil::make_temp_dir();
  SelfSigned certificate = make_self_signed(dir);
  auto tls = std::make_unique<httplib::SSLServer>(certificate.cert.c_str(), certificate.key.c_str());
  ASSERT_TRUE(tls->is_valid());
  ServerThread server(make_paths(std::move(tls)));
  int port = testutil::free_port();
  ASSERT_TRUE(server.listen("127.0.0.1", port));
  const std::string u = url(port, "/health", "https");
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + u + R"(", "timeout": 0.5})"),
              HasSubstr("(last attempt: TLS certificate not trusted)"));
  EXPECT_THAT(against_server(kHttpOk, R"({"url": ")" + u + R"(", "timeout": 0.5})"),
              HasSubstr("(last attempt: TLS certificate not trusted)"));
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + u + R"(", "insecure": true, "body": "healthy", "timeout": 20})"), "");
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + u + R"(", "ca_file": ")" + certificate.cert + R"(", "timeout": 20})"), "");
  // The certificate names 127.0.0.1 and localhost; the host name is checked.
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + url(port, "/health", "https", "localhost") + R"(", "ca_file": ")" +
                                      certificate.cert + R"(", "timeout": 20})"),
            "");
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + u + R"(", "ca_file": ")" + dir + R"(/missing.pem", "timeout": 0.3})"),
              HasSubstr("(last attempt: cannot read ca_file " + dir + "/missing.pem)"));
  // Plain HTTP to a TLS server, and TLS to a plain one: a clear failure.
  EXPECT_THAT(against_server(kHttp, R"({"url": ")" + url(port, "/health") + R"(", "timeout": 0.3})"),
              HasSubstr("(last attempt: "));
}

TEST(HttpVerifier, LocalhostTriesIpv6Loopback) {
  if (!have_ipv6_loopback()) GTEST_SKIP() << "::1 cannot be bound here";
  ServerThread server(make_paths(std::make_unique<httplib::Server>()));
  int port = testutil::free_port();
  if (!server.listen("::1", port)) GTEST_SKIP() << "::1:" << port << " cannot be bound";
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + url(port, "/health", "http", "localhost") + R"(", "timeout": 20})"), "");
  EXPECT_EQ(against_server(kHttp, R"({"url": ")" + url(port, "/health", "http", "[::1]") + R"(", "timeout": 20})"), "");
}

// ------------------------------------------------- the cost check (not a test)

/// A context that only sleeps, for measuring a verifier's own cost.
class BareContext : public pymanager::VerifyContext {
 public:
  const std::string& process_name() const override { return name_; }
  int pid() const override { return 0; }
  bool sleep_until(pymanager::Clock::time_point until) override {
    std::this_thread::sleep_until(until);
    return true;
  }
  std::optional<pymanager::ExitStatus> wait_exit(pymanager::Clock::time_point until) override {
    std::this_thread::sleep_until(until);
    return std::nullopt;
  }
  std::optional<pymanager::ExitStatus> exit_status() const override { return std::nullopt; }
  bool cancelled() const override { return false; }
  void log(pymanager::MessageCategory, const std::string&) override { ++logs; }
  int logs = 0;

 private:
  std::string name_ = "web";
};

double thread_cpu_ms() {
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

// Run with --gtest_also_run_disabled_tests --gtest_filter='*Cost*': prints
// the CPU time of each verifier polling a refused port for 1 s, and how soon
// it sees a listener that appears.
TEST(NetVerifiersCheck, DISABLED_CostOfPollingARefusedPortAndLatency) {
  int port = testutil::free_port();
  const std::string p = std::to_string(port);
  const std::pair<std::string, std::string> cases[] = {
      {kHttp, R"({"url": "http://127.0.0.1:)" + p + R"(/", "timeout": 1})"},
      {kHttpOk, R"({"url": "http://127.0.0.1:)" + p + R"(/", "timeout": 1})"},
      {kHttp, R"({"url": "http://localhost:)" + p + R"(/", "timeout": 1})"},
      {"pymanager.verifiers.TcpVerifier", R"({"port": )" + p + R"(, "timeout": 1})"},
  };
  auto registry = pymanager::builtin_verifiers();
  for (const auto& c : cases) {
    auto verifier = (*registry.find(c.first))(nlohmann::json::parse(c.second), "x");
    BareContext context;
    double before = thread_cpu_ms();
    auto start = std::chrono::steady_clock::now();
    auto result = verifier->verify(context);
    double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    double cpu = thread_cpu_ms() - before;
    std::printf("%s %s: %.1f ms CPU in %.0f ms (%.2f%% of a core): %s\n", c.first.c_str(), c.second.c_str(), cpu, wall,
                100 * cpu / wall, result.message.c_str());
  }
  // The same through a Manager (its context's sleeps, its threads): the
  // whole process's CPU while start() waits 1 s, and 0.2 s for comparison
  // (the difference is the polling; the rest is launching and stopping).
  auto process_cpu_ms = [] {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e3 + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e3;
  };
  for (const auto& c : cases) {
    double spent[2];
    for (int i = 0; i < 2; ++i) {
      std::string args = c.second;
      args.replace(args.find("\"timeout\": 1"), 12, i == 0 ? "\"timeout\": 1.0" : "\"timeout\": 0.2");
      Capture capture;
      pymanager::Manager manager(sleeper_verified_by(c.first, args), capture.options());
      double before = process_cpu_ms();
      start_result(manager);
      spent[i] = process_cpu_ms() - before;
    }
    std::printf("through a Manager, %s: %.1f ms CPU for 1 s, %.1f ms for 0.2 s: %.2f%% of a core while polling\n",
                c.first.c_str(), spent[0], spent[1], 100 * (spent[0] - spent[1]) / 800);
  }
  // A server that answers 503: the answered-attempt pacing.
  {
    ServerThread server(make_paths(std::make_unique<httplib::Server>()));
    int busy = testutil::free_port();
    ASSERT_TRUE(server.listen("127.0.0.1", busy));
    std::atomic<int> requests{0};
    server.server().set_logger([&](const httplib::Request&, const httplib::Response&) { ++requests; });
    auto verifier = pymanager::HttpVerifier::from_arguments(
        nlohmann::json::parse(R"({"url": "http://127.0.0.1:)" + std::to_string(busy) + R"(/unavailable", "timeout": 1})"), "x");
    BareContext context;
    double before = thread_cpu_ms();
    verifier->verify(context);
    std::printf("HttpVerifier against a 503 for 1 s: %d requests, %.1f ms CPU in the verifier\n", requests.load(),
                thread_cpu_ms() - before);
  }
  // Latency: how long after listen() the verifiers pass.
  for (const std::string& type : {kHttp, std::string("pymanager.verifiers.TcpVerifier")}) {
    int late = testutil::free_port();
    std::string args = type == kHttp ? R"({"url": "http://127.0.0.1:)" + std::to_string(late) + R"(/health", "timeout": 10})"
                                     : R"({"port": )" + std::to_string(late) + R"(, "timeout": 10})";
    auto verifier = (*registry.find(type))(nlohmann::json::parse(args), "x");
    std::atomic<long long> passed_at{0};
    std::thread t([&] {
      BareContext context;
      auto r = verifier->verify(context);
      passed_at = std::chrono::steady_clock::now().time_since_epoch().count();
      EXPECT_TRUE(r.passed) << r.message;
    });
    std::this_thread::sleep_for(300ms);  // a measurement, not a test's state
    ServerThread server(make_paths(std::make_unique<httplib::Server>()));
    long long listening = std::chrono::steady_clock::now().time_since_epoch().count();
    ASSERT_TRUE(server.listen("127.0.0.1", late));
    t.join();
    std::printf("%s passed %.2f ms after the listen\n", type.c_str(),
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::duration(passed_at - listening)).count());
  }
}

}  // namespace
