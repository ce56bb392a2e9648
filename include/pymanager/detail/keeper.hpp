// pymanager: the keeper, a small helper process that spawns the managed
// processes on the manager's behalf and guarantees their cleanup.
//
// Why a separate process (DESIGN.md, decision 7):
// - it is a child subreaper (PR_SET_CHILD_SUBREAPER), so descendants that
//   escape their process group (daemons that setsid) are re-parented to it
//   and it can still kill them;
// - when its socket to the manager closes without a goodbye (the test binary
//   crashed, was killed with SIGKILL, or called exit), it kills every process
//   group and every adopted descendant, then exits;
// - it is single-threaded, so forking there is safe even when the host
//   process (a test binary) has many threads;
// - the host process never reaps anything but the keeper itself.
//
// The keeper is forked from the host, which may be multi-threaded: from the
// fork on, the keeper's code uses only system calls and memory allocated
// before the fork (no malloc, no stdio, no locks, no exceptions).
//
// Protocol: an AF_UNIX SOCK_SEQPACKET socket pair (one message per packet).
// Manager -> keeper: spawn (argv, envp, working directory, each string
// length-prefixed, and the output pipe's write end passed with SCM_RIGHTS),
// signal a group, goodbye.
// Keeper -> manager: spawned (pid), spawn failed (errno, stage), exited (wait
// status of the group leader), group empty (no process left in the group).
#ifndef PYMANAGER_DETAIL_KEEPER_HPP
#define PYMANAGER_DETAIL_KEEPER_HPP

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

enum class KeeperMessage : std::uint32_t {
  // manager -> keeper
  spawn = 1,
  signal_group = 2,
  goodbye = 3,
  // keeper -> manager
  ready = 10,
  spawned = 11,
  spawn_failed = 12,
  exited = 13,
  group_empty = 14,
};

/// Where a spawn failed, reported with the errno.
enum class SpawnStage : std::int32_t { fork = 1, chdir = 2, stdin_open = 3, exec = 4, protocol = 5 };

inline const char* describe_stage(SpawnStage stage) {
  switch (stage) {
    case SpawnStage::fork: return "fork";
    case SpawnStage::chdir: return "cannot enter working directory";
    case SpawnStage::stdin_open: return "cannot open /dev/null";
    case SpawnStage::exec: return "exec";
    default: return "keeper protocol";
  }
}

struct KeeperHeader {
  KeeperMessage type;
  std::uint32_t id;    ///< the process slot (0-based index)
  std::int64_t a;      ///< spawned: pid; spawn_failed: errno; exited: wait status; signal_group: signal
  std::int64_t b;      ///< spawn_failed: stage; spawn: payload size
};

/// The largest spawn request (path, argv, envp, working directory). A
/// SOCK_SEQPACKET message must fit the socket's send buffer.
constexpr std::size_t kKeeperMaxMessage = std::size_t{192} * 1024;
constexpr std::size_t kKeeperMaxStrings = std::size_t{16} * 1024;

/// Everything the keeper uses, allocated before the fork.
struct KeeperMemory {
  struct Slot {
    pid_t pid = 0;  ///< the group leader, also the process group id
    bool leader_alive = false;
    bool group_alive = false;
  };
  explicit KeeperMemory(std::size_t slots) : slots(slots) {}
  std::vector<Slot> slots;
  char buffer[sizeof(KeeperHeader) + kKeeperMaxMessage];
  char* strings[kKeeperMaxStrings];
  char proc_buffer[4096];
  char path_buffer[64];
};

// ---------------------------------------------------------------------------
// The keeper's side. Async-signal-safe code only from here to keeper_main.

inline void keeper_send(int sock, KeeperMessage type, std::uint32_t id, std::int64_t a, std::int64_t b) noexcept {
  KeeperHeader header{type, id, a, b};
  // MSG_NOSIGNAL: a manager that is gone must not kill us with SIGPIPE.
  while (::send(sock, &header, sizeof header, MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

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

/// Reads the parent pid from /proc/<pid>/stat; -1 when it cannot.
inline long keeper_parent_of(KeeperMemory& m, long pid) noexcept {
  keeper_format_pid(m.path_buffer, "/proc/", pid, "/stat");
  int fd = ::open(m.path_buffer, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = ::read(fd, m.proc_buffer, sizeof m.proc_buffer - 1);
  ::close(fd);
  if (n <= 0) return -1;
  m.proc_buffer[n] = '\0';
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
  // look for the last ')'.
  const char* close_paren = nullptr;
  for (const char* p = m.proc_buffer; *p; ++p) {
    if (*p == ')') close_paren = p;
  }
  if (close_paren == nullptr || close_paren[1] != ' ' || close_paren[2] == '\0' || close_paren[3] != ' ') return -1;
  const char* p = close_paren + 4;
  return keeper_parse_long(p);
}

/// SIGKILLs every process whose parent is the keeper (adopted descendants
/// included) and the group each of them leads. Returns how many it found.
inline int keeper_kill_children(KeeperMemory& m) noexcept {
  int dir = ::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return 0;
  const long self = ::getpid();
  int found = 0;
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
      if (*p != '\0' || keeper_parent_of(m, pid) != self) continue;
      ++found;
      if (::getpgid(static_cast<pid_t>(pid)) == pid) ::kill(static_cast<pid_t>(-pid), SIGKILL);
      ::kill(static_cast<pid_t>(pid), SIGKILL);
    }
  }
  ::close(dir);
  return found;
}

/// Reaps every finished child; reports group leaders' exits, then groups that
/// became empty.
inline void keeper_reap(KeeperMemory& m, int sock) noexcept {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    for (std::size_t i = 0; i < m.slots.size(); ++i) {
      auto& slot = m.slots[i];
      if (slot.leader_alive && slot.pid == pid) {
        slot.leader_alive = false;
        keeper_send(sock, KeeperMessage::exited, static_cast<std::uint32_t>(i), status, 0);
      }
    }
  }
  for (std::size_t i = 0; i < m.slots.size(); ++i) {
    auto& slot = m.slots[i];
    // A group is empty when no process, not even a zombie, is left in it.
    if (slot.group_alive && !slot.leader_alive && ::kill(-slot.pid, 0) != 0 && errno == ESRCH) {
      slot.group_alive = false;
      keeper_send(sock, KeeperMessage::group_empty, static_cast<std::uint32_t>(i), 0, 0);
    }
  }
}

/// Kills everything that is left and exits. Bounded: at most about 2 s.
[[noreturn]] inline void keeper_cleanup_and_exit(KeeperMemory& m, int sigfd) noexcept {
  for (auto& slot : m.slots) {
    if (slot.group_alive) ::kill(-slot.pid, SIGKILL);
  }
  for (int round = 0; round < 200; ++round) {
    keeper_kill_children(m);
    int status;
    while (::waitpid(-1, &status, WNOHANG) > 0) {
    }
    if (::waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD) break;
    // Wait for the next SIGCHLD, at most 10 ms.
    struct pollfd p = {sigfd, POLLIN, 0};
    ::poll(&p, 1, 10);
    signalfd_siginfo info;
    while (::read(sigfd, &info, sizeof info) > 0) {
    }
  }
  ::_exit(0);
}

/// Runs in the forked child that executes a spawn request. Never returns.
[[noreturn]] inline void keeper_exec_child(const char* path, char* const* argv, char* const* envp, const char* cwd,
                                           int out_fd, int error_fd, pid_t keeper_pid) noexcept {
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
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // dup2 below gives fd 0 without it
  if (null_fd < 0) fail(SpawnStage::stdin_open);
  if (null_fd != 0) {
    ::dup2(null_fd, 0);
    ::close(null_fd);
  } else {
    ::fcntl(0, F_SETFD, 0);  // it is stdin itself: keep it across exec
  }
  ::dup2(out_fd, 1);
  ::dup2(out_fd, 2);
  if (out_fd > 2) ::close(out_fd);
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

/// Handles one spawn request (see keeper_decode_spawn for its payload).
inline void keeper_spawn(KeeperMemory& m, int sock, const KeeperHeader& header, std::size_t payload_size,
                         int out_fd) noexcept {
  const std::uint32_t id = header.id;
  auto reject = [&](int err, SpawnStage stage) {
    keeper_send(sock, KeeperMessage::spawn_failed, id, err, static_cast<std::int64_t>(stage));
  };
  if (id >= m.slots.size() || out_fd < 0 || m.slots[id].group_alive) return reject(EINVAL, SpawnStage::protocol);
  SpawnRequest request;
  int decode_error = keeper_decode_spawn(m.buffer + sizeof(KeeperHeader), payload_size, m.strings, kKeeperMaxStrings, request);
  if (decode_error != 0) return reject(decode_error, SpawnStage::protocol);

  // Exec failures come back through this close-on-exec pipe: EOF means the
  // exec succeeded.
  int error_pipe[2];
  if (::pipe2(error_pipe, O_CLOEXEC) != 0) return reject(errno, SpawnStage::fork);
  const pid_t keeper_pid = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(error_pipe[0]);
    keeper_exec_child(request.path, request.argv, request.envp, request.cwd, out_fd, error_pipe[1], keeper_pid);
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
  auto& slot = m.slots[id];
  slot.pid = pid;
  slot.leader_alive = true;
  slot.group_alive = true;
  keeper_send(sock, KeeperMessage::spawned, id, pid, 0);
}

/// The keeper's main loop. Never returns.
[[noreturn]] inline void keeper_main(KeeperMemory& m, int sock) noexcept {
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

  // Keep only stderr and our socket: every other descriptor of the host
  // (listening sockets, its pipes) must not stay open in the keeper. The
  // socket first moves above the standard descriptors, in case the host
  // had closed them and it is one of them.
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
    if (null_fd > 2) ::close(null_fd);
  }
  if (sock != 3) {
    ::dup2(sock, 3);
    ::close(sock);
    sock = 3;
  }
  ::fcntl(sock, F_SETFD, FD_CLOEXEC);
  if (::syscall(SYS_close_range, 4U, ~0U, 0U) != 0) {
    struct rlimit limit {};
    rlim_t max_fd = (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) ? limit.rlim_cur : 65536;
    if (max_fd > 65536) max_fd = 65536;
    for (rlim_t fd = 4; fd < max_fd; ++fd) ::close(static_cast<int>(fd));
  }
  int sigfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd < 0) ::_exit(1);
  keeper_send(sock, KeeperMessage::ready, 0, ::getpid(), 0);

  for (;;) {
    // While a leader is gone but its group is not, something in the group
    // may be re-parented to a process outside our tree and end without a
    // SIGCHLD here: look again every 50 ms in that (rare) state only.
    int timeout = -1;
    for (const auto& slot : m.slots) {
      if (slot.group_alive && !slot.leader_alive) timeout = 50;
    }
    struct pollfd fds[2] = {{sock, POLLIN, 0}, {sigfd, POLLIN, 0}};
    int ready = ::poll(fds, 2, timeout);
    if (ready < 0 && errno != EINTR) keeper_cleanup_and_exit(m, sigfd);
    if (fds[1].revents & POLLIN) {
      signalfd_siginfo info;
      while (::read(sigfd, &info, sizeof info) > 0) {
      }
    }
    keeper_reap(m, sock);
    if (fds[0].revents & POLLIN) {
      alignas(8) char control[CMSG_SPACE(sizeof(int))];
      struct iovec iov = {m.buffer, sizeof m.buffer};
      struct msghdr msg {};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) keeper_cleanup_and_exit(m, sigfd);  // the manager is gone
      int passed_fd = -1;
      for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) std::memcpy(&passed_fd, CMSG_DATA(c), sizeof(int));
      }
      KeeperHeader header;
      if (static_cast<std::size_t>(n) < sizeof header) {
        if (passed_fd >= 0) ::close(passed_fd);
        continue;
      }
      std::memcpy(&header, m.buffer, sizeof header);
      switch (header.type) {
        case KeeperMessage::spawn:
          keeper_spawn(m, sock, header, static_cast<std::size_t>(n) - sizeof header, passed_fd);
          break;
        case KeeperMessage::signal_group:
          if (header.id < m.slots.size() && m.slots[header.id].group_alive) {
            ::kill(-m.slots[header.id].pid, static_cast<int>(header.a));
          }
          break;
        case KeeperMessage::goodbye:
          keeper_cleanup_and_exit(m, sigfd);
        default:
          break;
      }
      if (passed_fd >= 0) ::close(passed_fd);
    } else if (fds[0].revents & (POLLHUP | POLLERR)) {
      keeper_cleanup_and_exit(m, sigfd);
    }
  }
}

// ---------------------------------------------------------------------------
// The manager's side.

/// One event from the keeper.
struct KeeperEvent {
  KeeperMessage type;
  std::uint32_t id;
  std::int64_t a;
  std::int64_t b;
};

/// The payload of a spawn request (see keeper_spawn). A string with a NUL
/// byte cannot be sent: it would reach the kernel cut short.
inline std::string encode_spawn_payload(const std::string& path, const std::string& cwd,
                                        const std::vector<std::string>& argv, const std::vector<std::string>& envp) {
  std::string payload;
  auto add_u32 = [&](std::uint32_t value) { payload.append(reinterpret_cast<const char*>(&value), sizeof value); };
  auto add = [&](const std::string& text) {
    if (text.find('\0') != std::string::npos) {
      throw Error(ErrorKind::spawn_failed, "a path, argument or environment entry contains a NUL byte");
    }
    add_u32(static_cast<std::uint32_t>(text.size()));  // a longer one fails the size check below
    payload += text;
    payload.push_back('\0');
  };
  add_u32(static_cast<std::uint32_t>(argv.size()));
  add_u32(static_cast<std::uint32_t>(envp.size()));
  add(path);
  add(cwd);
  for (const auto& s : argv) add(s);
  for (const auto& s : envp) add(s);
  return payload;
}

/// Starts the keeper and talks to it. `send_*` are thread-safe; `read_event`
/// is for one reader thread.
class KeeperClient {
 public:
  /// Forks the keeper with room for `slots` processes.
  explicit KeeperClient(std::size_t slots) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) throw_system_error("socketpair");
    UniqueFd ours(pair[0]);
    UniqueFd theirs(pair[1]);
    int size = static_cast<int>(sizeof(KeeperHeader) + kKeeperMaxMessage + 4096);
    ::setsockopt(ours.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    ::setsockopt(theirs.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    // The keeper's memory is allocated here, before the fork; the child
    // keeps its copy, ours is freed when this function returns.
    auto memory = std::make_unique<KeeperMemory>(slots);
    sigset_t all, old;
    sigfillset(&all);
    // Block every signal across fork, so that no handler of the host runs
    // in the keeper before it has reset them.
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = ::fork();
    if (pid == 0) {
      ours.reset();
      keeper_main(*memory, theirs.release());
    }
    int fork_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) throw_system_error("cannot start the keeper process: fork", fork_errno);
    pid_ = pid;
    sock_ = std::move(ours);
  }

  KeeperClient(const KeeperClient&) = delete;
  KeeperClient& operator=(const KeeperClient&) = delete;

  /// Says goodbye (the keeper kills whatever is left and exits) and reaps it.
  ~KeeperClient() { close_and_reap(); }

  int socket_fd() const { return sock_.get(); }
  pid_t pid() const { return pid_; }

  /// Asks for a spawn; the answer arrives as a spawned or spawn_failed event.
  /// Returns false when the request cannot be sent (the keeper is gone), and
  /// throws when it is too large.
  bool send_spawn(std::uint32_t id, const std::string& path, const std::string& cwd,
                  const std::vector<std::string>& argv, const std::vector<std::string>& envp, int out_fd) {
    if (argv.empty() || argv.size() + envp.size() + 2 > kKeeperMaxStrings) {
      throw Error(ErrorKind::spawn_failed, "command line and environment have " + std::to_string(argv.size() + envp.size()) +
                                               " strings (at most " + std::to_string(kKeeperMaxStrings - 2) + ")");
    }
    std::string payload = encode_spawn_payload(path, cwd, argv, envp);
    if (payload.size() > kKeeperMaxMessage) {
      throw Error(ErrorKind::spawn_failed, "command line and environment too large (" + std::to_string(payload.size()) +
                                               " bytes, at most " + std::to_string(kKeeperMaxMessage) + ")");
    }
    KeeperHeader header{KeeperMessage::spawn, id, 0, static_cast<std::int64_t>(payload.size())};
    struct iovec iov[2] = {{&header, sizeof header}, {payload.data(), payload.size()}};
    struct msghdr msg {};
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    alignas(8) char control[CMSG_SPACE(sizeof(int))] = {};
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &out_fd, sizeof(int));
    std::lock_guard<std::mutex> lock(send_mutex_);
    return retry_eintr([&] { return ::sendmsg(sock_.get(), &msg, MSG_NOSIGNAL); }) >= 0;
  }

  /// Signals process group `id` (if it is not already empty).
  bool send_signal(std::uint32_t id, int sig) { return send(KeeperHeader{KeeperMessage::signal_group, id, sig, 0}); }

  /// Reads one event; false when the keeper is gone.
  bool read_event(KeeperEvent& event) {
    KeeperHeader header;
    ssize_t n = retry_eintr([&] { return ::recv(sock_.get(), &header, sizeof header, 0); });
    if (n != static_cast<ssize_t>(sizeof header)) return false;
    event = KeeperEvent{header.type, header.id, header.a, header.b};
    return true;
  }

  /// Goodbye, then wait (bounded) for the keeper to exit; SIGKILL it if it
  /// does not. Idempotent.
  void close_and_reap() noexcept {
    if (pid_ <= 0) return;
    send(KeeperHeader{KeeperMessage::goodbye, 0, 0, 0});
    // The keeper exits within about 2 s of a goodbye; give it 5.
    for (int i = 0; i < 500; ++i) {
      int status;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno == ECHILD)) {
        pid_ = 0;
        break;
      }
      // Wait for its socket to close (it exits right after), at most 10 ms.
      struct pollfd p = {sock_.get(), POLLRDHUP, 0};
      ::poll(&p, 1, 10);
    }
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      pid_ = 0;
    }
    sock_.reset();
  }

 private:
  bool send(const KeeperHeader& header) noexcept {
    if (!sock_) return false;
    std::lock_guard<std::mutex> lock(send_mutex_);
    return retry_eintr([&] { return ::send(sock_.get(), &header, sizeof header, MSG_NOSIGNAL); }) >= 0;
  }

  pid_t pid_ = 0;
  UniqueFd sock_;
  std::mutex send_mutex_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_KEEPER_HPP
