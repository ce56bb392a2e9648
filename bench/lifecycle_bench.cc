// Benchmark: how much the manager adds to bringing processes up and down.
//
// Each figure is a ratio against a floor measured in the same run on the same
// machine, so that the numbers mean something on any machine:
//   up+down:  Manager start() + shutdown of N processes, each verified by
//             ExitedVerifier or not verified, versus fork/exec/kill/waitpid
//             of the same N processes by hand;
//   exit seen: launching a one-shot child until the Manager has seen its
//             exit (ExitedVerifier passes on the event), versus fork/exec and
//             a plain waitpid() of the same child. A polling manager would
//             show its tick here.
//
//   bazel run -c opt //bench:lifecycle_bench -- [rounds]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "pymanager/pymanager.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

pid_t spawn(const char* const argv[]) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    ::execv(argv[0], const_cast<char* const*>(argv));
    ::_exit(127);
  }
  return pid;
}

/// The floor for up+down: N sleeps started and stopped by hand.
double floor_up_down(int n) {
  auto start = Clock::now();
  std::vector<pid_t> pids;
  const char* argv[] = {"/bin/sleep", "1000", nullptr};
  for (int i = 0; i < n; ++i) pids.push_back(spawn(argv));
  for (pid_t p : pids) ::kill(p, SIGTERM);
  for (pid_t p : pids) {
    int status;
    ::waitpid(p, &status, 0);
  }
  return ms_since(start);
}

pymanager::Config sleepers(int n) {
  std::string processes;
  for (int i = 0; i < n; ++i) {
    processes += std::string(i ? "," : "") + "\"s" + std::to_string(i) + "\": {\"executable\": \"/bin/sleep\", \"arguments\": [\"1000\"]}";
  }
  return pymanager::parse_config(nlohmann::ordered_json::parse("{\"processes\": {" + processes + "}}"),
                                 pymanager::builtin_verifiers());
}

pymanager::ManagerOptions quiet() {
  pymanager::ManagerOptions options;
  options.log = [](const std::string&) {};
  return options;
}

double manager_up_down(int n) {
  auto config = sleepers(n);
  auto start = Clock::now();
  pymanager::Manager manager(config, quiet());
  manager.start();
  manager.shutdown();
  manager.wait_finished(std::chrono::seconds(30));
  return ms_since(start);
}

/// The floor for "exit seen": fork a child that exits at once, waitpid it.
double floor_exit_seen() {
  const char* argv[] = {"/bin/true", nullptr};
  auto start = Clock::now();
  pid_t pid = spawn(argv);
  int status;
  ::waitpid(pid, &status, 0);
  return ms_since(start);
}

/// Launch of a child that exits at once, until the Manager has seen the exit
/// (ExitedVerifier passes on the exit event).
double manager_exit_seen() {
  auto config = pymanager::parse_config(nlohmann::ordered_json::parse(R"({
    "modules": {"pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}},
    "keep-alive": true,
    "processes": {"t": {"executable": "/bin/true", "arguments": [],
                        "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}}}})"),
                                        pymanager::builtin_verifiers());
  pymanager::Manager manager(config, quiet());
  auto start = Clock::now();
  manager.start();
  return ms_since(start);
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = argc > 1 ? std::max(1, std::atoi(argv[1])) : 9;
  const int n = 10;
  std::vector<double> floor_ud, mgr_ud, floor_exit, mgr_exit;
  for (int r = 0; r < rounds; ++r) {
    floor_ud.push_back(floor_up_down(n));
    mgr_ud.push_back(manager_up_down(n));
    floor_exit.push_back(floor_exit_seen());
    mgr_exit.push_back(manager_exit_seen());
  }
  std::printf("pymanager lifecycle benchmark (median of %d rounds)\n", rounds);
  std::printf("%-44s %10s %10s %8s\n", "what", "floor ms", "ours ms", "ratio");
  auto row = [](const char* what, double floor, double ours) {
    std::printf("%-44s %10.2f %10.2f %8.2f\n", what, floor, ours, ours / floor);
  };
  row("up+down of 10 processes (vs fork/kill/wait)", median(floor_ud), median(mgr_ud));
  row("exit of a one-shot step seen (vs waitpid)", median(floor_exit), median(mgr_exit));
  std::printf("ours includes the keeper process's start and stop, once per Manager.\n");
  return 0;
}
