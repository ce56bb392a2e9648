// pymanager: one bounded, non-blocking TCP connect, for the verifiers that
// ask "is anything accepting on host:port?" (TcpVerifier, and HttpVerifier
// before it builds an HTTP client). A refusal on loopback costs microseconds.
#ifndef PYMANAGER_VERIFIERS_CONNECT_HPP
#define PYMANAGER_VERIFIERS_CONNECT_HPP

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

struct ConnectResult {
  bool accepted = false;
  std::string message;  ///< "connection refused", "connection timed out", ...
};

inline std::string describe_connect_errno(int error) {
  switch (error) {
    case ECONNREFUSED: return "connection refused";
    case ETIMEDOUT: return "connection timed out";
    case ENETUNREACH: return "network unreachable";
    case EHOSTUNREACH: return "host unreachable";
    case EADDRNOTAVAIL: return "address not available";
    case EAFNOSUPPORT: return "address family not supported";
    default: return std::string("connect failed: ") + std::strerror(error);
  }
}

/// Connects to one address and closes at once. Waits for the answer at most
/// min(1 s, until - now) (loopback answers at once).
inline ConnectResult connect_once(const sockaddr* address, socklen_t length, Clock::time_point until) {
  int fd = ::socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return {false, describe_connect_errno(errno)};
  ConnectResult result;
  if (::connect(fd, address, length) == 0) {
    result.accepted = true;
  } else if (errno != EINPROGRESS) {
    result.message = describe_connect_errno(errno);
  } else {
    const auto bound = std::min(until, Clock::now() + std::chrono::seconds(1));
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(bound - Clock::now()).count();
      struct pollfd p = {fd, POLLOUT, 0};
      int n = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        result.message = "connection timed out";
        break;
      }
      int error = 0;
      socklen_t size = sizeof error;
      if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) != 0) error = errno;
      if (error == 0) {
        result.accepted = true;
      } else {
        result.message = describe_connect_errno(error);
      }
      break;
    }
  }
  ::close(fd);
  return result;
}

/// "[::1]" -> "::1"; other hosts unchanged.
inline std::string strip_brackets(const std::string& host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') return host.substr(1, host.size() - 2);
  return host;
}

/// Connects to host:port. An IPv4 or IPv6 literal is used as is;
/// "localhost" tries 127.0.0.1, then ::1 (it may resolve to one only, while
/// the service listens on the other); other names are resolved and each
/// address is tried. The message says what the attempt saw ("connection
/// refused"; for localhost, for each address).
inline ConnectResult connect_host(const std::string& written_host, int port, Clock::time_point until) {
  const std::string host = strip_brackets(written_host);
  sockaddr_in v4{};
  v4.sin_family = AF_INET;
  v4.sin_port = htons(static_cast<unsigned short>(port));
  sockaddr_in6 v6{};
  v6.sin6_family = AF_INET6;
  v6.sin6_port = htons(static_cast<unsigned short>(port));
  if (::inet_pton(AF_INET, host.c_str(), &v4.sin_addr) == 1) {
    return connect_once(reinterpret_cast<const sockaddr*>(&v4), sizeof v4, until);
  }
  if (::inet_pton(AF_INET6, host.c_str(), &v6.sin6_addr) == 1) {
    return connect_once(reinterpret_cast<const sockaddr*>(&v6), sizeof v6, until);
  }
  if (host == "localhost") {
    ConnectResult a = connect_host("127.0.0.1", port, until);
    if (a.accepted) return a;
    ConnectResult b = connect_host("::1", port, until);
    if (b.accepted) return b;
    return {false, "127.0.0.1: " + a.message + "; ::1: " + b.message};
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  const std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
  if (rc != 0) return {false, "cannot resolve '" + host + "': " + ::gai_strerror(rc)};
  ConnectResult result{false, "no address for '" + host + "'"};
  std::string messages;
  for (addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
    ConnectResult r = connect_once(ai->ai_addr, ai->ai_addrlen, until);
    if (r.accepted) {
      result = r;
      break;
    }
    if (messages.find(r.message) == std::string::npos) messages += (messages.empty() ? "" : "; ") + r.message;
    result.message = messages;
  }
  ::freeaddrinfo(list);
  return result;
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_CONNECT_HPP
