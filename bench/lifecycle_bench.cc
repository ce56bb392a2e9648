// Benchmark: how much the manager adds to bringing processes up and down.
//
// Each figure is a ratio against a floor measured in the same run on the same
// machine, so that the numbers mean something on any machine (the rows are
// explained in the output). The floors start processes with posix_spawn,
// which returns once the exec succeeded, as the keeper's spawn does.
//
//   bazel run -c opt //bench:lifecycle_bench -- [rounds]
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.hpp"
#include "pymanager/pymanager.hpp"

namespace {

using bench::Clock;
using bench::ms_since;

constexpr int kServiceDelayMs = 100;

// ---- up+down of N processes ------------------------------------------------

double floor_up_down(int n) {
  bench::UpDown f = bench::floor_sleepers(n);
  return f.start_ms + f.stop_ms;
}

double manager_up_down(int n) {
  bench::Phases m = bench::manager_phases(bench::sleepers(n, false));
  return m.construct_ms + m.start_ms + m.stop_ms;
}

// ---- teardown of N services --------------------------------------------------

double floor_teardown(int n) { return bench::floor_sleepers(n).stop_ms; }

double manager_teardown(int n) { return bench::manager_phases(bench::sleepers(n, false)).stop_ms; }

// ---- exit of a one-shot step, seen by ExitedVerifier --------------------------

double floor_true() {
  auto start = Clock::now();
  bench::reap(bench::spawn({"/bin/true"}));
  return ms_since(start);
}

double manager_exited_verifier() {
  return bench::manager_phases(bench::config_of(R"({
    "modules": {"pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}},
    "keep-alive": true,
    "processes": {"t": {"executable": "/bin/true", "arguments": [],
                        "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}}}})"))
      .start_ms;
}

// ---- exit seen as an event, from the child's own clock -------------------------

/// The child prints its CLOCK_MONOTONIC just before it exits; the floor
/// reads the clock when waitpid() returns.
double floor_exit_event() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) std::exit(1);
  pid_t pid = bench::spawn({bench::helper("clock_exit")}, fds[1]);
  ::close(fds[1]);
  bench::reap(pid);
  long long seen = bench::monotonic_ns();
  char buffer[64] = {};
  ssize_t n = ::read(fds[0], buffer, sizeof buffer - 1);
  ::close(fds[0]);
  if (n <= 0) std::exit(1);
  return static_cast<double>(seen - std::atoll(buffer)) / 1e6;
}

/// The same child under a Manager: the time from its printed clock to the
/// Manager's on_exit callback.
double manager_exit_event() {
  std::mutex mutex;
  std::condition_variable cv;
  long long printed = 0, seen = 0;
  auto options = bench::quiet();
  options.on_output = [&](const pymanager::OutputLine& line) {
    std::lock_guard<std::mutex> lock(mutex);
    printed = std::atoll(std::string(line.text).c_str());
  };
  options.on_exit = [&](const pymanager::ProcessInfo&, bool) {
    long long now = bench::monotonic_ns();
    std::lock_guard<std::mutex> lock(mutex);
    seen = now;
    cv.notify_all();
  };
  auto config = bench::config_of(R"({"keep_alive": true, "processes": {"t": {"executable": ")" +
                                 bench::helper("clock_exit") + R"(", "arguments": []}}})");
  pymanager::Manager manager(config, options);
  manager.start();
  {
    std::unique_lock<std::mutex> lock(mutex);
    if (!cv.wait_for(lock, std::chrono::seconds(30), [&] { return seen != 0; }) || printed == 0) {
      std::fprintf(stderr, "bench: on_exit (or the child's line) never came\n");
      std::exit(1);
    }
  }
  bench::shut_down(manager);
  return static_cast<double>(seen - printed) / 1e6;
}

// ---- services that listen 100 ms after their start ----------------------------

std::string service(const std::string& name, int port, const std::string& depends_on, const std::string& interval) {
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/";
  return "\"" + name + "\": {\"executable\": \"" + bench::helper("late_listener") + "\", \"arguments\": [\"" +
         std::to_string(kServiceDelayMs) + "\", \"" + std::to_string(port) + "\"], \"depends_on\": " + depends_on +
         ", \"verifier\": {\"type\": \"pymutils.http_verifier.HttpOkVerifier\", \"arguments\": {\"url\": \"" + url +
         "\", \"timeout\": 30, \"interval\": " + interval + "}}}";
}

pymanager::Config services(const std::vector<std::string>& processes) {
  std::string text = R"({"modules": {"pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]}}, "keep_alive": true, "processes": {)";
  for (std::size_t i = 0; i < processes.size(); ++i) text += (i ? ", " : "") + processes[i];
  return bench::config_of(text + "}}");
}

/// Starts the given services at once and waits until each accepts; returns the pids.
std::vector<pid_t> start_by_hand(const std::vector<int>& ports) {
  std::vector<pid_t> pids;
  for (int port : ports) {
    pids.push_back(bench::spawn({bench::helper("late_listener"), std::to_string(kServiceDelayMs), std::to_string(port)}));
  }
  bench::wait_all_accept(ports);
  return pids;
}

double floor_parallel(int n) {
  std::vector<int> ports;
  for (int i = 0; i < n; ++i) ports.push_back(bench::free_port());
  auto start = Clock::now();
  auto pids = start_by_hand(ports);
  double ms = ms_since(start);
  bench::stop_all(pids);
  return ms;
}

double manager_parallel(int n, const std::string& interval) {
  std::vector<std::string> processes;
  for (int i = 0; i < n; ++i) processes.push_back(service("s" + std::to_string(i), bench::free_port(), "[]", interval));
  return bench::manager_phases(services(processes)).start_ms;
}

/// The diamond by hand: db; once it accepts, api and worker together; once
/// both accept, web. Its critical path: three services one after the other.
double floor_diamond() {
  int db = bench::free_port(), api = bench::free_port(), worker = bench::free_port(), web = bench::free_port();
  auto start = Clock::now();
  std::vector<pid_t> pids = start_by_hand({db});
  for (pid_t p : start_by_hand({api, worker})) pids.push_back(p);
  for (pid_t p : start_by_hand({web})) pids.push_back(p);
  double ms = ms_since(start);
  bench::stop_all(pids);
  return ms;
}

double manager_diamond(const std::string& interval) {
  auto config = services({service("db", bench::free_port(), "[]", interval),
                          service("api", bench::free_port(), "[\"db\"]", interval),
                          service("worker", bench::free_port(), "[\"db\"]", interval),
                          service("web", bench::free_port(), "[\"api\", \"worker\"]", interval)});
  return bench::manager_phases(std::move(config)).start_ms;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 9;
  struct Figure {
    std::vector<double> floor, ours;
  };
  Figure up_down, teardown, exited, event, parallel, diamond, parallel_fine, diamond_fine;
  for (int r = 0; r < rounds; ++r) {
    up_down.floor.push_back(floor_up_down(10));
    up_down.ours.push_back(manager_up_down(10));
    teardown.floor.push_back(floor_teardown(10));
    teardown.ours.push_back(manager_teardown(10));
    exited.floor.push_back(floor_true());
    exited.ours.push_back(manager_exited_verifier());
    event.floor.push_back(floor_exit_event());
    event.ours.push_back(manager_exit_event());
    parallel.floor.push_back(floor_parallel(5));
    parallel.ours.push_back(manager_parallel(5, "0.01"));
    parallel_fine.floor.push_back(floor_parallel(5));
    parallel_fine.ours.push_back(manager_parallel(5, "0.001"));
    diamond.floor.push_back(floor_diamond());
    diamond.ours.push_back(manager_diamond("0.01"));
    diamond_fine.floor.push_back(floor_diamond());
    diamond_fine.ours.push_back(manager_diamond("0.001"));
  }
  auto row = [](const char* what, const Figure& f) { bench::row(what, bench::median(f.floor), bench::median(f.ours)); };
  std::printf("pymanager lifecycle benchmark (median of %d rounds)\n", rounds);
  bench::header();
  row("up+down of 10 processes", up_down);
  row("teardown of 10 services", teardown);
  row("exit of a one-shot step (ExitedVerifier)", exited);
  row("exit seen as an event (on_exit)", event);
  row("5 services, 100 ms each, depends_on: []", parallel);
  row("diamond db -> (api, worker) -> web", diamond);
  row("5 services, verifier interval 0.001 s", parallel_fine);
  row("diamond, verifier interval 0.001 s", diamond_fine);
  std::printf(
      "\n"
      "up+down:   Manager constructor (the keeper's start), start() and shutdown of 10\n"
      "           sleeps, vs posix_spawn, SIGTERM and waitpid of 10 sleeps by hand.\n"
      "teardown:  shutdown() + wait_finished() of 10 running sleeps, vs SIGTERM and\n"
      "           waitpid of 10 sleeps by hand.\n"
      "one-shot:  start() of /bin/true verified by ExitedVerifier (spawn, exit, verified),\n"
      "           vs posix_spawn and waitpid of /bin/true.\n"
      "event:     a child prints its CLOCK_MONOTONIC and exits; from that clock to the\n"
      "           Manager's on_exit callback, vs to the return of a plain waitpid().\n"
      "5 services: each listens on 127.0.0.1 %d ms after its start; start() until all\n"
      "           are verified (HttpOkVerifier, interval 0.01 s), vs starting the five by\n"
      "           hand at once and trying to connect to each every 1 ms.\n"
      "diamond:   the same services with db -> (api, worker) -> web; start() vs the\n"
      "           diamond by hand, each step started once the previous accepts: its\n"
      "           critical path of three services one after the other.\n"
      "interval 0.001: the same two with the verifiers polling as often as the floor\n"
      "           (every 1 ms instead of every 10 ms): the rest is the Manager's own.\n",
      kServiceDelayMs);
  return 0;
}
