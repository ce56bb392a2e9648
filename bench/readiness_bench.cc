// Benchmark: how soon a verifier sees a service ready, and what the waiting
// costs (issue 10).
//
// Services listen on 127.0.0.1 100 ms after their start. One and five of them
// are started in file order (each once the previous one was verified, as the
// original does), verified by each network verifier with its default
// arguments. The floor, measured in the same run: start each with
// posix_spawn and try to connect to its port every millisecond until it
// accepts, then start the next.
//
// The manager's CPU is the time its process (the verifiers' threads, the
// event thread, the API-less Manager) spent on a CPU during start(), as a
// share of one core over the wall time; the floor's is its own loop's.
//
//   bazel run -c opt //bench:readiness_bench -- [rounds]
#include <sys/resource.h>
#include <sys/time.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.hpp"
#include "pymanager/pymanager.hpp"

namespace {

using bench::Clock;
using bench::ms_since;

constexpr int kServiceDelayMs = 100;

/// User + system CPU of this whole process (all its threads), in ms.
double process_cpu_ms() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  auto ms = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) * 1e3 + static_cast<double>(tv.tv_usec) / 1e3; };
  return ms(usage.ru_utime) + ms(usage.ru_stime);
}

struct Run {
  double wall_ms = 0;
  double cpu_ms = 0;
};

/// Each service started once the one before accepts, polled every 1 ms.
Run floor_in_order(int n) {
  std::vector<int> ports;
  for (int i = 0; i < n; ++i) ports.push_back(bench::free_port());
  std::vector<pid_t> pids;
  double cpu = process_cpu_ms();
  auto start = Clock::now();
  for (int port : ports) {
    pids.push_back(bench::spawn({bench::helper("late_listener"), std::to_string(kServiceDelayMs), std::to_string(port)}));
    bench::wait_all_accept({port});
  }
  Run run{ms_since(start), process_cpu_ms() - cpu};
  bench::stop_all(pids);
  return run;
}

/// The verifier object of one service on `port`, with its default arguments.
std::string verifier_of(const std::string& kind, int port) {
  const std::string p = std::to_string(port);
  if (kind == "TcpVerifier") {
    return R"({"type": "pymanager.verifiers.TcpVerifier", "arguments": {"port": )" + p + "}}";
  }
  if (kind == "HttpVerifier") {
    return R"({"type": "pymanager.verifiers.HttpVerifier", "arguments": {"url": "http://127.0.0.1:)" + p + R"(/"}})";
  }
  return R"({"type": "pymutils.http_verifier.HttpOkVerifier", "arguments": {"url": "http://127.0.0.1:)" + p + R"(/"}})";
}

/// n services in file order (no depends_on), each verified by `kind`.
Run manager_in_order(int n, const std::string& kind) {
  std::string text = R"({"modules": {"pymanager.verifiers": {"verifiers": ["TcpVerifier", "HttpVerifier"]},
                         "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]}},
                         "keep_alive": true, "processes": {)";
  for (int i = 0; i < n; ++i) {
    const int port = bench::free_port();
    text += std::string(i ? ", " : "") + "\"s" + std::to_string(i) + "\": {\"executable\": \"" +
            bench::helper("late_listener") + "\", \"arguments\": [\"" + std::to_string(kServiceDelayMs) + "\", \"" +
            std::to_string(port) + "\"], \"verifier\": " + verifier_of(kind, port) + "}";
  }
  pymanager::Manager manager(bench::config_of(text + "}}"), bench::quiet());
  double cpu = process_cpu_ms();
  auto start = Clock::now();
  manager.start();
  Run run{ms_since(start), process_cpu_ms() - cpu};
  bench::shut_down(manager);
  return run;
}

struct Figure {
  std::vector<double> floor_wall, floor_cpu, ours_wall, ours_cpu;
  void add(const Run& floor, const Run& ours) {
    floor_wall.push_back(floor.wall_ms);
    floor_cpu.push_back(floor.cpu_ms);
    ours_wall.push_back(ours.wall_ms);
    ours_cpu.push_back(ours.cpu_ms);
  }
  void print(const std::string& what) const {
    const double fw = bench::median(floor_wall), ow = bench::median(ours_wall);
    std::printf("%-40s %9.2f %9.2f %7.3f %9.1f%% %9.1f%%\n", what.c_str(), fw, ow, ow / fw,
                100.0 * bench::median(floor_cpu) / fw, 100.0 * bench::median(ours_cpu) / ow);
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 9;
  const char* const kinds[] = {"TcpVerifier", "HttpVerifier", "HttpOkVerifier"};
  std::vector<std::pair<std::string, Figure>> figures;
  for (const char* kind : kinds) {
    for (int n : {1, 5}) figures.emplace_back(std::to_string(n) + (n == 1 ? " service, " : " services, ") + kind, Figure{});
  }
  for (int r = 0; r < rounds; ++r) {
    std::size_t f = 0;
    for (const char* kind : kinds) {
      for (int n : {1, 5}) {
        Run floor = floor_in_order(n);
        Run ours = manager_in_order(n, kind);
        figures[f++].second.add(floor, ours);
      }
    }
  }
  std::printf("pymanager readiness benchmark (median of %d rounds)\n", rounds);
  std::printf("%-40s %9s %9s %7s %10s %10s\n", "what", "floor ms", "ours ms", "ratio", "floor cpu", "ours cpu");
  for (const auto& figure : figures) figure.second.print(figure.first);
  std::printf(
      "\n"
      "Each service listens on 127.0.0.1 %d ms after its start; the services start in\n"
      "file order, each once the one before was verified (default arguments: the\n"
      "verifiers try every 1 ms for their first 10 s). Floor: posix_spawn each, then\n"
      "connect(2) to its port every 1 ms until it accepts, then the next.\n"
      "cpu: CPU time of this whole process while it waited (all the Manager's threads,\n"
      "or the floor's loop), as a share of one core over the wall time. The keeper\n"
      "(another process) only spawns here. Target: ratio within 1.02, cpu under 5%%.\n",
      kServiceDelayMs);
  return 0;
}
