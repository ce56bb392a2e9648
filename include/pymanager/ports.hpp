// pymanager: free ports by name, so that tests running at the same time never
// collide. A config asks for one with `${port:NAME}` in any string; each name
// gets one port per PortAllocator (one per manager), reserved until released.
//
//   pymanager::PortAllocator ports;
//   nlohmann::ordered_json json = pymanager::read_config_json("cfg.json");
//   pymanager::expand_ports(json, ports);   // "${port:web}" -> "20417"
//   pymanager::ManagerOptions options;
//   options.extra_environment = ports.environment();   // PYMANAGER_PORT_WEB=20417
//
// How a port P is reserved: by binding an abstract unix socket (SOCK_STREAM,
// never listening) named "pymanager-port-P" (`ss -xlp | grep pymanager-port`
// shows who holds which). Abstract names live in the network namespace, as
// the port itself does, and not in any file system.
//
// What a reservation guarantees (TCP, one network namespace):
// - no two pymanagers in the same network namespace, whichever user runs
//   them, hand out the same port while its holder lives: the name of P is
//   bound by one socket at a time, and an abstract name is shared by every
//   user of the namespace, on purpose (so is the port);
// - it is released when the holder exits, however it exits (SIGKILL
//   included): the kernel unbinds the name with the last descriptor of the
//   socket. No file is left behind, nothing needs cleaning, and a private
//   /tmp (Bazel 7's default for tests) changes nothing;
// - a process forked without exec (the binary's daemon mode) inherits the
//   descriptor and keeps the reservation after its parent exits; the
//   descriptor is close-on-exec, so an exec'd child holds nothing;
// - the port is outside the kernel's ephemeral range
//   (/proc/sys/net/ipv4/ip_local_port_range), so no outgoing connection and
//   no bind to port 0 by anyone can take it;
// - nothing was bound to it (0.0.0.0 or [::], without SO_REUSEADDR) when it
//   was reserved (checked after the name was taken).
// In a private network namespace (a sandboxed test with no network, `unshare
// -n`) nothing is shared with the rest of the machine: neither the ports nor
// their names, and no coordination is needed.
// What it does not guarantee: a program that binds a fixed port without
// asking pymanager can still take it between the reservation and the bind by
// the service. A child forked without exec holds the names of its parent's
// reservations until it execs or exits, even after the parent released them.
#ifndef PYMANAGER_PORTS_HPP
#define PYMANAGER_PORTS_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/json_check.hpp"
#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {

/// Where ports come from. Every field has a default that the environment can
/// override, so that a whole test suite is configured without code. (There is
/// no lock folder any more: PYMANAGER_PORT_DIR and PortOptions::lock_directory
/// are gone; see the top of this file.)
struct PortOptions {
  /// The ports to choose from, inclusive. 0: the environment variable
  /// PYMANAGER_PORT_RANGE ("LOW-HIGH", used as given), else 10000-65535
  /// without the kernel's ephemeral range.
  int low = 0;
  int high = 0;
  /// How many random candidates are tried before giving up (a range that
  /// small is tried port by port, each once).
  int attempts = 1000;
};

namespace detail {

/// The kernel's ephemeral range, from which outgoing connections and binds
/// to port 0 take their ports. Linux's default when it cannot be read.
inline std::pair<int, int> ephemeral_port_range() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0, high = 0;
  if (in >> low >> high && low > 0 && high >= low) return {low, high};
  return {32768, 60999};
}

/// Parses "LOW-HIGH"; nullopt when malformed.
inline std::optional<std::pair<int, int>> parse_port_range(const std::string& text) {
  auto dash = text.find('-');
  if (dash == std::string::npos || dash == 0 || dash + 1 >= text.size()) return std::nullopt;
  std::string a = text.substr(0, dash), b = text.substr(dash + 1);
  for (const auto* s : {&a, &b}) {
    if (s->size() > 5 || s->find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  }
  int low = std::stoi(a), high = std::stoi(b);
  if (low < 1 || high > 65535 || low > high) return std::nullopt;
  return std::make_pair(low, high);
}

/// The candidate ports as inclusive intervals, and a description for errors.
inline std::vector<std::pair<int, int>> candidate_port_intervals(const PortOptions& options, std::string& description) {
  if (options.low != 0 || options.high != 0) {
    if (options.low < 1 || options.high > 65535 || options.low > options.high) {
      throw Error(ErrorKind::invalid_argument, "port range " + std::to_string(options.low) + "-" +
                                                   std::to_string(options.high) + " is not a range of ports");
    }
    description = std::to_string(options.low) + "-" + std::to_string(options.high);
    return {{options.low, options.high}};
  }
  if (const char* env = std::getenv("PYMANAGER_PORT_RANGE"); env != nullptr && *env != '\0') {
    auto range = parse_port_range(env);
    if (!range) throw Error(ErrorKind::invalid_argument, std::string("PYMANAGER_PORT_RANGE: expected LOW-HIGH, got '") + env + "'");
    description = std::string(env) + " (PYMANAGER_PORT_RANGE)";
    return {*range};
  }
  auto [eph_low, eph_high] = ephemeral_port_range();
  std::vector<std::pair<int, int>> out;
  constexpr int kLow = 10000, kHigh = 65535;
  if (eph_low > kLow) out.emplace_back(kLow, std::min(kHigh, eph_low - 1));
  if (eph_high < kHigh) out.emplace_back(std::max(kLow, eph_high + 1), kHigh);
  for (const auto& interval : out) {
    description += (description.empty() ? "" : ", ") + std::to_string(interval.first) + "-" + std::to_string(interval.second);
  }
  if (out.empty()) {
    throw Error(ErrorKind::invalid_argument, "the kernel's ephemeral port range " + std::to_string(eph_low) + "-" +
                                                 std::to_string(eph_high) +
                                                 " leaves no port above 10000; set PYMANAGER_PORT_RANGE");
  }
  description += " (outside the ephemeral range " + std::to_string(eph_low) + "-" + std::to_string(eph_high) + ")";
  return out;
}

/// The abstract unix socket name that stands for `port` (without the leading
/// '\0' of sun_path). Every pymanager must use this name and SOCK_STREAM: the
/// socket type is part of an abstract name's identity.
inline std::string port_reservation_name(int port) { return "pymanager-port-" + std::to_string(port); }

/// Binds `name` as an abstract unix socket; an empty descriptor with errno
/// set when it cannot (EADDRINUSE: someone holds it).
inline UniqueFd bind_abstract_name(const std::string& name) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fd;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (name.size() + 1 > sizeof addr.sun_path) {
    errno = ENAMETOOLONG;
    return UniqueFd();
  }
  // sun_path[0] == '\0': abstract; the name is the bytes after it, no terminator.
  name.copy(addr.sun_path + 1, name.size());
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), length) != 0) {
    int err = errno;
    fd.reset();
    errno = err;
  }
  return fd;
}

/// True when nothing is bound to `port` on any IPv4 or IPv6 address: a bind
/// to the wildcard address without SO_REUSEADDR fails otherwise (a socket in
/// TIME_WAIT on that port counts as bound, which is on the safe side).
inline bool tcp_port_is_free(int port) {
  {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return false;
  }
  UniqueFd fd(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return true;  // no IPv6 on this machine
  int one = 1;
  // IPv6 only: the IPv4 side was checked above.
  ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_any;
  addr.sin6_port = htons(static_cast<std::uint16_t>(port));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return true;
  return errno == EADDRNOTAVAIL || errno == EAFNOSUPPORT;
}

}  // namespace detail

/// One reserved port: the abstract socket named after it stays bound until
/// release() or destruction (or the exit of the process, and of every child
/// forked without exec that inherited it).
class PortReservation {
 public:
  PortReservation() = default;
  PortReservation(int port, detail::UniqueFd socket) : port_(port), socket_(std::move(socket)) {}
  PortReservation(PortReservation&& other) noexcept
      : port_(std::exchange(other.port_, 0)), socket_(std::move(other.socket_)) {}
  PortReservation& operator=(PortReservation&& other) noexcept {
    if (this != &other) {
      release();
      port_ = std::exchange(other.port_, 0);
      socket_ = std::move(other.socket_);
    }
    return *this;
  }
  PortReservation(const PortReservation&) = delete;
  PortReservation& operator=(const PortReservation&) = delete;
  ~PortReservation() { release(); }

  int port() const { return port_; }
  explicit operator bool() const { return port_ != 0; }
  /// The abstract socket name that holds the port, as `ss -x` shows it
  /// ("@pymanager-port-20417"); empty when nothing is reserved.
  std::string name() const { return port_ == 0 ? std::string() : "@" + detail::port_reservation_name(port_); }

  /// Gives the port back: closing the socket unbinds its name at once
  /// (unless a child forked without exec still holds a copy).
  void release() noexcept {
    socket_.reset();
    port_ = 0;
  }

  /// Takes the name of `port` without waiting; nullopt when someone else
  /// holds it. Throws ErrorKind::system when abstract unix sockets cannot be
  /// bound at all (no port could be reserved then).
  static std::optional<PortReservation> try_reserve(int port) {
    const std::string name = detail::port_reservation_name(port);
    detail::UniqueFd fd = detail::bind_abstract_name(name);
    if (fd) return PortReservation(port, std::move(fd));
    if (errno == EADDRINUSE) return std::nullopt;
    throw_system_error("port reservation: bind of the abstract unix socket @" + name);
  }

 private:
  int port_ = 0;
  detail::UniqueFd socket_;
};

/// Reserves a port (see the guarantees at the top of this file). Throws
/// ErrorKind::system when none is found.
inline PortReservation reserve_port(const PortOptions& options = {}) {
  std::string description;
  auto intervals = detail::candidate_port_intervals(options, description);
  long total = 0;
  for (const auto& interval : intervals) total += interval.second - interval.first + 1;
  auto nth = [&](long k) {
    for (const auto& interval : intervals) {
      long size = interval.second - interval.first + 1;
      if (k < size) return static_cast<int>(interval.first + k);
      k -= size;
    }
    return intervals.back().second;
  };
  std::random_device seed;
  std::mt19937_64 random(seed());
  std::uniform_int_distribution<long> pick(0, total - 1);
  const long tries = std::min<long>(total, std::max(1, options.attempts));
  // A small range is walked from a random start, so that each port is tried
  // once; a large one is sampled at random.
  const long start = pick(random);
  long held = 0, bound = 0;
  for (long k = 0; k < tries; ++k) {
    int port = total <= options.attempts ? nth((start + k) % total) : nth(pick(random));
    auto reservation = PortReservation::try_reserve(port);
    if (!reservation) {
      ++held;
      continue;
    }
    // Checked with the name held: no other pymanager can be testing it now.
    if (detail::tcp_port_is_free(port)) return std::move(*reservation);
    ++bound;
  }
  throw Error(ErrorKind::system, "no free port in " + description + " after " + std::to_string(tries) +
                                     " attempts: " + std::to_string(held) + " reserved by other pymanagers (or " +
                                     "this one) in this network namespace, " + std::to_string(bound) +
                                     " bound by other programs");
}

/// The environment variable that carries a named port to the children:
/// PYMANAGER_PORT_ and the name upper-cased, other characters than letters
/// and digits as '_' ("web-api" -> PYMANAGER_PORT_WEB_API).
inline std::string port_environment_name(const std::string& name) {
  std::string out = "PYMANAGER_PORT_";
  for (char c : name) {
    if (c >= 'a' && c <= 'z') {
      out += static_cast<char>(c - 'a' + 'A');
    } else if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
      out += c;
    } else {
      out += '_';
    }
  }
  return out;
}

/// A port name: letters, digits, '_', '-' and '.', not starting with '-' or
/// '.' (so that the shell's `${port:-8080}` is not taken for a port).
inline bool valid_port_name(const std::string& name) {
  if (name.empty() || name.size() > 100 || name[0] == '-' || name[0] == '.') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

/// Named ports, each reserved on first use and held until release() or
/// destruction. Thread-safe.
class PortAllocator {
 public:
  explicit PortAllocator(const PortOptions& options = {}) : options_(options) {}
  PortAllocator(const PortAllocator&) = delete;
  PortAllocator& operator=(const PortAllocator&) = delete;

  /// The port named `name`, reserved now if this is its first use. Throws
  /// ErrorKind::invalid_argument for a bad name, system when no port is free.
  int port(const std::string& name) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& entry : ports_) {
      if (entry.first == name) return entry.second.port();
    }
    if (!valid_port_name(name)) {
      throw Error(ErrorKind::invalid_argument, "bad port name '" + name + "': use letters, digits, '_', '-' and '.'");
    }
    const std::string variable = port_environment_name(name);
    for (const auto& entry : ports_) {
      if (port_environment_name(entry.first) == variable) {
        throw Error(ErrorKind::invalid_argument, "port names '" + entry.first + "' and '" + name +
                                                     "' would share the environment variable " + variable);
      }
    }
    ports_.emplace_back(name, reserve_port(options_));
    return ports_.back().second.port();
  }

  /// The port named `name` if it is reserved.
  std::optional<int> find(const std::string& name) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& entry : ports_) {
      if (entry.first == name) return entry.second.port();
    }
    return std::nullopt;
  }

  /// Every reserved port, in the order of first use.
  std::vector<std::pair<std::string, int>> ports() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::pair<std::string, int>> out;
    for (const auto& entry : ports_) out.emplace_back(entry.first, entry.second.port());
    return out;
  }

  /// `PYMANAGER_PORT_<NAME>=<port>` for every reserved port, for
  /// ManagerOptions::extra_environment.
  std::vector<std::string> environment() const {
    std::vector<std::string> out;
    for (const auto& entry : ports()) out.push_back(port_environment_name(entry.first) + "=" + std::to_string(entry.second));
    return out;
  }

  /// Gives every port back.
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    ports_.clear();
  }

 private:
  PortOptions options_;
  mutable std::mutex mutex_;
  std::vector<std::pair<std::string, PortReservation>> ports_;
};

namespace detail {

/// Replaces each `${port:NAME}` in `text`; other `${...}`, and the shell's
/// `${port:-default}` forms, are left alone (a shell script may use them). `path` names the JSON value in errors.
inline std::string expand_port_placeholders(const std::string& text, PortAllocator& ports, const std::string& path) {
  const char* const kOpen = "${port:";
  const std::size_t kOpenSize = 7;
  std::string out;
  std::size_t pos = 0;
  for (;;) {
    std::size_t open = text.find(kOpen, pos);
    if (open == std::string::npos) break;
    // The shell's ${port:-default}, ${port:=x}, ${port:+x}, ${port:?x}: not ours.
    if (open + kOpenSize < text.size() && std::string("-=+?").find(text[open + kOpenSize]) != std::string::npos) {
      out.append(text, pos, open + kOpenSize - pos);
      pos = open + kOpenSize;
      continue;
    }
    std::size_t close = text.find('}', open + kOpenSize);
    if (close == std::string::npos) {
      throw_config_error(path, "unterminated placeholder '" + text.substr(open) + "' (expected ${port:NAME})");
    }
    std::string name = text.substr(open + kOpenSize, close - open - kOpenSize);
    if (!valid_port_name(name)) {
      throw_config_error(path, "bad port placeholder '" + text.substr(open, close - open + 1) +
                                   "': a port name is letters, digits, '_', '-' and '.'");
    }
    int port;
    try {
      port = ports.port(name);
    } catch (const Error& e) {
      throw Error(e.kind(), path + ": cannot reserve port '" + name + "': " + e.what());
    }
    out.append(text, pos, open - pos);
    out += std::to_string(port);
    pos = close + 1;
  }
  if (pos == 0) return text;
  out.append(text, pos, std::string::npos);
  return out;
}

template <class Json>
void expand_ports_at(Json& value, PortAllocator& ports, const std::string& path) {
  if (value.is_string()) {
    const std::string& text = value.template get_ref<const std::string&>();
    if (text.find("${port:") == std::string::npos) return;
    std::string expanded = expand_port_placeholders(text, ports, path);
    // http.port is a number: a string that is exactly one placeholder
    // becomes the number itself there.
    // (A shell form such as "${port:-80}" is left as it is: the parser then
    // says that http.port wants a number.)
    const bool number = !expanded.empty() && expanded.size() <= 5 &&
                        expanded.find_first_not_of("0123456789") == std::string::npos;
    if (path == "http.port" && number && text.rfind("${port:", 0) == 0 && text.back() == '}' &&
        text.find('}') == text.size() - 1) {
      value = std::stoi(expanded);
    } else {
      value = expanded;
    }
  } else if (value.is_object()) {
    for (auto it = value.begin(); it != value.end(); ++it) expand_ports_at(it.value(), ports, join_path(path, it.key()));
  } else if (value.is_array()) {
    for (std::size_t i = 0; i < value.size(); ++i) expand_ports_at(value[i], ports, path + "[" + std::to_string(i) + "]");
  }
}

}  // namespace detail

/// Replaces every `${port:NAME}` in the string values of a config (keys are
/// left alone) with the port `ports` reserves for NAME, the same one for
/// every use of a name. `"http": {"port": "${port:api}"}` becomes a number.
/// Do it before parse_config, so that verifier URLs are checked with their
/// real ports. Throws ErrorKind::config_invalid naming the JSON path of a
/// malformed placeholder, or system when no port is free.
template <class Json>
void expand_ports(Json& config, PortAllocator& ports) {
  detail::check_nesting(config);  // the walk below is recursive
  detail::expand_ports_at(config, ports, "");
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_PORTS_HPP
