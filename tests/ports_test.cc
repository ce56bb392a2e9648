// Named free ports (pymanager/ports.hpp): `${port:NAME}` expansion, the
// environment variables, and the reservation's guarantees: outside the
// ephemeral range, free when handed out, never handed out twice while held
// (by allocators of one process or of two), given back at once when the
// holder dies, kept by a child forked without exec, private to a network
// namespace.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pymanager/ports.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

/// A listening socket on 127.0.0.1:port (the way services bind: SO_REUSEADDR).
class Listener {
 public:
  explicit Listener(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    ok_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 && ::listen(fd_, 4) == 0;
  }
  ~Listener() { ::close(fd_); }
  bool ok() const { return ok_; }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

/// An abstract unix socket bound by hand, the way another pymanager holds a
/// port's name: "pymanager-port-<P>", SOCK_STREAM. Written out here rather
/// than through the library, so that the name itself is what is tested.
class HeldName {
 public:
  explicit HeldName(int port) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const std::string name = "pymanager-port-" + std::to_string(port);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    name.copy(addr.sun_path + 1, name.size());  // sun_path[0] == '\0': abstract
    ok_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr),
                 static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size())) == 0;
  }
  ~HeldName() { ::close(fd_); }
  bool ok() const { return ok_; }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

/// `count` consecutive ports, all free now (neither bound nor reserved by
/// another pymanager) and outside the ephemeral range, for tests that need a
/// tiny range of their own.
struct SmallRange {
  pymanager::PortOptions options;
  int low = 0;
};

bool free_and_unreserved(int port) {
  return pymanager::detail::tcp_port_is_free(port) && pymanager::PortReservation::try_reserve(port).has_value();
}

SmallRange small_range(int count) {
  SmallRange range;
  auto [eph_low, eph_high] = pymanager::detail::ephemeral_port_range();
  (void)eph_high;
  std::mt19937 random(std::random_device{}());
  std::uniform_int_distribution<int> pick(10000, std::max(10001, eph_low - count - 1));
  for (int attempt = 0; attempt < 100; ++attempt) {
    int low = pick(random);
    bool all_free = true;
    for (int p = low; p < low + count; ++p) all_free = all_free && free_and_unreserved(p);
    if (!all_free) continue;
    range.low = low;
    range.options.low = low;
    range.options.high = low + count - 1;
    return range;
  }
  throw std::runtime_error("no free range found");
}

TEST(PortNames, EnvironmentVariableNames) {
  EXPECT_EQ(pymanager::port_environment_name("web"), "PYMANAGER_PORT_WEB");
  EXPECT_EQ(pymanager::port_environment_name("web-api.v2"), "PYMANAGER_PORT_WEB_API_V2");
  EXPECT_TRUE(pymanager::valid_port_name("db_1"));
  EXPECT_FALSE(pymanager::valid_port_name(""));
  EXPECT_FALSE(pymanager::valid_port_name("a b"));
  EXPECT_FALSE(pymanager::valid_port_name("a/b"));
}

TEST(ExpandPorts, EveryStringOfTheConfigOneReservationPerName) {
  pymanager::PortAllocator ports;
  auto json = nlohmann::ordered_json::parse(R"({
    "http": {"enabled": true, "port": "${port:api}"},
    "processes": {
      "web": {"executable": "server", "arguments": ["--port", "${port:web}", "--db=localhost:${port:db}", "${HOME}"],
              "verifier": {"type": "x", "arguments": {"url": "http://127.0.0.1:${port:web}/health"}}},
      "${port:web}": {"executable": "literal key", "arguments": []}
    }})");
  pymanager::expand_ports(json, ports);
  const std::string web = std::to_string(*ports.find("web"));
  const std::string db = std::to_string(*ports.find("db"));
  EXPECT_EQ(json["processes"]["web"]["arguments"],
            nlohmann::ordered_json::parse("[\"--port\", \"" + web + "\", \"--db=localhost:" + db + "\", \"${HOME}\"]"));
  EXPECT_EQ(json["processes"]["web"]["verifier"]["arguments"]["url"], "http://127.0.0.1:" + web + "/health");
  EXPECT_TRUE(json["http"]["port"].is_number_integer()) << "http.port stays a number";
  EXPECT_EQ(json["http"]["port"].get<int>(), *ports.find("api"));
  EXPECT_TRUE(json["processes"].contains("${port:web}")) << "keys are left alone";
  EXPECT_EQ(ports.ports().size(), 3u);
  std::set<int> distinct = {*ports.find("api"), *ports.find("web"), *ports.find("db")};
  EXPECT_EQ(distinct.size(), 3u);
  auto env = ports.environment();
  EXPECT_THAT(env, ::testing::ElementsAre("PYMANAGER_PORT_API=" + std::to_string(*ports.find("api")),
                                          "PYMANAGER_PORT_WEB=" + web, "PYMANAGER_PORT_DB=" + db));
}

TEST(ExpandPorts, MalformedPlaceholdersNameTheJsonPath) {
  pymanager::PortAllocator ports;
  auto expect_error = [&](const char* text, const std::string& message) {
    auto json = nlohmann::ordered_json::parse(text);
    try {
      pymanager::expand_ports(json, ports);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const pymanager::Error& e) {
      EXPECT_EQ(e.kind(), pymanager::ErrorKind::config_invalid);
      EXPECT_EQ(std::string(e.what()), message);
    }
  };
  expect_error(R"({"processes": {"web": {"arguments": ["a", "${port:}"]}}})",
               "processes.web.arguments[1]: bad port placeholder '${port:}': a port name is letters, digits, '_', '-' and '.'");
  expect_error(R"({"processes": {"web": {"arguments": ["--port=${port:web"]}}})",
               "processes.web.arguments[0]: unterminated placeholder '${port:web' (expected ${port:NAME})");
  expect_error(R"({"x": "${port:a b}"})", "x: bad port placeholder '${port:a b}': a port name is letters, digits, '_', '-' and '.'");
  EXPECT_TRUE(ports.ports().empty());
}

TEST(ExpandPorts, TheShellsDefaultValueSyntaxIsLeftAlone) {
  pymanager::PortAllocator ports;
  auto json = nlohmann::ordered_json::parse(
      R"({"processes": {"sh": {"arguments": ["-c", "serve --port ${port:-8080} ${port:=1} ${port:web}"]}}})");
  pymanager::expand_ports(json, ports);
  EXPECT_EQ(json["processes"]["sh"]["arguments"][1].get<std::string>(),
            "serve --port ${port:-8080} ${port:=1} " + std::to_string(*ports.find("web")));
  EXPECT_EQ(ports.ports().size(), 1u);
  EXPECT_FALSE(pymanager::valid_port_name("-8080"));
  EXPECT_FALSE(pymanager::valid_port_name(".hidden"));
}

TEST(PortAllocator, NamesThatShareAnEnvironmentVariableAreRefused) {
  pymanager::PortAllocator ports;
  ports.port("web-api");
  EXPECT_THROW(ports.port("web_api"), pymanager::Error);
}

TEST(ReservePort, PortsAreOutsideTheEphemeralRangeAndFreeAndDistinct) {
  auto [low, high] = pymanager::detail::ephemeral_port_range();
  pymanager::PortAllocator ports;
  std::set<int> seen;
  for (int i = 0; i < 20; ++i) {
    int port = ports.port("p" + std::to_string(i));
    EXPECT_TRUE(port < low || port > high) << port;
    EXPECT_GE(port, 10000);
    EXPECT_TRUE(seen.insert(port).second) << port << " twice";
    Listener listener(port);
    EXPECT_TRUE(listener.ok()) << "a service cannot bind " << port;
  }
}

TEST(ReservePort, TwoAllocatorsNeverHandOutTheSamePortWhileItIsHeld) {
  SmallRange range = small_range(4);
  pymanager::PortAllocator a(range.options), b(range.options), c(range.options);
  std::set<int> seen = {a.port("x"), a.port("y"), b.port("x"), b.port("y")};
  EXPECT_EQ(seen.size(), 4u) << "the four ports of the range, each once";
  try {
    c.port("x");
    ADD_FAILURE() << "a fifth port from a range of four";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no free port in " + std::to_string(range.low) + "-" + std::to_string(range.low + 3)));
  }
  std::set<int> given_back = {*b.find("x"), *b.find("y")};
  b.release();
  EXPECT_TRUE(given_back.count(c.port("x"))) << "one of the ports b gave back";
}

TEST(ReservePort, APortSomeoneListensOnIsNotHandedOut) {
  SmallRange range = small_range(2);
  Listener busy(range.low);
  ASSERT_TRUE(busy.ok());
  for (int i = 0; i < 5; ++i) {
    pymanager::PortAllocator ports(range.options);
    EXPECT_EQ(ports.port("web"), range.low + 1);
  }
}

TEST(ReservePort, AReservationIsGivenBackAtOnceWhenItsHolderIsKilled) {
  SmallRange range = small_range(1);
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t holder = ::fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    ::close(ready[0]);
    auto reservation = pymanager::reserve_port(range.options);
    char ok = reservation.port() == range.low ? 'y' : 'n';
    ssize_t ignored = ::write(ready[1], &ok, 1);
    (void)ignored;
    ::pause();  // until SIGKILL
    ::_exit(0);
  }
  ::close(ready[1]);
  char ok = 0;
  ASSERT_EQ(::read(ready[0], &ok, 1), 1);
  ::close(ready[0]);
  EXPECT_EQ(ok, 'y');
  EXPECT_THROW(pymanager::reserve_port(range.options), pymanager::Error) << "held by the other process";
  ::kill(holder, SIGKILL);
  int status;
  ASSERT_EQ(::waitpid(holder, &status, 0), holder);
  EXPECT_EQ(pymanager::reserve_port(range.options).port(), range.low);
}

TEST(ReservePort, ManyThreadsAtOnceGetDistinctPorts) {
  constexpr int kThreads = 8, kEach = 4;
  std::vector<std::unique_ptr<pymanager::PortAllocator>> allocators;
  for (int t = 0; t < kThreads; ++t) allocators.push_back(std::make_unique<pymanager::PortAllocator>());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kEach; ++k) allocators[t]->port("p" + std::to_string(k));
    });
  }
  for (auto& thread : threads) thread.join();
  std::set<int> seen;
  for (const auto& allocator : allocators) {
    for (const auto& entry : allocator->ports()) seen.insert(entry.second);
  }
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(kThreads * kEach));
}

/// Every int written to `fd` until its end.
std::vector<int> read_ints(int fd) {
  std::vector<int> out;
  int value = 0;
  while (::read(fd, &value, sizeof value) == static_cast<ssize_t>(sizeof value)) out.push_back(value);
  return out;
}

/// Reserves ports with `allocator` until the range is exhausted, or at most
/// `limit` (a broken reservation would never exhaust it).
std::vector<int> reserve_all(pymanager::PortAllocator& allocator, int limit) {
  std::vector<int> out;
  for (int i = 0; i < limit; ++i) {
    try {
      out.push_back(allocator.port("p" + std::to_string(i)));
    } catch (const pymanager::Error&) {
      return out;
    }
  }
  return out;
}

TEST(ReservePort, TwoAllocatorsOfOneProcessShareARangeOfTwentyWithoutOverlap) {
  SmallRange range = small_range(20);
  pymanager::PortAllocator a(range.options), b(range.options);
  std::vector<int> mine, theirs;
  // Interleaved, so that each walks into the ports the other holds.
  for (int i = 0; i < 10; ++i) {
    mine.push_back(a.port("p" + std::to_string(i)));
    theirs.push_back(b.port("p" + std::to_string(i)));
  }
  std::set<int> all(mine.begin(), mine.end());
  all.insert(theirs.begin(), theirs.end());
  EXPECT_EQ(all.size(), 20u) << "each port of the range once";
  EXPECT_EQ(*all.begin(), range.low);
  EXPECT_EQ(*all.rbegin(), range.low + 19);
  EXPECT_THROW(a.port("one more"), pymanager::Error);
}

TEST(ReservePort, TwoProcessesReservingAtOnceNeverGetTheSamePort) {
  SmallRange range = small_range(20);
  // The range from the environment, as a whole test suite would set it; the
  // child inherits it.
  testutil::ScopedEnv env("PYMANAGER_PORT_RANGE", std::to_string(range.low) + "-" + std::to_string(range.low + 19));
  int go[2], report[2], hold[2];
  ASSERT_EQ(::pipe(go), 0);
  ASSERT_EQ(::pipe(report), 0);
  ASSERT_EQ(::pipe(hold), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(go[1]);
    ::close(report[0]);
    ::close(hold[1]);
    char byte;
    if (::read(go[0], &byte, 1) != 1) ::_exit(2);
    pymanager::PortAllocator allocator;
    for (int port : reserve_all(allocator, 40)) {
      if (::write(report[1], &port, sizeof port) != static_cast<ssize_t>(sizeof port)) ::_exit(3);
    }
    ::close(report[1]);
    // Holds its ports until the parent has compared them.
    while (::read(hold[0], &byte, 1) > 0) {
    }
    ::_exit(0);
  }
  ::close(go[0]);
  ::close(report[1]);
  ::close(hold[0]);
  pymanager::PortAllocator allocator;
  ASSERT_EQ(::write(go[1], "g", 1), 1);  // both start now
  std::vector<int> mine = reserve_all(allocator, 40);
  std::vector<int> theirs = read_ints(report[0]);
  ::close(report[0]);
  std::set<int> all(mine.begin(), mine.end());
  for (int port : theirs) EXPECT_TRUE(all.insert(port).second) << port << " handed out to both processes";
  EXPECT_EQ(all.size(), 20u) << "the two processes together got the whole range (" << mine.size() << " and "
                             << theirs.size() << ")";
  ::close(hold[1]);
  ::close(go[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(ReservePort, APortWhoseNameSomeoneElseHoldsIsSkipped) {
  SmallRange range = small_range(2);
  HeldName held(range.low);
  ASSERT_TRUE(held.ok());
  for (int i = 0; i < 5; ++i) {
    pymanager::PortAllocator ports(range.options);
    EXPECT_EQ(ports.port("web"), range.low + 1);
  }
}

TEST(ReservePort, AnExhaustedRangeIsNamedInTheError) {
  SmallRange range = small_range(1);
  const std::string name = std::to_string(range.low) + "-" + std::to_string(range.low);
  {
    HeldName held(range.low);
    ASSERT_TRUE(held.ok());
    try {
      pymanager::reserve_port(range.options);
      FAIL() << "a port whose name is held was handed out";
    } catch (const pymanager::Error& e) {
      EXPECT_EQ(e.kind(), pymanager::ErrorKind::system);
      EXPECT_EQ(std::string(e.what()), "no free port in " + name +
                                           " after 1 attempts: 1 reserved by other pymanagers (or this one) in this "
                                           "network namespace, 0 bound by other programs");
    }
  }
  Listener busy(range.low);
  ASSERT_TRUE(busy.ok());
  try {
    pymanager::reserve_port(range.options);
    FAIL() << "a bound port was handed out";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no free port in " + name + " after 1 attempts: 0 reserved"));
    EXPECT_THAT(e.what(), HasSubstr("1 bound by other programs"));
  }
}

TEST(ReservePort, TheReservationIsAnAbstractSocketNamedAfterThePort) {
  SmallRange range = small_range(1);
  auto reservation = pymanager::reserve_port(range.options);
  ASSERT_EQ(reservation.port(), range.low);
  const std::string name = "@pymanager-port-" + std::to_string(range.low);
  EXPECT_EQ(reservation.name(), name);
  // What `ss -x` reads: the kernel's list of unix sockets, abstract names
  // with a leading '@'.
  auto listed = [&] {
    std::ifstream in("/proc/net/unix");
    std::string line;
    while (std::getline(in, line)) {
      if (line.size() >= name.size() && line.compare(line.size() - name.size(), name.size(), name) == 0) return true;
    }
    return false;
  };
  EXPECT_TRUE(listed());
  EXPECT_FALSE(HeldName(range.low).ok()) << "the name is bound";
  reservation.release();
  EXPECT_FALSE(listed()) << "released: the name is gone at once";
  EXPECT_TRUE(HeldName(range.low).ok());
  EXPECT_EQ(reservation.name(), "");
}

TEST(ReservePort, AChildForkedWithoutExecKeepsTheReservationUntilItExits) {
  // The binary's daemon mode: the parent reserves, forks and exits; the
  // daemon must still hold the ports.
  SmallRange range = small_range(1);
  auto reservation = pymanager::reserve_port(range.options);
  int hold[2];
  ASSERT_EQ(::pipe(hold), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(hold[1]);
    char byte;
    while (::read(hold[0], &byte, 1) > 0) {
    }
    ::_exit(0);
  }
  ::close(hold[0]);
  reservation.release();  // the parent lets go; the child still has the socket
  EXPECT_THROW(pymanager::reserve_port(range.options), pymanager::Error) << "the forked child holds it";
  ::close(hold[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(pymanager::reserve_port(range.options).port(), range.low) << "given back when the child exited";
}

TEST(ReservePort, AnExecdChildHoldsNothing) {
  SmallRange range = small_range(1);
  auto reservation = pymanager::reserve_port(range.options);
  int input[2], exec_done[2];
  ASSERT_EQ(::pipe(input), 0);
  ASSERT_EQ(::pipe2(exec_done, O_CLOEXEC), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(input[0], STDIN_FILENO);
    ::close(input[0]);
    ::close(input[1]);
    ::close(exec_done[0]);
    ::execl("/bin/cat", "cat", static_cast<char*>(nullptr));  // waits for the end of its input
    ::_exit(127);
  }
  ::close(input[0]);
  ::close(exec_done[1]);
  char byte;
  ASSERT_EQ(::read(exec_done[0], &byte, 1), 0) << "the exec happened (the close-on-exec pipe closed)";
  ::close(exec_done[0]);
  reservation.release();
  EXPECT_EQ(pymanager::reserve_port(range.options).port(), range.low) << "cat, still running, holds nothing";
  ::close(input[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(ReservePort, APrivateNetworkNamespaceSharesNothing) {
  SmallRange range = small_range(1);
  auto reservation = pymanager::reserve_port(range.options);
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(report[0]);
    char verdict = 's';
    if (::unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0) {
      try {
        verdict = pymanager::reserve_port(range.options).port() == range.low ? 'y' : 'n';
      } catch (const pymanager::Error&) {
        verdict = 'n';
      }
    }
    ssize_t ignored = ::write(report[1], &verdict, 1);
    (void)ignored;
    ::_exit(0);
  }
  ::close(report[1]);
  char verdict = 0;
  ASSERT_EQ(::read(report[0], &verdict, 1), 1);
  ::close(report[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  if (verdict == 's') GTEST_SKIP() << "no user and network namespaces here (unshare refused)";
  EXPECT_EQ(verdict, 'y') << "in its own network namespace, the port held outside is free";
}

TEST(ReservePort, RangesFromTheEnvironmentAreChecked) {
  EXPECT_EQ(pymanager::detail::parse_port_range("20000-20010"), std::make_pair(20000, 20010));
  EXPECT_FALSE(pymanager::detail::parse_port_range("20010-20000"));
  EXPECT_FALSE(pymanager::detail::parse_port_range("0-10"));
  EXPECT_FALSE(pymanager::detail::parse_port_range("x-10"));
  EXPECT_FALSE(pymanager::detail::parse_port_range("20000"));
}

}  // namespace
