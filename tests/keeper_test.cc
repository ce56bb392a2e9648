// The keeper on its own, through its socket: real children, real daemons,
// the exec'd keeper program and the fork fallback. Events are read by a
// thread of the test (the keeper may block sending to us, as it may with
// the manager, so someone must always read), and every wait is bounded.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "pymanager/keeper.hpp"
#include "tests/test_util.hpp"

namespace {

using namespace std::chrono_literals;
using pymanager::detail::KeeperClient;
using pymanager::detail::KeeperEvent;
using pymanager::detail::KeeperHeader;
using pymanager::detail::KeeperMessage;
using pymanager::detail::KeeperOptions;
using pymanager::detail::kKeeperMaxIds;
using pymanager::detail::kKeeperNoOwner;
using pymanager::detail::SpawnStage;
using pymanager::detail::UniqueFd;
using testutil::ScopedEnv;

const std::string kToken = "0123456789abcdef";

/// Reads the keeper's events on a thread of its own.
class EventReader {
 public:
  explicit EventReader(int fd) : fd_(fd), thread_([this] { run(); }) {}
  ~EventReader() {
    stop_ = true;
    thread_.join();
  }
  EventReader(const EventReader&) = delete;
  EventReader& operator=(const EventReader&) = delete;

  /// Waits (bounded) until `condition` holds over the events so far.
  bool wait(const std::function<bool(const std::vector<KeeperEvent>&)>& condition,
            std::chrono::milliseconds timeout = 30000ms) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return condition(events_); });
  }

  /// The first event of `type` for `id`, waiting (bounded) for it.
  std::optional<KeeperEvent> find(KeeperMessage type, std::uint32_t id, std::chrono::milliseconds timeout = 30000ms) {
    std::optional<KeeperEvent> found;
    wait([&](const std::vector<KeeperEvent>& events) {
      for (const auto& e : events) {
        if (e.type == type && e.id == id) {
          found = e;
          return true;
        }
      }
      return false;
    }, timeout);
    return found;
  }

  /// How many events of `type` arrived, waiting (bounded) until there are `n`.
  std::size_t wait_count(KeeperMessage type, std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait_for(lock, timeout, [&] { return counts_[index(type)] >= n; });
    return counts_[index(type)];
  }

  std::vector<KeeperEvent> events() {
    std::lock_guard<std::mutex> lock(mutex_);
    return events_;
  }

 private:
  static std::size_t index(KeeperMessage type) { return static_cast<std::size_t>(type) % 32; }

  void run() {
    while (!stop_) {
      struct pollfd p = {fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      KeeperHeader header;
      ssize_t n = ::recv(fd_, &header, sizeof header, MSG_DONTWAIT);
      if (n == static_cast<ssize_t>(sizeof header)) {
        std::lock_guard<std::mutex> lock(mutex_);
        events_.push_back(KeeperEvent{header.type, header.id, header.a, header.b});
        ++counts_[index(header.type)];
        changed_.notify_all();
      } else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        return;  // the keeper is gone
      }
    }
  }

  int fd_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<KeeperEvent> events_;
  std::array<std::size_t, 32> counts_{};
  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: it starts once everything else is ready
};

/// A keeper and the reader of its events (destroyed first).
struct Keeper {
  std::unique_ptr<KeeperClient> client;
  std::unique_ptr<EventReader> events;

  /// "exec" (found as a user's test finds it: PYMANAGER_KEEPER unset) or "fork".
  explicit Keeper(const std::string& mode, KeeperOptions options = {kToken, 0}) {
    ScopedEnv env("PYMANAGER_KEEPER", mode == "fork" ? "fork" : nullptr);
    client = std::make_unique<KeeperClient>(std::move(options));
    events = std::make_unique<EventReader>(client->socket_fd());
  }
  ~Keeper() { close(); }
  void close() {
    events.reset();
    if (client) client->close_and_reap();
  }

  /// Spawns `argv` (argv[0] is the path) as group `id`, and waits for the
  /// answer: the spawned event.
  std::optional<KeeperEvent> spawn(std::uint32_t id, const std::vector<std::string>& argv,
                                   const std::vector<std::string>& env, int out_fd, int err_fd = -1) {
    if (!client->send_spawn(id, argv[0], "/", argv, env, out_fd, err_fd)) return std::nullopt;
    return events->find(KeeperMessage::spawned, id);
  }
};

std::vector<std::string> env_for(std::uint32_t id, const std::string& token = kToken) {
  return {"PATH=/usr/bin:/bin", pymanager::detail::keeper_owner_entry(token, id)};
}

/// The position of the first event of `type` for `id` in `events`, or -1.
long position_of(const std::vector<KeeperEvent>& events, KeeperMessage type, std::uint32_t id) {
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (events[i].type == type && events[i].id == id) return static_cast<long>(i);
  }
  return -1;
}

/// Reads `fd` to its end (bounded).
std::string read_to_eof(int fd, std::chrono::milliseconds timeout = 20000ms) {
  std::string text;
  auto deadline = testutil::Clock::now() + timeout;
  while (testutil::Clock::now() < deadline) {
    struct pollfd p = {fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    char buffer[4096];
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n <= 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  return text;
}

/// The pid a daemonizer wrote (bounded wait for the file).
pid_t wait_pid_file(const std::string& path) {
  if (!testutil::wait_until([&] { return ::access(path.c_str(), F_OK) == 0; })) return 0;
  return static_cast<pid_t>(std::atol(testutil::read_file(path).c_str()));
}

long parent_of(pid_t pid) {
  std::string stat = testutil::read_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  if (close == std::string::npos || stat.size() < close + 4) return -1;
  return std::atol(stat.c_str() + close + 4);
}

long rss_kib(pid_t pid) {
  std::string status = testutil::read_file("/proc/" + std::to_string(pid) + "/status");
  auto pos = status.find("VmRSS:");
  return pos == std::string::npos ? -1 : std::atol(status.c_str() + pos + 6);
}

std::string exe_of(pid_t pid) {
  char buffer[4096];
  ssize_t n = ::readlink(("/proc/" + std::to_string(pid) + "/exe").c_str(), buffer, sizeof buffer - 1);
  return n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : std::string();
}

std::string real_path(const std::string& path) {
  char buffer[PATH_MAX];
  return ::realpath(path.c_str(), buffer) != nullptr ? std::string(buffer) : path;
}

/// This process's children, from /proc/self/task/*/children.
std::multiset<long> own_children() {
  std::multiset<long> out;
  std::string tasks = "/proc/" + std::to_string(::getpid()) + "/task/";
  if (DIR* dir = ::opendir(tasks.c_str())) {
    while (struct dirent* entry = ::readdir(dir)) {
      if (entry->d_name[0] == '.') continue;
      std::string text = testutil::read_file(tasks + entry->d_name + "/children");
      const char* p = text.c_str();
      while (*p) {
        char* end;
        long pid = std::strtol(p, &end, 10);
        if (end == p) {
          ++p;
          continue;
        }
        out.insert(pid);
        p = end;
      }
    }
    ::closedir(dir);
  }
  return out;
}

// ---------------------------------------------------------------- both modes

class KeeperModes : public ::testing::TestWithParam<std::string> {};

TEST_P(KeeperModes, StartsInTheModeAsked) {
  Keeper keeper(GetParam());
  const bool exec = GetParam() == "exec";
  EXPECT_EQ(keeper.client->exec_mode(), exec);
  if (exec) {
    EXPECT_EQ(keeper.client->keeper_path().substr(keeper.client->keeper_path().rfind('/') + 1), "pymanager-keeper");
    EXPECT_EQ(exe_of(keeper.client->pid()), real_path(keeper.client->keeper_path()));
  } else {
    EXPECT_EQ(keeper.client->keeper_path(), "");
    EXPECT_EQ(exe_of(keeper.client->pid()), exe_of(::getpid()));
  }
}

TEST_P(KeeperModes, StdoutAndStderrArriveSeparately) {
  Keeper keeper(GetParam());
  auto out = pymanager::detail::make_pipe();
  auto err = pymanager::detail::make_pipe();
  auto spawned = keeper.spawn(3, {"/bin/sh", "-c", "echo to-out; echo to-err >&2"}, env_for(3), out.write.get(),
                              err.write.get());
  ASSERT_TRUE(spawned);
  out.write.reset();
  err.write.reset();
  EXPECT_EQ(read_to_eof(out.read.get()), "to-out\n");
  EXPECT_EQ(read_to_eof(err.read.get()), "to-err\n");
  auto exited = keeper.events->find(KeeperMessage::exited, 3);
  ASSERT_TRUE(exited);
  EXPECT_TRUE(WIFEXITED(exited->a) && WEXITSTATUS(exited->a) == 0);
  EXPECT_EQ(exited->b, spawned->a);
  auto empty = keeper.events->find(KeeperMessage::group_empty, 3);
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->b, spawned->a);

  // One descriptor: both streams go there.
  auto both = pymanager::detail::make_pipe();
  ASSERT_TRUE(keeper.spawn(4, {"/bin/sh", "-c", "echo a; echo b >&2"}, env_for(4), both.write.get()));
  both.write.reset();
  EXPECT_EQ(read_to_eof(both.read.get()), "a\nb\n");
}

TEST_P(KeeperModes, IdsFarApartAndBusyIds) {
  Keeper keeper(GetParam());
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  const std::uint32_t ids[] = {0, 5, 4000000};
  for (std::uint32_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(keeper.spawn(ids[i], {"/bin/sh", "-c", "exit " + std::to_string(i + 1)}, env_for(ids[i]),
                             null_fd.get()))
        << ids[i];
  }
  for (std::uint32_t i = 0; i < 3; ++i) {
    auto exited = keeper.events->find(KeeperMessage::exited, ids[i]);
    ASSERT_TRUE(exited) << ids[i];
    EXPECT_EQ(WEXITSTATUS(exited->a), static_cast<int>(i + 1)) << ids[i];
    EXPECT_TRUE(keeper.events->find(KeeperMessage::group_empty, ids[i])) << ids[i];
  }

  // An id whose group is alive is busy; one past the limit is refused.
  auto sleeper = keeper.spawn(4000000 + 1, {"/bin/sleep", "600"}, env_for(4000001), null_fd.get());
  ASSERT_TRUE(sleeper);
  ASSERT_TRUE(keeper.client->send_spawn(4000001, "/bin/true", "/", {"true"}, {}, null_fd.get()));
  auto busy = keeper.events->find(KeeperMessage::spawn_failed, 4000001);
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->a, EBUSY);
  EXPECT_EQ(busy->b, static_cast<std::int64_t>(SpawnStage::protocol));
  ASSERT_TRUE(keeper.client->send_spawn(kKeeperMaxIds, "/bin/true", "/", {"true"}, {}, null_fd.get()));
  auto refused = keeper.events->find(KeeperMessage::spawn_failed, kKeeperMaxIds);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->a, EINVAL);

  // The same id again once its group is empty.
  ASSERT_TRUE(keeper.client->send_signal(4000001, SIGKILL));
  auto killed = keeper.events->find(KeeperMessage::exited, 4000001);
  ASSERT_TRUE(killed);
  EXPECT_TRUE(WIFSIGNALED(killed->a) && WTERMSIG(killed->a) == SIGKILL);
  ASSERT_TRUE(keeper.events->find(KeeperMessage::group_empty, 4000001));
  ASSERT_TRUE(keeper.client->send_spawn(4000001, "/bin/true", "/", {"true"}, {}, null_fd.get()));
  EXPECT_TRUE(keeper.events->wait([](const std::vector<KeeperEvent>& events) {
    int spawned = 0;
    for (const auto& e : events) spawned += e.type == KeeperMessage::spawned && e.id == 4000001;
    return spawned == 2;
  }));
}

TEST_P(KeeperModes, ADaemonIsAdoptedForItsOwnerAndStoppedWithItsSignal) {
  Keeper keeper(GetParam());
  std::string dir = testutil::make_temp_dir();
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto launcher = keeper.spawn(7, {testutil::runfile("tests/helpers/daemonizer"), dir + "/pid", dir + "/term"},
                               env_for(7), null_fd.get());
  ASSERT_TRUE(launcher);
  pid_t daemon = wait_pid_file(dir + "/pid");
  ASSERT_GT(daemon, 0);
  auto adopted = keeper.events->find(KeeperMessage::daemon_adopted, 7);
  ASSERT_TRUE(adopted) << "no daemon_adopted for id 7";
  EXPECT_EQ(adopted->a, daemon);
  EXPECT_EQ(parent_of(daemon), keeper.client->pid());
  auto exited = keeper.events->find(KeeperMessage::exited, 7);
  ASSERT_TRUE(exited);
  EXPECT_EQ(WEXITSTATUS(exited->a), 0);  // the launcher's own exit, the daemon lives on
  EXPECT_TRUE(testutil::pid_alive(daemon));
  // What the launcher left is known before its exit is told.
  auto events = keeper.events->events();
  EXPECT_LT(position_of(events, KeeperMessage::daemon_adopted, 7), position_of(events, KeeperMessage::exited, 7));

  // Another group's daemons are not touched; its own get the signal.
  ASSERT_TRUE(keeper.client->send_signal_daemons(8, SIGTERM));
  ASSERT_TRUE(keeper.client->send_signal_daemons(7, SIGTERM));
  auto gone = keeper.events->find(KeeperMessage::daemon_gone, 7);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->a, daemon);
  EXPECT_TRUE(WIFEXITED(gone->b) && WEXITSTATUS(gone->b) == 0);
  EXPECT_EQ(testutil::read_file(dir + "/term"), "SIGTERM\n") << "the daemon did not see its SIGTERM";
}

TEST_P(KeeperModes, DaemonsCaughtInTheMiddleOfAnExecAreStillAttributed) {
  // The launcher exits while its child is exec'ing setsid, then sleep: a look
  // at that moment reads an empty environment. Each daemon must still be
  // attributed to its own id, never to nobody.
  Keeper keeper(GetParam());
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  constexpr std::uint32_t kFirst = 100, kCount = 40;
  for (std::uint32_t id = kFirst; id < kFirst + kCount; ++id) {
    ASSERT_TRUE(keeper.spawn(id, {"/bin/sh", "-c", "setsid sleep 1000 & exit 0"}, env_for(id), null_fd.get()));
  }
  for (std::uint32_t id = kFirst; id < kFirst + kCount; ++id) {
    auto adopted = keeper.events->find(KeeperMessage::daemon_adopted, id);
    EXPECT_TRUE(adopted) << "the daemon of id " << id << " was not attributed to it";
    ASSERT_TRUE(keeper.client->send_signal_daemons(id, SIGKILL));
  }
  auto events = keeper.events->events();
  for (const auto& event : events) {
    EXPECT_FALSE(event.type == KeeperMessage::daemon_adopted && event.id == pymanager::detail::kKeeperNoOwner)
        << "pid " << event.a << " was adopted with no owner";
  }
  // And each launcher's exit comes after the daemon it left.
  for (std::uint32_t id = kFirst; id < kFirst + kCount; ++id) {
    ASSERT_TRUE(keeper.events->find(KeeperMessage::exited, id));
  }
  events = keeper.events->events();
  for (std::uint32_t id = kFirst; id < kFirst + kCount; ++id) {
    EXPECT_LT(position_of(events, KeeperMessage::daemon_adopted, id), position_of(events, KeeperMessage::exited, id))
        << "id " << id;
  }
  EXPECT_EQ(keeper.events->wait_count(KeeperMessage::daemon_gone, kCount, 30000ms), kCount);
}

TEST_P(KeeperModes, ChildrenGetTheSoftFileLimitGiven) {
  // As the manager does: its own soft limit raised to the hard one.
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  struct rlimit raised = saved;
  raised.rlim_cur = saved.rlim_max == RLIM_INFINITY ? std::max<rlim_t>(saved.rlim_cur, 65536) : saved.rlim_max;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &raised), 0);
  std::string given, inherited;
  {
    Keeper limited(GetParam(), KeeperOptions{kToken, 200});
    Keeper unlimited(GetParam(), KeeperOptions{kToken, 0});
    for (auto* k : {&limited, &unlimited}) {
      auto out = pymanager::detail::make_pipe();
      EXPECT_TRUE(k->spawn(1, {"/bin/sh", "-c", "ulimit -n"}, env_for(1), out.write.get()));
      out.write.reset();
      (k == &limited ? given : inherited) = read_to_eof(out.read.get());
    }
  }
  ::setrlimit(RLIMIT_NOFILE, &saved);
  EXPECT_EQ(given, "200\n");
  EXPECT_EQ(inherited, std::to_string(raised.rlim_cur) + "\n");
}

INSTANTIATE_TEST_SUITE_P(Modes, KeeperModes, ::testing::Values("exec", "fork"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// ---------------------------------------------------------------- daemons

TEST(Keeper, ADaemonWithAnEmptyEnvironmentHasNoOwnerAndIsKilledAtGoodbye) {
  std::string dir = testutil::make_temp_dir();
  pid_t daemons[2] = {0, 0};
  {
    Keeper keeper("exec");
    UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
    const std::string daemonizer = testutil::runfile("tests/helpers/daemonizer");
    // env -i: the marker is gone. Another token's marker: not ours.
    ASSERT_TRUE(keeper.spawn(1, {"/usr/bin/env", "-i", daemonizer, dir + "/pid1", dir + "/term1"}, env_for(1),
                             null_fd.get()));
    ASSERT_TRUE(keeper.spawn(2, {daemonizer, dir + "/pid2", dir + "/term2"}, env_for(2, "fedcba9876543210"),
                             null_fd.get()));
    daemons[0] = wait_pid_file(dir + "/pid1");
    daemons[1] = wait_pid_file(dir + "/pid2");
    ASSERT_GT(daemons[0], 0);
    ASSERT_GT(daemons[1], 0);
    ASSERT_TRUE(keeper.events->wait([](const std::vector<KeeperEvent>& events) {
      int adopted = 0;
      for (const auto& e : events) adopted += e.type == KeeperMessage::daemon_adopted;
      return adopted == 2;
    }));
    std::set<std::int64_t> pids;
    for (const auto& e : keeper.events->events()) {
      if (e.type != KeeperMessage::daemon_adopted) continue;
      EXPECT_EQ(e.id, kKeeperNoOwner);
      pids.insert(e.a);
    }
    EXPECT_EQ(pids, (std::set<std::int64_t>{daemons[0], daemons[1]}));
    ASSERT_TRUE(testutil::pid_alive(daemons[0]));
    ASSERT_TRUE(testutil::pid_alive(daemons[1]));
    keeper.close();  // goodbye
  }
  for (pid_t daemon : daemons) {
    EXPECT_TRUE(testutil::wait_until([&] { return !testutil::pid_alive(daemon); }, 5000ms)) << daemon;
  }
  EXPECT_NE(::access((dir + "/term1").c_str(), F_OK), 0) << "SIGKILLed, not asked";
}

TEST(Keeper, AGroupThatOutlivesItsLeaderIsEmptyWhenItsLastMemberEnds) {
  Keeper keeper("exec");
  std::string dir = testutil::make_temp_dir();
  std::string fifo = dir + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  // The background reader stays in the group, orphaned: adopted for id 9.
  auto leader = keeper.spawn(9, {"/bin/sh", "-c", "read x < " + fifo + " & exit 0"}, env_for(9), null_fd.get());
  ASSERT_TRUE(leader);
  ASSERT_TRUE(keeper.events->find(KeeperMessage::exited, 9));
  auto member = keeper.events->find(KeeperMessage::daemon_adopted, 9);
  ASSERT_TRUE(member);
  EXPECT_EQ(::getpgid(static_cast<pid_t>(member->a)), leader->a);
  auto events = keeper.events->events();
  EXPECT_LT(position_of(events, KeeperMessage::daemon_adopted, 9), position_of(events, KeeperMessage::exited, 9));
  EXPECT_FALSE(keeper.events->find(KeeperMessage::group_empty, 9, 0ms)) << "the reader is still in the group";
  // Let it end: open the fifo once it has its reader, write a line.
  int writer = -1;
  ASSERT_TRUE(testutil::wait_until([&] { return (writer = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)) >= 0; }));
  ASSERT_EQ(::write(writer, "x\n", 2), 2);
  ::close(writer);
  auto gone = keeper.events->find(KeeperMessage::daemon_gone, 9);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->a, member->a);
  auto empty = keeper.events->find(KeeperMessage::group_empty, 9);
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->b, leader->a);
}

// ---------------------------------------------------------------- scale

TEST(Keeper, TwoThousandChildrenStartAndEveryEndIsReported) {
  constexpr std::uint32_t kCount = 2000;
  Keeper keeper("exec");
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto id_of = [](std::uint32_t i) { return i * 2000 + 1; };  // far apart, up to 3,998,001
  for (std::uint32_t i = 0; i < kCount; ++i) {
    ASSERT_TRUE(keeper.client->send_spawn(id_of(i), "/bin/sleep", "/", {"sleep", "600"}, env_for(id_of(i)),
                                          null_fd.get()));
  }
  ASSERT_EQ(keeper.events->wait_count(KeeperMessage::spawned, kCount, 180000ms), kCount);
  for (std::uint32_t i = 0; i < kCount; ++i) ASSERT_TRUE(keeper.client->send_signal(id_of(i), SIGKILL));
  EXPECT_EQ(keeper.events->wait_count(KeeperMessage::exited, kCount, 120000ms), kCount);
  EXPECT_EQ(keeper.events->wait_count(KeeperMessage::group_empty, kCount, 120000ms), kCount);
  std::set<std::uint32_t> exited, empty;
  for (const auto& e : keeper.events->events()) {
    if (e.type == KeeperMessage::exited) {
      exited.insert(e.id);
      EXPECT_TRUE(WIFSIGNALED(e.a) && WTERMSIG(e.a) == SIGKILL) << e.id;
    }
    if (e.type == KeeperMessage::group_empty) empty.insert(e.id);
    EXPECT_NE(e.type, KeeperMessage::spawn_failed) << e.id << ": " << std::strerror(static_cast<int>(e.a));
  }
  EXPECT_EQ(exited.size(), kCount);
  EXPECT_EQ(empty.size(), kCount);
  EXPECT_EQ(*exited.rbegin(), id_of(kCount - 1));
}

// ---------------------------------------------------------------- the program

TEST(Keeper, TheExecdKeeperDoesNotShareTheHostsMemory) {
  // A host that holds 256 MiB, every page written.
  const std::size_t size = std::size_t{256} << 20;
  std::unique_ptr<char[]> heap(new char[size]);
  std::memset(heap.get(), 1, size);
  long exec_rss = 0, fork_rss = 0;
  {
    Keeper keeper("exec");
    ASSERT_TRUE(keeper.client->exec_mode());
    exec_rss = rss_kib(keeper.client->pid());
  }
  {
    // The fallback, to show what is measured: the fork shares all of it.
    Keeper keeper("fork");
    fork_rss = rss_kib(keeper.client->pid());
  }
  EXPECT_GT(exec_rss, 0);
  EXPECT_LT(exec_rss, 64 * 1024) << "the exec'd keeper holds " << exec_rss << " KiB";
  EXPECT_GT(fork_rss, 200 * 1024) << "the forked keeper holds " << fork_rss << " KiB";
  EXPECT_EQ(heap[size - 1], 1);
}

TEST(Keeper, AKeeperPathThatIsNoExecutableIsAClearError) {
  auto before = own_children();
  for (const char* path : {"/nonexistent", "/tmp"}) {
    ScopedEnv env("PYMANAGER_KEEPER", path);
    try {
      KeeperClient client(KeeperOptions{kToken, 0});
      ADD_FAILURE() << "no error for " << path;
    } catch (const pymanager::Error& e) {
      EXPECT_EQ(e.kind(), pymanager::ErrorKind::system);
      const std::string expected = std::string("PYMANAGER_KEEPER=") + path + ": not an executable file: " +
                                   (std::string(path) == "/tmp" ? "Is a directory" : "No such file or directory");
      EXPECT_EQ(std::string(e.what()), expected);
    }
  }
  EXPECT_EQ(own_children(), before) << "nothing was started";
}

TEST(Keeper, AKeeperProgramThatExitsAtOnceIsAClearError) {
  ScopedEnv env("PYMANAGER_KEEPER", "/bin/true");
  try {
    KeeperClient client(KeeperOptions{kToken, 0});
    ADD_FAILURE() << "no error";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(std::string(e.what()), "the keeper program '/bin/true' exited with code 0 before it was ready");
  }
}

TEST(Keeper, AMalformedTokenIsRefused) {
  EXPECT_THROW(KeeperClient(KeeperOptions{"ABCDEF0123456789", 0}), pymanager::Error);
  EXPECT_THROW(KeeperClient(KeeperOptions{"short", 0}), pymanager::Error);
}

TEST(Keeper, TheProgramRunByHandSaysWhatItIs) {
  auto r = testutil::run({testutil::runfile("tools/pymanager-keeper")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("pymanager-keeper: fd 3 is not the manager's socket"), std::string::npos) << r.err;
  auto bad = testutil::run({testutil::runfile("tools/pymanager-keeper"), "--token=XYZ"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--token: 'XYZ' is not 16 lowercase hex characters"), std::string::npos) << bad.err;
}

/// The system call a process is blocked in (/proc/PID/syscall), or -1.
long blocked_in(pid_t pid) {
  std::string text = testutil::read_file("/proc/" + std::to_string(pid) + "/syscall");
  if (text.empty() || text[0] < '0' || text[0] > '9') return -1;  // "running", or gone
  return std::atol(text.c_str());
}

TEST(Keeper, AKeeperBlockedSendingToAManagerThatDiesStillCleansUp) {
  // A host that starts a keeper, never reads its events, floods it with
  // spawns until the keeper is blocked in send() to it, then dies.
  int report[2];
  ASSERT_EQ(::pipe2(report, O_CLOEXEC), 0);
  pid_t host = ::fork();
  ASSERT_GE(host, 0);
  if (host == 0) {
    ::close(report[0]);
    auto* keeper = new KeeperClient(KeeperOptions{kToken, 0});  // never destroyed: the host dies
    int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (!keeper->send_spawn(0, "/bin/sleep", "/", {"sleep", "600"}, {}, null_fd)) ::_exit(3);
    KeeperEvent spawned{};
    if (!keeper->read_event(spawned) || spawned.type != KeeperMessage::spawned) ::_exit(4);
    const std::string payload = pymanager::detail::make_spawn_payload("/bin/true", "/", {"true"}, {});
    bool blocked = false;
    auto deadline = testutil::Clock::now() + 30s;
    for (std::uint32_t id = 1; !blocked && id < 100000 && testutil::Clock::now() < deadline;) {
      int err = pymanager::detail::send_spawn_request(keeper->socket_fd(), id, payload, null_fd, -1, MSG_DONTWAIT);
      if (err == 0) {
        ++id;
      } else if (err != EAGAIN) {
        ::_exit(5);
      }
      blocked = blocked_in(keeper->pid()) == SYS_sendto;
      if (err == EAGAIN && !blocked) std::this_thread::sleep_for(1ms);  // it is spawning: our queue is full
    }
    std::string text = std::to_string(keeper->pid()) + " " + std::to_string(spawned.a) + " " + (blocked ? "1" : "0");
    ssize_t ignored = ::write(report[1], text.data(), text.size());
    (void)ignored;
    ::_exit(0);
  }
  ::close(report[1]);
  std::string text = read_to_eof(report[0], 60000ms);
  ::close(report[0]);
  int status;
  ASSERT_TRUE(testutil::wait_until([&] { return ::waitpid(host, &status, WNOHANG) == host; }, 60000ms));
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  long keeper_pid = 0, sleeper = 0, blocked = 0;
  ASSERT_EQ(std::sscanf(text.c_str(), "%ld %ld %ld", &keeper_pid, &sleeper, &blocked), 3) << text;
  EXPECT_EQ(blocked, 1) << "the keeper never blocked in send()";
  EXPECT_TRUE(testutil::wait_until([&] { return !testutil::pid_alive(static_cast<pid_t>(sleeper)); }, 10000ms));
  EXPECT_TRUE(testutil::wait_until([&] { return !testutil::pid_alive(static_cast<pid_t>(keeper_pid)); }, 10000ms));
}

TEST(Keeper, CloseAndReapWorksOnANonBlockingSocketAndTwice) {
  Keeper keeper("exec");
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto sleeper = keeper.spawn(1, {"/bin/sleep", "600"}, env_for(1), null_fd.get());
  ASSERT_TRUE(sleeper);
  keeper.events.reset();
  ::fcntl(keeper.client->socket_fd(), F_SETFL, O_NONBLOCK);
  pid_t keeper_pid = keeper.client->pid();
  keeper.client->close_and_reap();
  keeper.client->close_and_reap();
  EXPECT_EQ(keeper.client->pid(), 0);
  EXPECT_FALSE(testutil::pid_alive(keeper_pid));
  EXPECT_TRUE(testutil::wait_until([&] { return !testutil::pid_alive(static_cast<pid_t>(sleeper->a)); }, 5000ms));
}

}  // namespace
