// Helpers for the tests of gtest_env/: a tiny HTTP GET over a socket (so that
// these test files need not include httplib.h), and the command line that
// runs a GoogleTest binary as a subject, isolated from the driver's own
// Bazel test environment.
#ifndef PYMANAGER_TESTS_GTEST_ENV_UTIL_HPP
#define PYMANAGER_TESTS_GTEST_ENV_UTIL_HPP

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace gtest_env_util {

struct HttpResponse {
  int status = 0;
  std::string body;
};

/// GET http://127.0.0.1:<port><path> with HTTP/1.0; nullopt when the
/// connection fails. Every step is bounded (5 s).
inline std::optional<HttpResponse> http_get(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::nullopt;
  struct timeval timeout {5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return std::nullopt;
  }
  std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n\r\n";
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    ::close(fd);
    return std::nullopt;
  }
  std::string raw;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    raw.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  if (raw.compare(0, 5, "HTTP/") != 0 || raw.size() < 12) return std::nullopt;
  HttpResponse response;
  response.status = std::atoi(raw.c_str() + raw.find(' ') + 1);
  auto body = raw.find("\r\n\r\n");
  if (body != std::string::npos) response.body = raw.substr(body + 4);
  return response;
}

/// The command that runs `binary` (a GoogleTest program) with `env` set and
/// without the variables through which Bazel talks to the *driver* test:
/// otherwise the subject would write the driver's test.xml, or leave its
/// premature-exit file behind when it crashes on purpose.
inline std::vector<std::string> subject_command(const std::string& binary, const std::vector<std::string>& env,
                                                const std::vector<std::string>& args = {}) {
  std::vector<std::string> argv = {"/usr/bin/env"};
  for (const char* name : {"XML_OUTPUT_FILE", "GTEST_OUTPUT", "TEST_PREMATURE_EXIT_FILE", "TEST_SHARD_STATUS_FILE",
                           "GTEST_SHARD_INDEX", "GTEST_TOTAL_SHARDS", "TEST_SHARD_INDEX", "TEST_TOTAL_SHARDS",
                           "GTEST_FILTER", "TESTBRIDGE_TEST_ONLY", "PYMANAGER_CONFIG", "TEST_UNDECLARED_OUTPUTS_DIR"}) {
    argv.push_back("-u");
    argv.push_back(name);
  }
  argv.insert(argv.end(), env.begin(), env.end());
  argv.push_back(binary);
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

}  // namespace gtest_env_util

#endif  // PYMANAGER_TESTS_GTEST_ENV_UTIL_HPP
