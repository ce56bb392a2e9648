// A GoogleTest binary that uses the pymanager environment, run by
// gtest_env_driver_test. It links //gtest_env:main (or, built with
// SUBJECT_OWN_MAIN, has its own main() that calls register_environment).
//
// SUBJECT_MODE picks what its one test does once the services are up:
//   ok            uses the services (port, url, output, restart) and passes
//   minimal       lists the processes, waits for each one's first line
//   segv, abort, sigkill, exit
//                 records the pids, then dies that way without TearDown
//   service_dies  kills the "web" service behind the environment's back
// The pids it must leave behind are written to $PIDS_FILE (services.json).
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "gtest_env/environment.hpp"
#include "tests/gtest_env_util.hpp"

namespace {

std::string mode() {
  const char* value = std::getenv("SUBJECT_MODE");
  return value ? value : "ok";
}

/// Waits (bounded) until `condition` holds.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

/// The number after `marker` in the process's output ("daemon 1234"), or 0.
long number_after(const std::vector<std::string>& lines, const std::string& marker) {
  for (const auto& line : lines) {
    if (line.rfind(marker, 0) == 0) return std::atol(line.c_str() + marker.size());
  }
  return 0;
}

/// This process's children (the keeper): /proc/self/task/*/children.
std::vector<long> own_children() {
  std::vector<long> out;
  if (DIR* dir = ::opendir("/proc/self/task")) {
    while (struct dirent* entry = ::readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      std::ifstream in(std::string("/proc/self/task/") + entry->d_name + "/children");
      long pid;
      while (in >> pid) out.push_back(pid);
    }
    ::closedir(dir);
  }
  return out;
}

void write_pids(const std::vector<long>& pids) {
  const char* file = std::getenv("PIDS_FILE");
  if (file == nullptr) return;
  std::string text;
  for (long pid : pids) text += std::to_string(pid) + "\n";
  std::string tmp = std::string(file) + ".tmp";
  std::ofstream(tmp) << text;
  std::rename(tmp.c_str(), file);
}

TEST(Subject, UsesTheServices) {
  std::printf("SUBJECT BODY RAN\n");
  std::fflush(stdout);
  auto& env = pymanager::testing::environment();
  ASSERT_TRUE(env.up());
  const std::string how = mode();
  if (how == "minimal") {
    for (const auto& p : env.processes()) {
      std::printf("process %s pid %d\n", p.name.c_str(), p.pid);
      // Its first line shows it is past its own start-up.
      EXPECT_TRUE(eventually([&] { return !env.output_tail(p.name, 1).empty(); })) << p.name << " printed nothing";
    }
    return;
  }

  const int port = env.port("web");
  std::printf("web port %d\n", port);
  std::fflush(stdout);
  auto health = gtest_env_util::http_get(port, "/health");
  ASSERT_TRUE(health.has_value()) << env.url("web", "/health") << " does not answer";
  EXPECT_EQ(health->status, 200);
  ASSERT_TRUE(eventually([&] {
    auto lines = env.output_tail("tree", 10);
    return number_after(lines, "grandchild ") > 0 && number_after(lines, "daemon ") > 0;
  })) << "the tree process did not report its pids";
  auto tree = env.output_tail("tree", 10);
  std::vector<long> pids = {env.pid("web"), env.pid("tree"), number_after(tree, "grandchild "), number_after(tree, "daemon ")};
  for (long child : own_children()) pids.push_back(child);

  if (how == "ok") {
    auto setup = env.process("setup");
    ASSERT_TRUE(setup.exit.has_value());
    EXPECT_EQ(setup.exit->code(), 0);
    EXPECT_EQ(env.output_tail("setup", 1), std::vector<std::string>{"setup ran for port " + std::to_string(port)});
    int old_pid = env.pid("web");
    env.restart("web");
    EXPECT_NE(env.pid("web"), old_pid);
    auto again = gtest_env_util::http_get(port, "/health");
    ASSERT_TRUE(again.has_value()) << "the restarted service does not answer on the same port";
    EXPECT_EQ(again->status, 200);
    pids.push_back(env.pid("web"));
    write_pids(pids);
    return;
  }
  write_pids(pids);
  if (how == "service_dies") {
    ::kill(env.pid("web"), SIGKILL);
    ASSERT_TRUE(eventually([&] { return !env.running("web"); }));
    return;
  }
  // Ways to die without TearDown. No core file: it would only slow the death.
  struct rlimit no_core {0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  if (how == "segv") {
    ::signal(SIGSEGV, SIG_DFL);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    // Under a sanitizer a store to null is reported and turned into exit 1:
    // the death by SIGSEGV is what this case is about.
    ::raise(SIGSEGV);
#else
    int* volatile nowhere = nullptr;
    *nowhere = 1;
#endif
  } else if (how == "abort") {
    ::signal(SIGABRT, SIG_DFL);
    std::abort();
  } else if (how == "sigkill") {
    ::kill(::getpid(), SIGKILL);
  } else if (how == "exit") {
    std::exit(3);
  }
  FAIL() << "unknown SUBJECT_MODE " << how;
}

}  // namespace

#ifdef SUBJECT_OWN_MAIN
// The documented way for a test binary with its own main().
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  pymanager::testing::register_environment(&argc, argv);
  std::printf("OWN MAIN\n");
  return RUN_ALL_TESTS();
}
#endif
