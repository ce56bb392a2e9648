// Named free ports (pymanager/ports.hpp): `${port:NAME}` expansion, the
// environment variables, and the reservation's guarantees: outside the
// ephemeral range, free when handed out, never handed out twice while held,
// given back when the holder dies.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
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

/// `count` consecutive ports, all free now and outside the ephemeral range,
/// for tests that need a tiny range of their own. Uses a private lock folder
/// with them, so that other tests' reservations cannot interfere.
struct SmallRange {
  pymanager::PortOptions options;
  int low = 0;
};

SmallRange small_range(int count) {
  SmallRange range;
  range.options.lock_directory = testutil::make_temp_dir();
  auto [eph_low, eph_high] = pymanager::detail::ephemeral_port_range();
  (void)eph_high;
  std::mt19937 random(std::random_device{}());
  std::uniform_int_distribution<int> pick(10000, std::max(10001, eph_low - count - 1));
  for (int attempt = 0; attempt < 100; ++attempt) {
    int low = pick(random);
    bool all_free = true;
    for (int p = low; p < low + count; ++p) all_free = all_free && pymanager::detail::tcp_port_is_free(p);
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

TEST(ReservePort, TheLockIsGivenBackWhenItsHolderDies) {
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

TEST(ReservePort, APlantedLinkSkipsItsPortInsteadOfFailingTheReservation) {
  // A dangling link for the first port of a two-port range: every
  // reservation gets the second one (it used to fail half of the time).
  SmallRange range = small_range(2);
  const std::string link = range.options.lock_directory + "/" + std::to_string(range.low) + ".lock";
  ASSERT_EQ(::symlink("/nonexistent/target", link.c_str()), 0);
  for (int i = 0; i < 10; ++i) {
    auto reservation = pymanager::reserve_port(range.options);
    EXPECT_EQ(reservation.port(), range.low + 1);
  }
  struct stat st {};
  EXPECT_EQ(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the planted link was replaced or followed";
  EXPECT_NE(::access("/nonexistent/target", F_OK), 0);
  // With only the planted port left, the error says why.
  SmallRange one = small_range(1);
  ASSERT_EQ(::symlink("/nonexistent/target", (one.options.lock_directory + "/" + std::to_string(one.low) + ".lock").c_str()), 0);
  try {
    pymanager::reserve_port(one.options);
    FAIL() << "a port whose lock is a planted link was handed out";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("1 lock files could not be taken, e.g. " + one.options.lock_directory + "/" +
                                    std::to_string(one.low) + ".lock: Too many levels of symbolic links"));
  }
}

TEST(ReservePort, ALockFolderThatIsALinkOrNotOursIsNamedClearly) {
  std::string dir = testutil::make_temp_dir();
  ASSERT_EQ(::symlink(dir.c_str(), (dir + "-link").c_str()), 0);
  pymanager::PortOptions options;
  options.lock_directory = dir + "-link";
  try {
    pymanager::reserve_port(options);
    FAIL() << "a linked lock folder was used";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("port lock folder " + dir + "-link: is a symbolic link"));
  }
  if (::geteuid() == 0) GTEST_SKIP() << "root can write any folder: the ownership message is not reachable";
  ASSERT_EQ(::chmod(dir.c_str(), 0555), 0);
  options.lock_directory = dir;
  try {
    pymanager::reserve_port(options);
    FAIL() << "a folder without write permission was used";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("and you cannot create locks in it: set PYMANAGER_PORT_DIR"));
  }
}

TEST(ReservePort, RangesFromTheEnvironmentAreChecked) {
  EXPECT_EQ(pymanager::detail::parse_port_range("20000-20010"), std::make_pair(20000, 20010));
  EXPECT_FALSE(pymanager::detail::parse_port_range("20010-20000"));
  EXPECT_FALSE(pymanager::detail::parse_port_range("0-10"));
  EXPECT_FALSE(pymanager::detail::parse_port_range("x-10"));
  EXPECT_FALSE(pymanager::detail::parse_port_range("20000"));
}

}  // namespace
