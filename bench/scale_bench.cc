// Benchmark: the manager at scale, and what its keeper costs a big host.
//
//   bazel run -c opt //bench:scale_bench -- [N ...] [--no-scale] [--no-memory]
//
// N: how many `sleep` children to start and stop (default 1000 and 10000).
// Each figure is a ratio against a floor measured in the same run; the rows
// are explained in the output.
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "bench/bench_util.hpp"
#include "pymanager/pymanager.hpp"

namespace {

using bench::Clock;
using bench::ms_since;

// ---- N sleep children ------------------------------------------------------------

/// What the Manager asks for with n processes: two pipes each, four
/// descriptors for each of at most 256 spawns in flight, 64 of its own.
rlim_t descriptors_for(int n) { return static_cast<rlim_t>(2 * n + 4 * std::min(n, 256) + 64); }

/// The largest count, in thousands, whose descriptors fit in the hard limit.
int largest_that_fits() {
  struct rlimit limit {};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  int n = 1000;
  while (descriptors_for(n + 1000) + 64 <= limit.rlim_max) n += 1000;
  return n;
}

/// Whether n processes fit in the hard RLIMIT_NOFILE (the Manager raises the
/// soft one itself). When not, shows the Manager's own error for them.
bool fits(int n) {
  struct rlimit limit {};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_max == RLIM_INFINITY || descriptors_for(n) + 64 <= limit.rlim_max) return true;
  try {
    bench::manager_phases(bench::sleepers(n, true));
    return true;  // it managed after all: measure it properly
  } catch (const pymanager::Error& e) {
    std::printf("(%d processes do not fit in this machine's hard RLIMIT_NOFILE of %llu; the Manager says:\n %s)\n", n,
                static_cast<unsigned long long>(limit.rlim_max), e.what());
  }
  return false;
}

// ---- the keeper's cost to a host of 1 GiB -----------------------------------------

constexpr std::size_t kHostBytes = std::size_t{1} << 30;

struct KeeperCost {
  double floor_rewrite_ms = 0;  ///< memset of the gigabyte, no Manager (before and after it, averaged)
  double construct_ms = 0;      ///< Manager's constructor
  double rewrite_ms = 0;        ///< memset of the gigabyte while the Manager lives
  long keeper_rss_kb = 0;       ///< the keeper's VmRSS after the constructor
  long keeper_private_kb = 0;   ///< the keeper's private memory after the rewrite
  bool exec = false;            ///< the keeper is another program (not a fork of the host)
};

/// A `Key:   123 kB` field of a /proc file, in kB (-1 if absent).
long proc_kb(const std::string& file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  long total = -1;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) == 0 && line.size() > key.size() && line[key.size()] == ':') {
      total = (total < 0 ? 0 : total) + std::atol(line.c_str() + key.size() + 1);
    }
  }
  return total;
}

void rewrite(char* memory, int value) {
  std::memset(memory, value, kHostBytes);
  asm volatile("" : : "r"(memory) : "memory");  // the stores are not dead
}

/// In a fresh child of the benchmark: a host that holds 1 GiB, then a Manager.
KeeperCost measure_keeper(bool fork_mode) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) std::exit(1);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    KeeperCost cost;
    char* memory = static_cast<char*>(::mmap(nullptr, kHostBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (memory == MAP_FAILED) ::_exit(1);
    rewrite(memory, 1);  // touch every page
    auto start = Clock::now();
    rewrite(memory, 2);
    cost.floor_rewrite_ms = ms_since(start);
    if (fork_mode) {
      ::setenv("PYMANAGER_KEEPER", "fork", 1);
    } else {
      ::unsetenv("PYMANAGER_KEEPER");
    }
    auto config = bench::config_of(R"({"processes": {"idle": {"executable": "/bin/sleep", "arguments": ["1000"]}}})");
    {
      start = Clock::now();
      pymanager::Manager manager(config, bench::quiet());
      cost.construct_ms = ms_since(start);
      const std::string proc = "/proc/" + std::to_string(manager.keeper_pid());
      cost.keeper_rss_kb = proc_kb(proc + "/status", "VmRSS");
      char exe[4096];
      ssize_t n = ::readlink((proc + "/exe").c_str(), exe, sizeof exe - 1);
      char self[4096];
      ssize_t m = ::readlink("/proc/self/exe", self, sizeof self - 1);
      cost.exec = n > 0 && (m != n || std::memcmp(exe, self, static_cast<std::size_t>(n)) != 0);
      start = Clock::now();
      rewrite(memory, 3);
      cost.rewrite_ms = ms_since(start);
      long clean = proc_kb(proc + "/smaps_rollup", "Private_Clean"), dirty = proc_kb(proc + "/smaps_rollup", "Private_Dirty");
      cost.keeper_private_kb = (clean < 0 ? 0 : clean) + (dirty < 0 ? 0 : dirty);
    }
    start = Clock::now();
    rewrite(memory, 4);
    cost.floor_rewrite_ms = (cost.floor_rewrite_ms + ms_since(start)) / 2;
    ssize_t ignored = ::write(fds[1], &cost, sizeof cost);
    (void)ignored;
    ::_exit(0);
  }
  ::close(fds[1]);
  KeeperCost cost;
  ssize_t n = ::read(fds[0], &cost, sizeof cost);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (n != static_cast<ssize_t>(sizeof cost) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "bench: the 1 GiB host (pid %d) failed\n", static_cast<int>(pid));
    std::exit(1);
  }
  return cost;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> counts;
  bool scale = true, memory = true;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--no-scale") {
      scale = false;
    } else if (arg == "--no-memory") {
      memory = false;
    } else if (std::atoi(arg.c_str()) > 0) {
      counts.push_back(std::atoi(arg.c_str()));
    } else {
      std::fprintf(stderr, "usage: scale_bench [N ...] [--no-scale] [--no-memory]\n");
      return 2;
    }
  }
  if (counts.empty()) counts = {1000, 10000};

  if (scale) {
    std::printf("pymanager at scale: N sleep children, all \"depends_on\": [] (median of 3 runs up to 1,000, else 1)\n");
    bench::header();
    for (int n : counts) {
      if (!fits(n)) {
        n = largest_that_fits();
        std::printf("(measuring %d instead)\n", n);
      }
      const int runs = n <= 1000 ? 3 : 1;
      std::vector<double> floor_start, floor_stop, ours_start, ours_stop;
      for (int r = 0; r < runs; ++r) {
        bench::UpDown f = bench::floor_sleepers(n);
        bench::Phases m = bench::manager_phases(bench::sleepers(n, true));
        floor_start.push_back(f.start_ms);
        floor_stop.push_back(f.stop_ms);
        ours_start.push_back(m.start_ms);
        ours_stop.push_back(m.stop_ms);
      }
      std::string what = "start " + std::to_string(n) + " sleeps";
      bench::row(what.c_str(), bench::median(floor_start), bench::median(ours_start));
      what = "stop " + std::to_string(n) + " sleeps";
      bench::row(what.c_str(), bench::median(floor_stop), bench::median(ours_stop));
    }
    std::printf(
        "start: Manager::start() (no verifiers) until every child is spawned, vs posix_spawn\n"
        "       of each by hand (it returns once the exec succeeded, as the keeper's spawn does).\n"
        "stop:  shutdown() + wait_finished(), vs SIGTERM to each and waitpid of all.\n\n");
  }

  if (memory) {
    std::printf("the keeper's cost to a host that holds 1 GiB (median of 5 fresh hosts per mode)\n");
    std::printf("%-22s %12s %12s %12s %8s %14s %14s\n", "keeper", "ctor ms", "floor ms", "rewrite ms", "ratio",
                "keeper RSS", "keeper priv.");
    for (bool fork_mode : {false, true}) {
      std::vector<double> construct, floor, rewrite;
      std::vector<double> rss, priv;
      bool exec = false;
      for (int r = 0; r < 5; ++r) {
        KeeperCost c = measure_keeper(fork_mode);
        construct.push_back(c.construct_ms);
        floor.push_back(c.floor_rewrite_ms);
        rewrite.push_back(c.rewrite_ms);
        rss.push_back(static_cast<double>(c.keeper_rss_kb));
        priv.push_back(static_cast<double>(c.keeper_private_kb));
        exec = c.exec;
      }
      const char* name = fork_mode ? (exec ? "PYMANAGER_KEEPER=fork?" : "PYMANAGER_KEEPER=fork")
                                   : (exec ? "exec'd (default)" : "default, NOT exec'd");
      std::printf("%-22s %12.2f %12.2f %12.2f %8.2f %11.1f MiB %11.1f MiB\n", name, bench::median(construct),
                  bench::median(floor), bench::median(rewrite), bench::median(rewrite) / bench::median(floor),
                  bench::median(rss) / 1024, bench::median(priv) / 1024);
    }
    std::printf(
        "Each host is a fresh child of the benchmark that maps and touches 1 GiB, then:\n"
        "ctor:        the Manager's constructor (it starts the keeper);\n"
        "floor:       memset of the whole gigabyte with no Manager (before it and after it);\n"
        "rewrite:     the same memset while the Manager lives (ratio: rewrite / floor);\n"
        "keeper RSS:  VmRSS of Manager::keeper_pid() after the constructor;\n"
        "keeper priv: its Private_Clean + Private_Dirty after the rewrite (memory the\n"
        "             host's writes made it keep for itself).\n");
  }
  return 0;
}
