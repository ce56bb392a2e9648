// pymanager: the keeper, a small helper process that spawns the managed
// processes on the manager's behalf and guarantees their cleanup.
//
// Why a separate process (DESIGN.md, decision 7):
// - it is a child subreaper (PR_SET_CHILD_SUBREAPER), so descendants whose
//   parent died (daemons: `pg_ctl start`, `redis-server --daemonize yes`, a
//   double fork and setsid) are re-parented to it: it sees them, reaps them
//   and can always kill them;
// - when its socket to the manager closes without a goodbye (the test binary
//   crashed, was killed with SIGKILL, or called exit), it kills every process
//   group and every adopted descendant, then exits;
// - it is single-threaded, so forking there is safe even when the host
//   process (a test binary) has many threads;
// - the host process never reaps anything but the keeper itself.
//
// Daemons and their owners. Every child's environment carries
// PYMANAGER_OWNER=<token>:<id> (the manager adds it; the token, 16 lowercase
// hex characters, is given to the keeper at start, so that a marker
// inherited from another pymanager does not count). When the keeper finds a
// child of its own that it did not spawn, it reads /proc/PID/environ, takes
// the id from the marker with its token, and reports daemon_adopted; when it
// reaps that child, daemon_gone. It looks after every batch of reaps (an
// exit is what makes orphans), on each signal_daemons request, and every
// 50 ms while a group lives on without its leader; at most once per 10 ms
// (and, with thousands of children, where a look costs more, at most a
// tenth of the time).
// Order: the exits of a batch of reaps are reported after the look that
// follows it, so a daemon whose launcher has exited (it was re-parented to
// the keeper before the launcher's SIGCHLD) is reported before the
// launcher's exited and group_empty; an exit waits at most one look
// interval for it.
// A child whose environment reads empty may be in the middle of an exec: it
// is looked at again every millisecond for up to kKeeperExecWindowMs, and
// the exits and signal_daemons that wait for a look wait for that too.
// A daemon that runs with an empty environment (exec'd through `env -i`) or
// one the keeper may not read (it changed its user) has no marker: it is
// reported with kKeeperNoOwner, signal_daemons(kKeeperNoOwner, ...) reaches
// it, and it is killed at cleanup like everything else the keeper adopted.
// The keeper reads the environment the daemon was exec'd with: a daemon that
// only unsets the variable in its own memory (unsetenv) is still attributed.
//
// This header is the keeper's own code (keeper_main). The protocol is in
// detail/keeper_protocol.hpp, the manager's side in detail/keeper_client.hpp.
#ifndef PYMANAGER_DETAIL_KEEPER_PROGRAM_HPP
#define PYMANAGER_DETAIL_KEEPER_PROGRAM_HPP

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/keeper_protocol.hpp"
#include "pymanager/error.hpp"

extern char** environ;

namespace pymanager {
inline namespace v1 {
namespace detail {

// ---------------------------------------------------------------------------
// The keeper's side. Async-signal-safe code only from here to keeper_main:
// in the fork fallback it runs in the child of a multi-threaded fork.

/// An array in anonymous memory that grows with mremap. Elements must be
/// trivially copyable; new ones are zero. No malloc: safe after fork.
template <class T>
struct KeeperArray {
  T* data = nullptr;
  std::size_t capacity = 0;  ///< in elements
  std::size_t bytes = 0;

  /// Room for at least `n` elements; false when the memory cannot be had.
  bool reserve(std::size_t n) noexcept {
    if (n <= capacity) return true;
    std::size_t want = capacity == 0 ? 64 : capacity;
    while (want < n) want *= 2;
    // A multiple of 64 KiB is a multiple of every page size.
    const std::size_t round = std::size_t{64} * 1024;
    std::size_t new_bytes = (want * sizeof(T) + round - 1) / round * round;
    void* p = data == nullptr ? ::mmap(nullptr, new_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                              : ::mremap(data, bytes, new_bytes, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) return false;
    data = static_cast<T*>(p);
    bytes = new_bytes;
    capacity = new_bytes / sizeof(T);
    return true;
  }
};

/// A child of the keeper: a group leader it spawned or a daemon it adopted.
struct KeeperChild {
  pid_t pid;             ///< 0: an empty slot
  std::uint32_t id;      ///< the group's id (leader), or the owner (daemon)
  std::uint32_t daemon;  ///< 0: a group leader; else 1 + the position in the daemon list
};

/// pid -> KeeperChild, open addressing with linear probing, at most half
/// full, backward-shift deletion (no tombstones). In anonymous memory.
struct KeeperChildMap {
  KeeperChild* slots = nullptr;
  std::size_t bytes = 0;
  unsigned bits = 0;  ///< capacity = 2^bits
  std::size_t size = 0;

  std::size_t capacity() const noexcept { return slots == nullptr ? 0 : std::size_t{1} << bits; }

  std::size_t home(pid_t pid) const noexcept {
    // Fibonacci hashing: the high bits of the product.
    return static_cast<std::size_t>((std::uint64_t{static_cast<std::uint32_t>(pid)} * 0x9E3779B97F4A7C15ull) >> (64 - bits));
  }

  KeeperChild* find(pid_t pid) noexcept {
    if (slots == nullptr || pid <= 0) return nullptr;
    const std::size_t mask = capacity() - 1;
    for (std::size_t i = home(pid);; i = (i + 1) & mask) {
      if (slots[i].pid == pid) return &slots[i];
      if (slots[i].pid == 0) return nullptr;  // the table is never full
    }
  }

  /// Room for one more; false when the memory cannot be had.
  bool reserve_one() noexcept {
    if ((size + 1) * 2 <= capacity()) return true;
    return rehash(slots == nullptr ? 10 : bits + 1);
  }

  /// Adds a child not in the map yet; call reserve_one() first.
  void insert(const KeeperChild& child) noexcept {
    const std::size_t mask = capacity() - 1;
    std::size_t i = home(child.pid);
    while (slots[i].pid != 0) i = (i + 1) & mask;
    slots[i] = child;
    ++size;
  }

  void erase(KeeperChild* slot) noexcept {
    const std::size_t mask = capacity() - 1;
    std::size_t hole = static_cast<std::size_t>(slot - slots);
    for (std::size_t j = (hole + 1) & mask; slots[j].pid != 0; j = (j + 1) & mask) {
      // The entry at j may fill the hole unless its home lies cyclically in
      // (hole, j]: then it would no longer be found from there.
      std::size_t k = home(slots[j].pid);
      bool stays = hole <= j ? (hole < k && k <= j) : (hole < k || k <= j);
      if (stays) continue;
      slots[hole] = slots[j];
      hole = j;
    }
    slots[hole].pid = 0;
    --size;
  }

 private:
  bool rehash(unsigned new_bits) noexcept {
    std::size_t new_bytes = (sizeof(KeeperChild) << new_bits);
    void* p = ::mmap(nullptr, new_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    KeeperChild* old = slots;
    const std::size_t old_capacity = capacity();
    const std::size_t old_bytes = bytes;
    slots = static_cast<KeeperChild*>(p);
    bytes = new_bytes;
    bits = new_bits;
    size = 0;
    for (std::size_t i = 0; i < old_capacity; ++i) {
      if (old[i].pid != 0) insert(old[i]);
    }
    if (old != nullptr) ::munmap(old, old_bytes);
    return true;
  }
};

/// Finds PYMANAGER_OWNER=<token>:<id> in an environment block (entries
/// separated by NUL bytes) fed in pieces of any size. The first entry with
/// this token and a valid id (decimal, at most 8 digits, below
/// kKeeperMaxIds) wins; an empty token matches nothing.
class KeeperOwnerMatcher {
 public:
  /// `token` must outlive the matcher.
  KeeperOwnerMatcher(const char* token, std::size_t token_length) noexcept
      : token_(token), token_length_(token_length), state_(token_length == 0 ? State::skipping : State::matching) {}

  void feed(const char* data, std::size_t size) noexcept {
    for (std::size_t i = 0; i < size && id_ == kKeeperNoOwner; ++i) step(data[i]);
  }

  /// True once an id was found (the rest need not be fed).
  bool found() const noexcept { return id_ != kKeeperNoOwner; }

  /// The end of the block (it ends an unterminated last entry too): the id,
  /// or kKeeperNoOwner.
  std::uint32_t finish() noexcept {
    if (id_ == kKeeperNoOwner) end_entry();
    return id_;
  }

 private:
  enum class State : std::uint8_t { matching, digits, skipping };
  static constexpr std::size_t kNameLength = sizeof kKeeperOwnerVariable - 1;

  char expected(std::size_t pos) const noexcept {
    if (pos < kNameLength) return kKeeperOwnerVariable[pos];
    if (pos == kNameLength) return '=';
    if (pos < kNameLength + 1 + token_length_) return token_[pos - kNameLength - 1];
    return ':';
  }

  void step(char c) noexcept {
    if (c == '\0') return end_entry();
    switch (state_) {
      case State::matching:
        if (c != expected(pos_)) {
          state_ = State::skipping;
        } else if (++pos_ == kNameLength + token_length_ + 2) {
          state_ = State::digits;
        }
        break;
      case State::digits:
        if (c >= '0' && c <= '9' && digits_ < 8) {
          value_ = value_ * 10 + static_cast<std::uint32_t>(c - '0');
          ++digits_;
        } else {
          state_ = State::skipping;
        }
        break;
      case State::skipping:
        break;
    }
  }

  void end_entry() noexcept {
    if (state_ == State::digits && digits_ > 0 && value_ < kKeeperMaxIds) id_ = value_;
    state_ = token_length_ == 0 ? State::skipping : State::matching;
    pos_ = 0;
    value_ = 0;
    digits_ = 0;
  }

  const char* token_;
  std::size_t token_length_;
  State state_;
  std::size_t pos_ = 0;
  std::uint32_t value_ = 0;
  unsigned digits_ = 0;
  std::uint32_t id_ = kKeeperNoOwner;
};

/// The next pid in a list of decimal numbers separated by anything else
/// (/proc/.../children: "12 345 "); advances `p`. False at the end. Numbers
/// of more than 9 digits and 0 are skipped.
inline bool keeper_next_pid(const char*& p, const char* end, pid_t& pid) noexcept {
  while (p < end) {
    while (p < end && (*p < '0' || *p > '9')) ++p;
    if (p == end) return false;
    long value = 0;
    int digits = 0;
    for (; p < end && *p >= '0' && *p <= '9'; ++p) {
      if (++digits <= 9) value = value * 10 + (*p - '0');
    }
    if (digits <= 9 && value > 0) {
      pid = static_cast<pid_t>(value);
      return true;
    }
  }
  return false;
}

/// A process group the keeper spawned, indexed by id.
struct KeeperGroup {
  pid_t pgid;            ///< 0: no group alive under this id
  std::uint32_t linger;  ///< 0: its leader is alive; else 1 + the position in the lingering list
};

struct KeeperDaemon {
  pid_t pid;
  std::uint32_t owner;
};

struct KeeperPendingSignal {
  std::uint32_t id;
  int sig;
};

/// A child met in the middle of an exec (see keeper_owner_of), since when.
struct KeeperDeferred {
  pid_t pid;
  std::int64_t since_ms;
  bool seen;  ///< deferred again by the current look
};

/// A child reaped whose exit is not reported yet (it waits for the look
/// that follows, so that the orphans it left are reported first).
struct KeeperReaped {
  pid_t pid;
  std::uint32_t id;     ///< the group's id, or the daemon's owner
  int status;           ///< its wait status
  bool daemon;          ///< a daemon: daemon_gone; else a leader: exited
  bool group_empty;     ///< a leader whose group was already empty when it was reaped
};

/// Everything the keeper uses; it lives in anonymous memory (keeper_main).
struct KeeperState {
  int sock = -1;
  int sigfd = -1;
  pid_t self = 0;
  char token[kKeeperTokenLength + 1] = {};
  std::size_t token_length = 0;
  rlim_t child_nofile = 0;  ///< 0: leave the children's limit as it is

  KeeperArray<KeeperGroup> groups;  ///< by id
  KeeperChildMap children;          ///< leaders and daemons, by pid
  KeeperArray<KeeperDaemon> daemons;
  std::size_t daemon_count = 0;
  KeeperArray<std::uint32_t> lingering;  ///< ids of groups alive without their leader
  std::size_t lingering_count = 0;
  KeeperArray<KeeperPendingSignal> pending;  ///< signal_daemons requests waiting for the next look
  std::size_t pending_count = 0;
  KeeperArray<KeeperReaped> reaped;  ///< exits waiting for the next look
  std::size_t reaped_count = 0;

  bool look_wanted = false;
  /// Children met with no environment and no command line: in the middle
  /// of an exec, each is looked at again (see keeper_owner_of).
  KeeperArray<KeeperDeferred> deferred;
  std::size_t deferred_count = 0;
  bool no_children_file = false;  ///< the kernel lacks CONFIG_PROC_CHILDREN: scan /proc
  std::int64_t last_look_ms = 0;
  std::int64_t look_interval_ms = 0;  ///< kKeeperLookIntervalMs, more when a look is slow
  std::int64_t next_linger_ms = 0;  ///< 0: no group lingers
  KeeperArray<char> list;           ///< the text of /proc/self/task/<pid>/children

  char children_path[64] = {};
  char path_buffer[64] = {};
  // Buffers, left as mmap gave them (zero): a page is touched when used.
  char proc_buffer[4096];
  char environ_buffer[4096];
  char* strings[kKeeperMaxStrings];
  alignas(8) char message[sizeof(KeeperHeader) + kKeeperMaxMessage];
};

/// Looks again for new orphans at most this often. No floor of its own: a
/// look among a few children costs microseconds, and every exit waits for
/// the look that follows it (a teardown of 10 services would wait 10 ms for
/// a 10 ms floor); the cost factor below spaces out the expensive looks.
constexpr std::int64_t kKeeperLookIntervalMs = 0;
/// A child whose environment reads empty may be in the middle of an exec
/// (the kernel has switched its memory but not yet placed it there): it is
/// looked at again, every millisecond, for at most this long (counted for
/// each child) before it counts as a daemon with no owner (`env -i`). Meanwhile the
/// exits and signal_daemons requests that wait for a look keep waiting, so
/// that a launcher's exit still comes after the daemon it left.
constexpr std::int64_t kKeeperExecWindowMs = 100;
/// ... and waits at least this many times as long as the last look took: the
/// kernel restarts its walk of the children list at every 4 KB read, so a
/// look costs about 10 ms with 10,000 children, and looks must not take
/// more than a tenth of the keeper's time.
constexpr std::int64_t kKeeperLookCostFactor = 9;
/// While a group lives without its leader, looks at it (and for orphans) this often.
constexpr std::int64_t kKeeperLingerIntervalMs = 50;
/// The cleanup's bound: killing and reaping what is left.
constexpr std::int64_t kKeeperCleanupMs = 3000;
/// At most this much of a daemon's environment is read.
constexpr std::size_t kKeeperMaxEnviron = std::size_t{8} << 20;
/// At most this much of the children list (4 M pids of 8 digits).
constexpr std::size_t kKeeperMaxChildrenList = std::size_t{64} << 20;
/// Descriptors one message may carry; more are closed and the spawn refused.
constexpr int kKeeperMaxPassedFds = 4;

inline std::int64_t keeper_now_us() noexcept {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

inline std::int64_t keeper_now_ms() noexcept { return keeper_now_us() / 1000; }

/// Parses a decimal number; advances `p`.
inline long keeper_parse_long(const char*& p) noexcept {
  long value = 0;
  while (*p >= '0' && *p <= '9') value = value * 10 + (*p++ - '0');
  return value;
}

inline void keeper_format_pid(char* out, const char* prefix, long pid, const char* suffix) noexcept {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + pid % 10);
    pid /= 10;
  } while (pid > 0);
  while (*prefix) *out++ = *prefix++;
  while (n > 0) *out++ = digits[--n];
  while (*suffix) *out++ = *suffix++;
  *out = '\0';
}

/// Reads the state letter and the parent pid from /proc/<pid>/stat; false
/// when it cannot.
inline bool keeper_read_stat(KeeperState& k, long pid, char& state, long& parent) noexcept {
  keeper_format_pid(k.path_buffer, "/proc/", pid, "/stat");
  int fd = ::open(k.path_buffer, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = ::read(fd, k.proc_buffer, sizeof k.proc_buffer - 1);
  ::close(fd);
  if (n <= 0) return false;
  k.proc_buffer[n] = '\0';
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
  // look for the last ')'.
  const char* close_paren = nullptr;
  for (const char* p = k.proc_buffer; *p; ++p) {
    if (*p == ')') close_paren = p;
  }
  if (close_paren == nullptr || close_paren[1] != ' ' || close_paren[2] == '\0' || close_paren[3] != ' ') return false;
  state = close_paren[2];
  const char* p = close_paren + 4;
  parent = keeper_parse_long(p);
  return true;
}

/// Calls `f(pid)` for every child of the keeper (adopted ones included):
/// from /proc/self/task/<pid>/children, or by scanning /proc when the
/// kernel has no such file.
template <class F>
void keeper_for_each_child(KeeperState& k, F f) noexcept {
  if (!k.no_children_file) {
    int fd = ::open(k.children_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) k.no_children_file = true;
    if (fd >= 0) {
      // Read it all before acting on it (it can be long: 10,000 children
      // take 60 KB); large reads, so that it is mostly one snapshot.
      std::size_t length = 0;
      while (length < kKeeperMaxChildrenList && k.list.reserve(length + 16384)) {
        ssize_t n = ::read(fd, k.list.data + length, k.list.capacity - length);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        length += static_cast<std::size_t>(n);
      }
      ::close(fd);
      const char* p = k.list.data;
      pid_t pid;
      while (keeper_next_pid(p, k.list.data + length, pid)) f(pid);
      return;
    }
    if (!k.no_children_file) return;  // a passing failure (EMFILE...): the next look
  }
  int dir = ::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return;
  alignas(8) char entries[4096];
  for (;;) {
    long n = ::syscall(SYS_getdents64, dir, entries, sizeof entries);
    if (n <= 0) break;
    for (long offset = 0; offset < n;) {
      // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
      unsigned short reclen;
      std::memcpy(&reclen, entries + offset + 16, sizeof reclen);
      const char* name = entries + offset + 19;
      offset += reclen;
      if (name[0] < '1' || name[0] > '9') continue;
      const char* p = name;
      long pid = keeper_parse_long(p);
      char state;
      long parent;
      if (*p == '\0' && keeper_read_stat(k, pid, state, parent) && parent == k.self) f(static_cast<pid_t>(pid));
    }
  }
  ::close(dir);
}

/// SIGKILLs a child of ours and the group it leads, if it leads one. A child
/// not reaped yet keeps its pid: it cannot be someone else's.
inline void keeper_kill_child_and_group(pid_t pid) noexcept {
  if (::getpgid(pid) == pid) ::kill(-pid, SIGKILL);
  ::kill(pid, SIGKILL);
}

/// Kills everything that is left and exits. Bounded: about kKeeperCleanupMs.
[[noreturn]] inline void keeper_cleanup_and_exit(KeeperState& k) noexcept {
  for (std::size_t i = 0; i < k.children.capacity(); ++i) {
    const KeeperChild& child = k.children.slots[i];
    if (child.pid == 0) continue;
    if (child.daemon == 0) {
      ::kill(-child.pid, SIGKILL);
    } else {
      keeper_kill_child_and_group(child.pid);
    }
  }
  for (std::size_t i = 0; i < k.lingering_count; ++i) ::kill(-k.groups.data[k.lingering.data[i]].pgid, SIGKILL);
  // Then rounds: reap, kill whatever is still a child of ours (what the
  // killed left behind is re-parented to us), until nothing is left.
  const std::int64_t deadline = keeper_now_ms() + kKeeperCleanupMs;
  for (;;) {
    int status;
    while (::waitpid(-1, &status, WNOHANG) > 0) {
    }
    if (::waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD) break;
    if (keeper_now_ms() >= deadline) break;
    keeper_for_each_child(k, [](pid_t pid) { keeper_kill_child_and_group(pid); });
    // Wait for the next SIGCHLD, at most 10 ms.
    struct pollfd p = {k.sigfd, POLLIN, 0};
    ::poll(&p, 1, 10);
    signalfd_siginfo info;
    while (k.sigfd >= 0 && ::read(k.sigfd, &info, sizeof info) > 0) {
    }
  }
  ::_exit(0);
}

/// Sends one message. It may block while the manager's queue is full (the
/// manager always reads); a manager that is gone (EPIPE, ECONNRESET) ends
/// the keeper with its cleanup.
inline void keeper_send(KeeperState& k, KeeperMessage type, std::uint32_t id, std::int64_t a, std::int64_t b) noexcept {
  KeeperHeader header{type, id, a, b};
  for (;;) {
    // MSG_NOSIGNAL: a manager that is gone must not kill us with SIGPIPE.
    if (::send(k.sock, &header, sizeof header, MSG_NOSIGNAL) >= 0) return;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == ENOBUFS || errno == ENOMEM) {
      struct pollfd p = {k.sock, POLLOUT, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    keeper_cleanup_and_exit(k);
  }
}

// ----- daemons

/// The owner of an orphan from its environment. False when there is nothing
/// to adopt (it is gone, or a zombie that will be reaped next).
/// True when `pid`, met with an empty environment, is to be looked at again: for at most
/// kKeeperExecWindowMs since this child was first met so. Without memory
/// for the list it is not deferred (it counts as a daemon with no owner).
inline bool keeper_defer(KeeperState& k, pid_t pid) noexcept {
  const std::int64_t now = keeper_now_ms();
  for (std::size_t i = 0; i < k.deferred_count; ++i) {
    KeeperDeferred& d = k.deferred.data[i];
    if (d.pid != pid) continue;
    d.seen = now - d.since_ms < kKeeperExecWindowMs;
    return d.seen;
  }
  if (!k.deferred.reserve(k.deferred_count + 1)) return false;
  k.deferred.data[k.deferred_count++] = KeeperDeferred{pid, now, true};
  return true;
}

inline bool keeper_owner_of(KeeperState& k, pid_t pid, std::uint32_t& owner) noexcept {
  owner = kKeeperNoOwner;
  keeper_format_pid(k.path_buffer, "/proc/", pid, "/environ");
  int fd = ::open(k.path_buffer, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno != ENOENT && errno != ESRCH;  // EACCES: adopted, with no owner
  KeeperOwnerMatcher matcher(k.token, k.token_length);
  std::size_t total = 0;
  while (total < kKeeperMaxEnviron && !matcher.found()) {
    ssize_t n = ::read(fd, k.environ_buffer, sizeof k.environ_buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    total += static_cast<std::size_t>(n);
    matcher.feed(k.environ_buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  owner = matcher.finish();
  if (total > 0) return true;
  // An empty environment: `env -i`, a zombie (it has no memory left), or a
  // process in the middle of an exec (the kernel has switched its memory
  // but not yet placed its environment). The last two cannot be told apart
  // from outside: it is looked at again for a while (keeper_defer).
  char state = 0;
  long parent = 0;
  if (!keeper_read_stat(k, pid, state, parent) || state == 'Z') return false;
  return !keeper_defer(k, pid);
}

/// A child we did not know: record it as a daemon and tell the manager.
inline void keeper_consider_child(KeeperState& k, pid_t pid) noexcept {
  if (k.children.find(pid) != nullptr) return;
  std::uint32_t owner;
  if (!keeper_owner_of(k, pid, owner)) return;
  // Without memory it is not reported; the cleanup still kills it.
  if (!k.children.reserve_one() || !k.daemons.reserve(k.daemon_count + 1)) return;
  k.daemons.data[k.daemon_count] = KeeperDaemon{pid, owner};
  ++k.daemon_count;
  k.children.insert(KeeperChild{pid, owner, static_cast<std::uint32_t>(k.daemon_count)});
  keeper_send(k, KeeperMessage::daemon_adopted, owner, pid, 0);
}

inline void keeper_look_for_daemons(KeeperState& k) noexcept {
  k.look_wanted = false;
  for (std::size_t i = 0; i < k.deferred_count; ++i) k.deferred.data[i].seen = false;
  const std::int64_t start = keeper_now_us();
  keeper_for_each_child(k, [&k](pid_t pid) { keeper_consider_child(k, pid); });
  const std::int64_t end = keeper_now_us();
  k.last_look_ms = end / 1000;
  k.look_interval_ms = std::max(kKeeperLookIntervalMs, (end - start) * kKeeperLookCostFactor / 1000);
  // Forget the children no longer deferred (adopted, gone, or past their window).
  std::size_t kept = 0;
  for (std::size_t i = 0; i < k.deferred_count; ++i) {
    if (k.deferred.data[i].seen) k.deferred.data[kept++] = k.deferred.data[i];
  }
  k.deferred_count = kept;
  if (k.deferred_count > 0) {
    // A child in the middle of an exec: another look in a millisecond.
    k.look_wanted = true;
    k.look_interval_ms = std::max<std::int64_t>(k.look_interval_ms, 1);
  }
}

inline void keeper_signal_daemons(KeeperState& k, std::uint32_t id, int sig) noexcept {
  for (std::size_t i = 0; i < k.daemon_count; ++i) {
    const KeeperDaemon& d = k.daemons.data[i];
    if (d.owner != id) continue;
    ::kill(d.pid, sig);
    if (sig == SIGKILL && ::getpgid(d.pid) == d.pid) ::kill(-d.pid, SIGKILL);
  }
}

/// A reaped daemon leaves the list (the last one takes its place).
inline void keeper_forget_daemon(KeeperState& k, std::uint32_t position) noexcept {
  const std::size_t index = position - 1;
  const std::size_t last = k.daemon_count - 1;
  if (index != last) {
    k.daemons.data[index] = k.daemons.data[last];
    if (KeeperChild* moved = k.children.find(k.daemons.data[index].pid)) moved->daemon = position;
  }
  --k.daemon_count;
}

// ----- groups

inline void keeper_start_lingering(KeeperState& k, std::uint32_t id) noexcept {
  if (!k.lingering.reserve(k.lingering_count + 1)) {
    // Without memory: forget the group rather than lose track of the list.
    k.groups.data[id] = KeeperGroup{0, 0};
    return;
  }
  k.lingering.data[k.lingering_count] = id;
  ++k.lingering_count;
  k.groups.data[id].linger = static_cast<std::uint32_t>(k.lingering_count);
}

/// Reports the lingering groups that became empty.
inline void keeper_check_lingering(KeeperState& k) noexcept {
  for (std::size_t i = 0; i < k.lingering_count;) {
    const std::uint32_t id = k.lingering.data[i];
    const pid_t pgid = k.groups.data[id].pgid;
    // A group is empty when no process, not even a zombie, is left in it.
    if (::kill(-pgid, 0) == 0 || errno != ESRCH) {
      ++i;
      continue;
    }
    k.groups.data[id] = KeeperGroup{0, 0};
    const std::size_t last = --k.lingering_count;
    if (i != last) {
      k.lingering.data[i] = k.lingering.data[last];
      k.groups.data[k.lingering.data[i]].linger = static_cast<std::uint32_t>(i + 1);
    }
    keeper_send(k, KeeperMessage::group_empty, id, 0, pgid);
  }
  if (k.lingering_count == 0) k.next_linger_ms = 0;
}

/// Reports the exits held for the look that just happened: exited, then
/// group_empty if the group was empty already, else the group lingers.
inline void keeper_report_reaped(KeeperState& k) noexcept {
  for (std::size_t i = 0; i < k.reaped_count; ++i) {
    const KeeperReaped r = k.reaped.data[i];
    if (r.daemon) {
      keeper_send(k, KeeperMessage::daemon_gone, r.id, r.pid, r.status);
      continue;
    }
    keeper_send(k, KeeperMessage::exited, r.id, r.status, r.pid);
    if (r.group_empty) {
      keeper_send(k, KeeperMessage::group_empty, r.id, 0, r.pid);
    } else {
      keeper_start_lingering(k, r.id);
    }
  }
  k.reaped_count = 0;
}

/// Looks for new orphans now, then reports the exits that waited for it and
/// serves the signal_daemons requests that did.
inline void keeper_look_and_report(KeeperState& k) noexcept {
  keeper_look_for_daemons(k);
  // A child met mid-exec may be a daemon its launcher just left: the exits
  // and the signals wait for the look that settles it (bounded by its window).
  if (k.deferred_count > 0) return;
  keeper_report_reaped(k);
  for (std::size_t i = 0; i < k.pending_count; ++i) keeper_signal_daemons(k, k.pending.data[i].id, k.pending.data[i].sig);
  k.pending_count = 0;
}

inline bool keeper_look_due(const KeeperState& k, std::int64_t now) noexcept {
  return (k.look_wanted || k.pending_count > 0 || k.reaped_count > 0) && now - k.last_look_ms >= k.look_interval_ms;
}

/// Reaps every finished child. Its exit is reported after the next look
/// (at once when one is allowed): an exit is what makes orphans, and a
/// daemon its launcher left is then reported before the launcher's exit.
inline void keeper_reap(KeeperState& k) noexcept {
  const std::size_t first = k.reaped_count;
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    k.look_wanted = true;
    KeeperChild* slot = k.children.find(pid);
    if (slot == nullptr) continue;  // an orphan that ended before we looked at it
    const KeeperChild child = *slot;
    k.children.erase(slot);
    // Forgotten now, so that nothing signals a pid that is free again.
    if (child.daemon != 0) keeper_forget_daemon(k, child.daemon);
    if (!k.reaped.reserve(k.reaped_count + 1)) {
      // Without memory: report it at once, without the look first.
      if (child.daemon != 0) {
        keeper_send(k, KeeperMessage::daemon_gone, child.id, pid, status);
      } else {
        keeper_start_lingering(k, child.id);
        keeper_send(k, KeeperMessage::exited, child.id, status, pid);
      }
      continue;
    }
    k.reaped.data[k.reaped_count++] = KeeperReaped{pid, child.id, status, child.daemon != 0, false};
  }
  // After the whole batch (its zombies count as members): the groups of the
  // leaders reaped that are empty already end now, so that no signal_group
  // reaches a pgid that may be reused meanwhile.
  for (std::size_t i = first; i < k.reaped_count; ++i) {
    KeeperReaped& r = k.reaped.data[i];
    if (!r.daemon && ::kill(-r.pid, 0) != 0 && errno == ESRCH) {
      r.group_empty = true;
      k.groups.data[r.id] = KeeperGroup{0, 0};
    }
  }
  if (keeper_look_due(k, keeper_now_ms())) keeper_look_and_report(k);
  keeper_check_lingering(k);
}

// ----- spawning

/// Runs in the forked child that executes a spawn request. Never returns.
[[noreturn]] inline void keeper_exec_child(const char* path, char* const* argv, char* const* envp, const char* cwd,
                                           int out_fd, int err_fd, int error_fd, pid_t keeper_pid,
                                           rlim_t child_nofile) noexcept {
  auto fail = [&](SpawnStage stage) {
    std::int32_t report[2] = {errno, static_cast<std::int32_t>(stage)};
    ssize_t ignored = ::write(error_fd, report, sizeof report);
    (void)ignored;
    ::_exit(127);
  };
  // Default dispositions and an empty mask: the keeper blocks SIGCHLD and
  // ignores SIGINT/SIGTERM, and neither must reach the service.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  // Its own process group, so that one kill(-pgid) reaches its whole tree.
  ::setpgid(0, 0);
  // Dies with the keeper even if the keeper is SIGKILLed.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != keeper_pid) ::_exit(127);
  // The manager raised its own limit for its pipes; the service gets the
  // limit it would have had.
  if (child_nofile != 0) {
    struct rlimit limit {};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
      limit.rlim_cur = (limit.rlim_max != RLIM_INFINITY && child_nofile > limit.rlim_max) ? limit.rlim_max : child_nofile;
      ::setrlimit(RLIMIT_NOFILE, &limit);
    }
  }
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // dup2 below gives fd 0 without it
  if (null_fd < 0) fail(SpawnStage::stdin_open);
  if (null_fd != 0) {
    ::dup2(null_fd, 0);
    ::close(null_fd);
  } else {
    ::fcntl(0, F_SETFD, 0);  // it is stdin itself: keep it across exec
  }
  // The passed descriptors are above 3 (keeper_main keeps 0 to 3 open), so
  // neither dup2 overwrites the other's source. They are close-on-exec.
  ::dup2(out_fd, 1);
  ::dup2(err_fd >= 0 ? err_fd : out_fd, 2);
  if (cwd != nullptr && cwd[0] != '\0' && ::chdir(cwd) != 0) fail(SpawnStage::chdir);
  ::execve(path, argv, envp);
  fail(SpawnStage::exec);
  ::_exit(127);  // not reached
}

/// A decoded spawn request: pointers into the request's own buffer.
struct SpawnRequest {
  char* path = nullptr;
  char* cwd = nullptr;
  char** argv = nullptr;  ///< argc entries, then nullptr
  char** envp = nullptr;  ///< envc entries, then nullptr
};

/// Decodes a spawn payload in place. It is length-prefixed, so that no
/// content can shift a field: `u32 argc, u32 envc`, then path, working
/// directory, argv[0..argc) and envp[0..envc), each as `u32 length, the
/// bytes, NUL`. Returns 0, or EINVAL (malformed: a length past the end, a
/// NUL inside a string, bytes left over) or E2BIG (more than `max_strings`
/// pointers needed). Async-signal-safe.
inline int keeper_decode_spawn(char* payload, std::size_t size, char** strings, std::size_t max_strings,
                               SpawnRequest& out) noexcept {
  char* p = payload;
  char* const end = payload + size;
  auto read_u32 = [&](std::uint32_t& value) {
    if (static_cast<std::size_t>(end - p) < sizeof value) return false;
    std::memcpy(&value, p, sizeof value);
    p += sizeof value;
    return true;
  };
  auto next = [&]() -> char* {
    std::uint32_t length;
    if (!read_u32(length) || static_cast<std::size_t>(end - p) < static_cast<std::size_t>(length) + 1) return nullptr;
    char* text = p;
    if (text[length] != '\0' || std::memchr(text, '\0', length) != nullptr) return nullptr;
    p += static_cast<std::size_t>(length) + 1;
    return text;
  };
  std::uint32_t argc = 0, envc = 0;
  if (!read_u32(argc) || !read_u32(envc)) return EINVAL;
  if (argc == 0 || static_cast<std::size_t>(argc) + envc + 2 > max_strings) return E2BIG;
  out.path = next();
  out.cwd = next();
  if (out.path == nullptr || out.cwd == nullptr) return EINVAL;
  out.argv = strings;
  for (std::uint32_t i = 0; i < argc; ++i) {
    if ((out.argv[i] = next()) == nullptr) return EINVAL;
  }
  out.argv[argc] = nullptr;
  out.envp = out.argv + argc + 1;
  for (std::uint32_t i = 0; i < envc; ++i) {
    if ((out.envp[i] = next()) == nullptr) return EINVAL;
  }
  out.envp[envc] = nullptr;
  return p == end ? 0 : EINVAL;
}

/// What came with a message.
struct KeeperReceived {
  KeeperHeader header{};
  std::size_t payload_size = 0;
  bool truncated = false;  ///< larger than the buffer (MSG_TRUNC), or too many descriptors (MSG_CTRUNC)
  int fds[kKeeperMaxPassedFds] = {};
  int fd_count = 0;
};

/// Handles one spawn request (see keeper_decode_spawn for its payload).
inline void keeper_spawn(KeeperState& k, const KeeperReceived& r) noexcept {
  const std::uint32_t id = r.header.id;
  auto reject = [&](int err, SpawnStage stage) {
    keeper_send(k, KeeperMessage::spawn_failed, id, err, static_cast<std::int64_t>(stage));
  };
  if (r.truncated) return reject(E2BIG, SpawnStage::protocol);
  if (id >= kKeeperMaxIds || r.fd_count < 1 || r.fd_count > 2 ||
      r.header.b != static_cast<std::int64_t>(r.payload_size)) {
    return reject(EINVAL, SpawnStage::protocol);
  }
  if (!k.groups.reserve(std::size_t{id} + 1) || !k.children.reserve_one()) return reject(ENOMEM, SpawnStage::fork);
  if (k.groups.data[id].pgid != 0) return reject(EBUSY, SpawnStage::protocol);
  SpawnRequest request;
  int decode_error = keeper_decode_spawn(k.message + sizeof(KeeperHeader), r.payload_size, k.strings, kKeeperMaxStrings, request);
  if (decode_error != 0) return reject(decode_error, SpawnStage::protocol);

  // Exec failures come back through this close-on-exec pipe: EOF means the
  // exec succeeded.
  int error_pipe[2];
  if (::pipe2(error_pipe, O_CLOEXEC) != 0) return reject(errno, SpawnStage::fork);
  const int out_fd = r.fds[0];
  const int err_fd = r.fd_count == 2 ? r.fds[1] : -1;
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(error_pipe[0]);
    keeper_exec_child(request.path, request.argv, request.envp, request.cwd, out_fd, err_fd, error_pipe[1], k.self,
                      k.child_nofile);
  }
  int fork_errno = errno;
  ::close(error_pipe[1]);
  if (pid < 0) {
    ::close(error_pipe[0]);
    return reject(fork_errno, SpawnStage::fork);
  }
  // Also in the parent, so that a signal to the group right after the spawn
  // cannot miss (EACCES once the child has exec'd is fine).
  ::setpgid(pid, pid);
  std::int32_t report[2] = {0, 0};
  ssize_t n;
  do {
    n = ::read(error_pipe[0], report, sizeof report);
  } while (n < 0 && errno == EINTR);
  ::close(error_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof report)) {
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return reject(report[0], static_cast<SpawnStage>(report[1]));
  }
  k.groups.data[id] = KeeperGroup{pid, 0};
  k.children.insert(KeeperChild{pid, id, 0});
  keeper_send(k, KeeperMessage::spawned, id, pid, 0);
}

/// Reads and handles one message from the manager; false when there was
/// none to read (`flags`: MSG_DONTWAIT for the messages after the first).
inline bool keeper_receive(KeeperState& k, int flags) noexcept {
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kKeeperMaxPassedFds)];
  struct iovec iov = {k.message, sizeof k.message};
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(k.sock, &msg, MSG_CMSG_CLOEXEC | flags);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return false;
  if (n <= 0) keeper_cleanup_and_exit(k);  // the manager is gone
  KeeperReceived r;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (r.fd_count < kKeeperMaxPassedFds) {
        r.fds[r.fd_count++] = fd;
      } else {
        ::close(fd);
      }
    }
  }
  r.truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  if (static_cast<std::size_t>(n) >= sizeof r.header) {
    std::memcpy(&r.header, k.message, sizeof r.header);
    r.payload_size = static_cast<std::size_t>(n) - sizeof r.header;
    switch (r.header.type) {
      case KeeperMessage::spawn:
        keeper_spawn(k, r);
        break;
      case KeeperMessage::signal_group:
        if (r.header.id < k.groups.capacity && k.groups.data[r.header.id].pgid != 0) {
          ::kill(-k.groups.data[r.header.id].pgid, static_cast<int>(r.header.a));
        }
        break;
      case KeeperMessage::signal_daemons:
        // After the next look (due at once unless the last one was slow), so that a
        // daemon adopted a moment ago is reached too; a burst of requests
        // shares one look.
        if (k.pending.reserve(k.pending_count + 1)) {
          k.pending.data[k.pending_count++] = KeeperPendingSignal{r.header.id, static_cast<int>(r.header.a)};
          k.look_wanted = true;
        } else {
          keeper_signal_daemons(k, r.header.id, static_cast<int>(r.header.a));
        }
        break;
      case KeeperMessage::goodbye:
        keeper_cleanup_and_exit(k);
      default:
        break;
    }
  }
  for (int i = 0; i < r.fd_count; ++i) ::close(r.fds[i]);
  return true;
}

/// The timed work: lingering groups, looks for orphans and the
/// signal_daemons waiting for one. Returns the poll timeout until the next.
inline int keeper_timed_work(KeeperState& k) noexcept {
  std::int64_t now = keeper_now_ms();
  if (k.lingering_count > 0) {
    if (k.next_linger_ms == 0) k.next_linger_ms = now + kKeeperLingerIntervalMs;
    if (now >= k.next_linger_ms) {
      // Something in the group may have been re-parented outside our tree
      // and end without a SIGCHLD here; or the group's last members are
      // orphans of ours to look at.
      keeper_check_lingering(k);
      k.look_wanted = true;
      if (k.lingering_count > 0) k.next_linger_ms = now + kKeeperLingerIntervalMs;
    }
  }
  if (keeper_look_due(k, now)) {
    keeper_look_and_report(k);
    keeper_check_lingering(k);
    now = keeper_now_ms();
  }
  std::int64_t timeout = -1;
  if (k.lingering_count > 0 && k.next_linger_ms == 0) k.next_linger_ms = now + kKeeperLingerIntervalMs;
  if (k.lingering_count > 0) timeout = std::max<std::int64_t>(0, k.next_linger_ms - now);
  if (k.look_wanted || k.pending_count > 0 || k.reaped_count > 0) {
    std::int64_t look_in = std::max<std::int64_t>(0, k.last_look_ms + k.look_interval_ms - now);
    if (timeout < 0 || look_in < timeout) timeout = look_in;
  }
  return static_cast<int>(timeout);
}

/// The keeper: `sock` is its end of the socket pair, `token` the owner token
/// ("" attributes no daemon), `child_nofile` each child's soft
/// RLIMIT_NOFILE (0: as inherited). Called in the forked child (fallback)
/// or by run_keeper in the keeper program. Never returns.
[[noreturn]] inline void keeper_main(int sock, const char* token, rlim_t child_nofile) noexcept {
  ::prctl(PR_SET_NAME, "pymanager-keep");
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  // Out of the host's process group: a Ctrl-C or a test runner's kill of the
  // host's group must leave the keeper to clean up after the host.
  ::setpgid(0, 0);

  // Signals: defaults everywhere, then ignore the ones that would stop us
  // before the cleanup; SIGCHLD arrives through a signalfd.
  struct sigaction act {};
  act.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &act, nullptr);
  }
  act.sa_handler = SIG_IGN;
  for (int sig : {SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2}) ::sigaction(sig, &act, nullptr);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  ::sigprocmask(SIG_SETMASK, &chld, nullptr);

  // Descriptors: 0 and 1 on /dev/null, 2 as inherited (or /dev/null), the
  // socket on 3, nothing else: no listening socket or pipe of the host may
  // stay open in the keeper. The socket first moves above the standard
  // descriptors, in case the host had closed them and it is one of them.
  if (sock <= 2) {
    int moved = ::fcntl(sock, F_DUPFD_CLOEXEC, 3);
    if (moved < 0) ::_exit(1);
    ::close(sock);
    sock = moved;
  }
  int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);  // dup2 below gives fds 0 and 1 without it
  if (null_fd >= 0) {
    ::dup2(null_fd, 0);
    ::dup2(null_fd, 1);
    if (::fcntl(2, F_GETFD) < 0) ::dup2(null_fd, 2);
    if (null_fd > 2) ::close(null_fd);
  }
  if (sock != kKeeperSocketFd) {
    ::dup2(sock, kKeeperSocketFd);
    ::close(sock);
    sock = kKeeperSocketFd;
  }
  ::fcntl(sock, F_SETFD, FD_CLOEXEC);
  if (::syscall(SYS_close_range, 4U, ~0U, 0U) != 0) {
    struct rlimit limit {};
    rlim_t max_fd = (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) ? limit.rlim_cur : 65536;
    if (max_fd > 65536) max_fd = 65536;
    for (rlim_t fd = 4; fd < max_fd; ++fd) ::close(static_cast<int>(fd));
  }

  // Its own memory, in both modes (in the fork fallback nothing is
  // allocated before the fork).
  void* memory = ::mmap(nullptr, sizeof(KeeperState), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) ::_exit(1);
  KeeperState& k = *new (memory) KeeperState;
  k.sock = sock;
  k.self = ::getpid();
  for (; token != nullptr && k.token_length < kKeeperTokenLength && token[k.token_length] != '\0'; ++k.token_length) {
    k.token[k.token_length] = token[k.token_length];
  }
  k.child_nofile = child_nofile;
  k.look_interval_ms = kKeeperLookIntervalMs;
  k.last_look_ms = keeper_now_ms() - kKeeperLookIntervalMs;
  keeper_format_pid(k.children_path, "/proc/self/task/", k.self, "/children");
  k.sigfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (k.sigfd < 0) ::_exit(1);
  keeper_send(k, KeeperMessage::ready, 0, k.self, kKeeperProtocolVersion);

  for (;;) {
    int timeout = keeper_timed_work(k);
    struct pollfd fds[2] = {{k.sock, POLLIN, 0}, {k.sigfd, POLLIN, 0}};
    int ready = ::poll(fds, 2, timeout);
    if (ready < 0 && errno != EINTR && errno != EAGAIN) keeper_cleanup_and_exit(k);
    if (ready <= 0) continue;
    if (fds[1].revents & POLLIN) {
      signalfd_siginfo info;
      while (::read(k.sigfd, &info, sizeof info) > 0) {
      }
      keeper_reap(k);
    }
    if (fds[0].revents & POLLIN) {
      // A burst at a time (10,000 stop requests): fewer polls and reaps.
      for (int i = 0; i < 64 && keeper_receive(k, i == 0 ? 0 : MSG_DONTWAIT); ++i) {
      }
    } else if (fds[0].revents & (POLLHUP | POLLERR)) {
      keeper_cleanup_and_exit(k);
    }
  }
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_KEEPER_PROGRAM_HPP
