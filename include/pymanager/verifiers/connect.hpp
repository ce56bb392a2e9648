// pymanager: bounded TCP connects, for the verifiers that ask "is anything
// accepting on host:port?" (TcpVerifier, and HttpVerifier before it builds
// an HTTP client). A refusal on loopback costs microseconds.
#ifndef PYMANAGER_VERIFIERS_CONNECT_HPP
#define PYMANAGER_VERIFIERS_CONNECT_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

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

/// Asks "does host:port accept a connection?", again and again, cheaply.
/// An IPv4 or IPv6 literal is used as is; "localhost" tries 127.0.0.1 and
/// ::1 in turn, one per attempt (it may resolve to one only, while the
/// service listens on the other); other names are resolved at each attempt and each address is
/// tried (non-blocking, bounded by min(1 s, time left)).
///
/// For the literal addresses the socket is kept from one attempt to the
/// next while connections are refused (Linux lets a socket connect again
/// after a refusal): a refused attempt is then one connect(2), about half
/// the cost of socket + connect + close, which matters at one attempt per
/// millisecond. That connect is blocking, bounded by SO_SNDTIMEO
/// (min(1 s, time left)): on loopback it is answered within the call.
/// An accepted connection is closed at once. Not thread-safe: one per
/// verify() call.
class TcpProbe {
 public:
  TcpProbe(const std::string& written_host, int port) : host_(strip_brackets(written_host)), port_(port) {
    if (host_ == "localhost") {
      add_literal("127.0.0.1");
      add_literal("::1");
    } else {
      add_literal(host_);
    }
  }
  ~TcpProbe() {
    for (auto& target : targets_) close_target(target);
  }
  TcpProbe(const TcpProbe&) = delete;
  TcpProbe& operator=(const TcpProbe&) = delete;

  /// One attempt. The message says what it saw ("connection refused"; for
  /// localhost, for each address).
  ConnectResult attempt(Clock::time_point until) {
    if (targets_.empty()) return resolve_and_connect(until);
    if (targets_.size() == 1) return connect_target(targets_[0], until);
    // localhost: one address per attempt, in turn, so that polling costs
    // what polling one address does (each address is still tried every
    // other attempt: every 2 ms in the first 10 s).
    const std::size_t which = next_++ % 2;
    ConnectResult result = connect_target(targets_[which], until);
    if (result.accepted) return result;
    last_message_[which] = result.message;
    if (last_message_[1 - which].empty()) return {false, (which == 0 ? "127.0.0.1: " : "::1: ") + result.message};
    return {false, "127.0.0.1: " + last_message_[0] + "; ::1: " + last_message_[1]};
  }

 private:
  struct Target {
    sockaddr_storage address{};
    socklen_t length = 0;
    int fd = -1;
    bool full_timeout = false;  ///< SO_SNDTIMEO is 1 s (not less)
  };

  void add_literal(const std::string& host) {
    Target target;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&target.address);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&target.address);
    if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
      v4->sin_family = AF_INET;
      v4->sin_port = htons(static_cast<unsigned short>(port_));
      target.length = sizeof *v4;
    } else if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
      v6->sin6_family = AF_INET6;
      v6->sin6_port = htons(static_cast<unsigned short>(port_));
      target.length = sizeof *v6;
    } else {
      return;  // a name: resolved at each attempt
    }
    targets_.push_back(target);
  }

  static void close_target(Target& target) {
    if (target.fd >= 0) ::close(target.fd);
    target.fd = -1;
  }

  static ConnectResult connect_target(Target& target, Clock::time_point until) {
    const auto left = until - Clock::now();
    if (target.fd < 0) {
      target.fd = ::socket(target.address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (target.fd < 0) return {false, describe_connect_errno(errno)};
      target.full_timeout = false;
    }
    if (!(target.full_timeout && left >= std::chrono::seconds(1))) {
      auto bound = std::chrono::duration_cast<std::chrono::microseconds>(
          std::min<Clock::duration>(std::max<Clock::duration>(left, std::chrono::milliseconds(1)), std::chrono::seconds(1)));
      timeval tv{};
      tv.tv_sec = static_cast<time_t>(bound.count() / 1000000);
      tv.tv_usec = static_cast<suseconds_t>(bound.count() % 1000000);
      ::setsockopt(target.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      target.full_timeout = bound >= std::chrono::seconds(1);
    }
    if (::connect(target.fd, reinterpret_cast<const sockaddr*>(&target.address), target.length) == 0) {
      close_target(target);
      return {true, {}};
    }
    const int error = errno;
    if (error == ECONNREFUSED) return {false, describe_connect_errno(error)};  // the socket is kept
    close_target(target);
    // A blocking connect that SO_SNDTIMEO ended says EINPROGRESS.
    if (error == EINPROGRESS || error == EAGAIN || error == EINTR) return {false, "connection timed out"};
    return {false, describe_connect_errno(error)};
  }

  ConnectResult resolve_and_connect(Clock::time_point until) const {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* list = nullptr;
    const std::string service = std::to_string(port_);
    int rc = ::getaddrinfo(host_.c_str(), service.c_str(), &hints, &list);
    if (rc != 0) return {false, "cannot resolve '" + host_ + "': " + ::gai_strerror(rc)};
    ConnectResult result{false, "no address for '" + host_ + "'"};
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

  std::string host_;
  int port_;
  std::vector<Target> targets_;
  std::size_t next_ = 0;                 ///< localhost: the address of the next attempt
  std::string last_message_[2];          ///< localhost: what each address last said
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_CONNECT_HPP
