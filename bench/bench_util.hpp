// What the benchmarks share: clocks, medians, the hand-written floor's
// spawn and stop, loopback ports, the helper programs next to the benchmark,
// a Manager's phases timed apart, the rows of the ratio tables.
#ifndef PYMANAGER_BENCH_BENCH_UTIL_HPP
#define PYMANAGER_BENCH_BENCH_UTIL_HPP

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "pymanager/pymanager.hpp"

namespace bench {

using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC on Linux

inline double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

inline double ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

/// CLOCK_MONOTONIC in nanoseconds, the clock the children print.
inline long long monotonic_ns() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// A helper program built next to this benchmark (bench/BUILD.bazel's data).
inline std::string helper(const std::string& name) {
  char buffer[4096];
  ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof buffer - 1);
  std::string self = n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : std::string();
  std::string path = self.substr(0, self.rfind('/') + 1) + name;
  if (::access(path.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "bench: helper %s not found next to the benchmark\n", path.c_str());
    std::exit(1);
  }
  return path;
}

/// The floor's spawn: posix_spawn (a fork and exec that copies nothing of
/// this process, whatever its size) into a process group of its own;
/// returns once the exec succeeded, as the keeper's spawn does. `out`: the
/// child's stdout, or -1 to keep ours.
inline pid_t spawn(const std::vector<std::string>& args, int out = -1) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  ::posix_spawn_file_actions_init(&actions);
  ::posix_spawnattr_init(&attr);
  if (out >= 0) ::posix_spawn_file_actions_adddup2(&actions, out, STDOUT_FILENO);
  ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  ::posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = 0;
  int err = ::posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), environ);
  ::posix_spawnattr_destroy(&attr);
  ::posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    std::fprintf(stderr, "bench: cannot start %s: %s\n", args[0].c_str(), std::strerror(err));
    std::exit(1);
  }
  return pid;
}

inline void reap(pid_t pid) {
  int status;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

/// The floor's stop: SIGTERM to each, then waitpid of all.
inline void stop_all(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) ::kill(p, SIGTERM);
  for (pid_t p : pids) reap(p);
}

/// How long the two halves of bringing processes up and down took.
struct UpDown {
  double start_ms = 0, stop_ms = 0;
};

/// The floor for n sleeps: spawn() of n `/bin/sleep 1000` (start_ms), then
/// stop_all() of them (stop_ms).
inline UpDown floor_sleepers(int n) {
  UpDown result;
  std::vector<pid_t> pids;
  pids.reserve(static_cast<std::size_t>(n));
  auto start = Clock::now();
  for (int i = 0; i < n; ++i) pids.push_back(spawn({"/bin/sleep", "1000"}));
  result.start_ms = ms_since(start);
  start = Clock::now();
  stop_all(pids);
  result.stop_ms = ms_since(start);
  return result;
}

/// 127.0.0.1:`port` (0: the kernel picks one at bind).
inline sockaddr_in loopback(int port = 0) {
  sockaddr_in addr {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<unsigned short>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

/// A loopback port that was free a moment ago.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = loopback();
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("bench: free port");
    std::exit(1);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

inline bool accepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = loopback(port);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

/// The floor's readiness check: tries each port every millisecond until all
/// accept a connection. Exits the benchmark after 30 s.
inline void wait_all_accept(std::vector<int> ports) {
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (!ports.empty()) {
    ports.erase(std::remove_if(ports.begin(), ports.end(), accepts), ports.end());
    if (ports.empty()) return;
    if (Clock::now() > deadline) {
      std::fprintf(stderr, "bench: port %d never accepted a connection\n", ports.front());
      std::exit(1);
    }
    struct timespec pause = {0, 1000000};
    ::nanosleep(&pause, nullptr);
  }
}

inline pymanager::Config config_of(const std::string& text) {
  return pymanager::parse_config(nlohmann::ordered_json::parse(text), pymanager::builtin_verifiers());
}

inline pymanager::ManagerOptions quiet() {
  pymanager::ManagerOptions options;
  options.log = [](const std::string&) {};
  options.output_fd = -1;
  return options;
}

/// Bounded: the shutdown's stop plans bound it; a stuck one ends the run.
inline void shut_down(pymanager::Manager& manager) {
  manager.shutdown();
  if (!manager.wait_finished(std::chrono::seconds(120))) {
    std::fprintf(stderr, "bench: the Manager did not finish its shutdown within 120 s\n");
    std::exit(1);
  }
}

/// `n` sleeps named s0, s1, ... (`depends_on`: each with "depends_on": [],
/// so that all start at once).
inline pymanager::Config sleepers(int n, bool depends_on) {
  std::string processes;
  for (int i = 0; i < n; ++i) {
    processes += std::string(i ? "," : "") + "\"s" + std::to_string(i) +
                 R"(": {"executable": "/bin/sleep", "arguments": ["1000"])" +
                 (depends_on ? R"(, "depends_on": [])" : "") + "}";
  }
  return config_of("{\"processes\": {" + processes + "}}");
}

/// How long each phase of a Manager's life took.
struct Phases {
  double construct_ms = 0;  ///< the constructor (it starts the keeper)
  double start_ms = 0;      ///< start(): every process launched and verified
  double stop_ms = 0;       ///< shut_down(): shutdown() and wait_finished()
};

/// A quiet() Manager over `config`: constructed, started and shut down, each
/// phase timed apart. Lets a pymanager::Error of the constructor or of
/// start() through.
inline Phases manager_phases(pymanager::Config config) {
  Phases phases;
  auto start = Clock::now();
  pymanager::Manager manager(std::move(config), quiet());
  phases.construct_ms = ms_since(start);
  start = Clock::now();
  manager.start();
  phases.start_ms = ms_since(start);
  start = Clock::now();
  shut_down(manager);
  phases.stop_ms = ms_since(start);
  return phases;
}

inline void row(const char* what, double floor, double ours) {
  std::printf("%-46s %10.2f %10.2f %8.2f\n", what, floor, ours, ours / floor);
}

inline void header() { std::printf("%-46s %10s %10s %8s\n", "what", "floor ms", "ours ms", "ratio"); }

}  // namespace bench

#endif  // PYMANAGER_BENCH_BENCH_UTIL_HPP
