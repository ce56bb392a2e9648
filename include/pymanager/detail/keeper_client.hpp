// pymanager: the manager's side of the keeper: starting it (the keeper
// program, or a fork of the host), the spawn payload, the owner token, and
// KeeperClient. The keeper itself is in detail/keeper_program.hpp.
//
// Two ways to start it, one code (keeper_main) for both:
// - exec (the normal way): KeeperClient posix_spawns the small program
//   //tools:pymanager-keeper (tools/keeper_main.cc, pymanager::run_keeper in
//   pymanager/keeper.hpp) with the socket as fd 3. The keeper then shares
//   nothing with the host: a host that holds 1 GiB does not get a keeper
//   with 1 GiB of copy-on-write pages that every write of the host copies.
//   The program is found, in this order: the environment variable
//   PYMANAGER_KEEPER (a path; the value `fork` forces the fallback below),
//   `pymanager-keeper` next to the running binary (/proc/self/exe), then in
//   the Bazel runfiles (`<binary>.runfiles`, RUNFILES_DIR, TEST_SRCDIR; in
//   `<root>/pymanager/tools/` or, as an external repository, in
//   `<root>/<any folder>/tools/`). A depender of //:pymanager has it in its
//   runfiles (a data dependency).
// - fork (the fallback when no program is found): the keeper is forked from
//   the host without exec. The host may be multi-threaded: from the fork on,
//   the keeper's code uses only system calls (its memory comes from mmap and
//   grows with mremap: no malloc, no stdio, no locks, no exceptions).
#ifndef PYMANAGER_DETAIL_KEEPER_CLIENT_HPP
#define PYMANAGER_DETAIL_KEEPER_CLIENT_HPP

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/keeper_program.hpp"
#include "pymanager/detail/keeper_protocol.hpp"
#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

// ---------------------------------------------------------------------------
// The manager's side.

/// One event from the keeper.
struct KeeperEvent {
  KeeperMessage type;
  std::uint32_t id;
  std::int64_t a;
  std::int64_t b;
};

/// The payload of a spawn request (see keeper_decode_spawn). A string with a
/// NUL byte cannot be sent: it would reach the kernel cut short.
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

/// encode_spawn_payload with the keeper's limits checked: throws
/// Error(spawn_failed) for an empty argv, too many strings or too many bytes.
inline std::string make_spawn_payload(const std::string& path, const std::string& cwd,
                                      const std::vector<std::string>& argv, const std::vector<std::string>& envp) {
  if (argv.empty() || argv.size() + envp.size() + 2 > kKeeperMaxStrings) {
    throw Error(ErrorKind::spawn_failed, "command line and environment have " + std::to_string(argv.size() + envp.size()) +
                                             " strings (at most " + std::to_string(kKeeperMaxStrings - 2) + ")");
  }
  std::string payload = encode_spawn_payload(path, cwd, argv, envp);
  if (payload.size() > kKeeperMaxMessage) {
    throw Error(ErrorKind::spawn_failed, "command line and environment too large (" + std::to_string(payload.size()) +
                                             " bytes, at most " + std::to_string(kKeeperMaxMessage) + ")");
  }
  return payload;
}

/// Sends one spawn request (a payload from make_spawn_payload) on the
/// manager's end `sock`, with the child's stdout write end and, if
/// `err_fd` >= 0, its stderr write end. A SOCK_SEQPACKET message goes whole
/// or not at all: returns 0, or the errno (EAGAIN on a full non-blocking
/// socket: nothing was sent; EPIPE: the keeper is gone). `flags` are added
/// to sendmsg's (MSG_DONTWAIT...).
inline int send_spawn_request(int sock, std::uint32_t id, const std::string& payload, int out_fd, int err_fd,
                              int flags = 0) noexcept {
  KeeperHeader header{KeeperMessage::spawn, id, 0, static_cast<std::int64_t>(payload.size())};
  struct iovec iov[2] = {{&header, sizeof header}, {const_cast<char*>(payload.data()), payload.size()}};
  struct msghdr msg {};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  int fds[2] = {out_fd, err_fd};
  const std::size_t count = err_fd >= 0 ? 2 : 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof fds)] = {};
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * count);
  std::memcpy(CMSG_DATA(c), fds, sizeof(int) * count);
  return retry_eintr([&] { return ::sendmsg(sock, &msg, MSG_NOSIGNAL | flags); }) >= 0 ? 0 : errno;
}

/// Sends a message without payload (signal_group, signal_daemons, goodbye);
/// returns 0 or the errno, as send_spawn_request.
inline int send_keeper_message(int sock, KeeperMessage type, std::uint32_t id, std::int64_t a, int flags = 0) noexcept {
  KeeperHeader header{type, id, a, 0};
  return retry_eintr([&] { return ::send(sock, &header, sizeof header, MSG_NOSIGNAL | flags); }) >= 0 ? 0 : errno;
}

/// A fresh owner token: 16 lowercase hex characters from getrandom.
inline std::string make_keeper_token() {
  unsigned char bytes[kKeeperTokenLength / 2];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    long n = ::syscall(SYS_getrandom, bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_system_error("cannot make the keeper's owner token: getrandom");
    got += static_cast<std::size_t>(n);
  }
  const char hex[] = "0123456789abcdef";
  std::string token;
  for (unsigned char b : bytes) {
    token.push_back(hex[b >> 4]);
    token.push_back(hex[b & 15]);
  }
  return token;
}

/// The entry to add to a child's environment: PYMANAGER_OWNER=<token>:<id>.
inline std::string keeper_owner_entry(const std::string& token, std::uint32_t id) {
  return std::string(kKeeperOwnerVariable) + "=" + token + ":" + std::to_string(id);
}

inline bool is_keeper_token(const std::string& token) {
  return token.size() == kKeeperTokenLength &&
         std::all_of(token.begin(), token.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

/// Why `path` cannot be run as the keeper program, or "" when it can.
inline std::string keeper_program_problem(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::strerror(errno);
  if (S_ISDIR(st.st_mode)) return std::strerror(EISDIR);
  if (!S_ISREG(st.st_mode)) return "not a regular file";
  if (::access(path.c_str(), X_OK) != 0) return std::strerror(errno);
  return "";
}

/// The keeper program to exec, or "" for the fork fallback (see the top of
/// this file for the order). Throws Error(system) when PYMANAGER_KEEPER
/// names something that is not an executable file.
inline std::string find_keeper_program() {
  const char* forced = std::getenv("PYMANAGER_KEEPER");
  if (forced != nullptr && forced[0] != '\0') {
    if (std::strcmp(forced, "fork") == 0) return "";
    std::string problem = keeper_program_problem(forced);
    if (!problem.empty()) {
      throw Error(ErrorKind::system, std::string("PYMANAGER_KEEPER=") + forced + ": not an executable file: " + problem);
    }
    return forced;
  }
  const std::string name = "pymanager-keeper";
  std::string self;
  {
    char buffer[4096];
    ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof buffer - 1);
    if (n > 0) self.assign(buffer, static_cast<std::size_t>(n));
  }
  std::vector<std::string> candidates;
  auto slash = self.rfind('/');
  if (slash != std::string::npos) candidates.push_back(self.substr(0, slash + 1) + name);
  std::vector<std::string> roots;
  if (!self.empty()) roots.push_back(self + ".runfiles");
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (const char* dir = std::getenv(var)) {
      if (dir[0] != '\0') roots.emplace_back(dir);
    }
  }
  for (const auto& root : roots) {
    // This workspace's name (WORKSPACE), then any repository's folder: as
    // an external repository, the folder is the repository's name.
    candidates.push_back(root + "/pymanager/tools/" + name);
    std::vector<std::string> folders;
    if (DIR* dir = ::opendir(root.c_str())) {
      while (struct dirent* entry = ::readdir(dir)) {
        std::string folder = entry->d_name;
        if (folder != "." && folder != ".." && folder != "pymanager") folders.push_back(folder);
      }
      ::closedir(dir);
    }
    std::sort(folders.begin(), folders.end());
    for (const auto& folder : folders) candidates.push_back(root + "/" + folder + "/tools/" + name);
  }
  for (const auto& candidate : candidates) {
    if (keeper_program_problem(candidate).empty()) return candidate;
  }
  return "";
}

/// How the keeper is started.
struct KeeperOptions {
  /// 16 lowercase hex characters (make_keeper_token()): the keeper
  /// attributes a daemon to id N when its environment holds
  /// PYMANAGER_OWNER=<token>:N (keeper_owner_entry). "" attributes none.
  std::string token;
  /// Each child's soft RLIMIT_NOFILE (at most the hard limit); 0: leave it as
  /// the keeper has it (the host's).
  rlim_t child_nofile_soft = 0;
};

/// Starts the keeper (exec'd program or fork fallback) and talks to it.
/// The manager's end, socket_fd(), may be used directly (send_spawn_request,
/// send_keeper_message, recv of KeeperHeader) or through the blocking
/// helpers below: `send_*` are thread-safe; `read_event` is for one reader
/// thread.
class KeeperClient {
 public:
  /// Launches the keeper and waits (at most 10 s) for its `ready`, which it
  /// consumes. Throws Error(system) with what went wrong (Error(invalid_argument)
  /// for a malformed token).
  explicit KeeperClient(KeeperOptions options) { launch(std::move(options), true); }

  KeeperClient(const KeeperClient&) = delete;
  KeeperClient& operator=(const KeeperClient&) = delete;

  /// Says goodbye (the keeper kills whatever is left and exits) and reaps it.
  ~KeeperClient() { close_and_reap(); }

  int socket_fd() const { return sock_.get(); }
  pid_t pid() const { return pid_; }
  /// True when the keeper program was exec'd, false in the fork fallback.
  bool exec_mode() const { return !path_.empty(); }
  /// The program exec'd, "" in the fork fallback.
  std::string keeper_path() const { return path_; }

  /// Asks for a spawn; the answer arrives as a spawned or spawn_failed event.
  /// `err_fd` < 0: stderr goes to `out_fd` too. Returns false when the
  /// request cannot be sent (the keeper is gone), and throws when it is too
  /// large. Blocking.
  bool send_spawn(std::uint32_t id, const std::string& path, const std::string& cwd,
                  const std::vector<std::string>& argv, const std::vector<std::string>& envp, int out_fd,
                  int err_fd = -1) {
    std::string payload = make_spawn_payload(path, cwd, argv, envp);
    std::lock_guard<std::mutex> lock(send_mutex_);
    return sock_ && send_spawn_request(sock_.get(), id, payload, out_fd, err_fd) == 0;
  }

  /// Signals process group `id` (if it is not already empty).
  bool send_signal(std::uint32_t id, int sig) { return send(KeeperMessage::signal_group, id, sig); }

  /// Signals the daemons attributed to `id` (kKeeperNoOwner: those without
  /// an owner), after a fresh look for new ones.
  bool send_signal_daemons(std::uint32_t id, int sig) { return send(KeeperMessage::signal_daemons, id, sig); }

  /// Reads one event; false when the keeper is gone. Blocking.
  bool read_event(KeeperEvent& event) {
    KeeperHeader header;
    ssize_t n = retry_eintr([&] { return ::recv(sock_.get(), &header, sizeof header, 0); });
    if (n != static_cast<ssize_t>(sizeof header)) return false;
    event = KeeperEvent{header.type, header.id, header.a, header.b};
    return true;
  }

  /// Goodbye, then wait (bounded) for the keeper to exit; SIGKILL it if it
  /// does not. Idempotent; works on a blocking or non-blocking socket. The
  /// events still queued are discarded.
  void close_and_reap() noexcept {
    if (pid_ <= 0) {
      sock_.reset();
      return;
    }
    // The keeper exits within about kKeeperCleanupMs of a goodbye or of
    // its socket's end; give it 5 s.
    const std::int64_t deadline = keeper_now_ms() + 5000;
    if (sock_) {
      std::lock_guard<std::mutex> lock(send_mutex_);
      if (send_keeper_message(sock_.get(), KeeperMessage::goodbye, 0, 0, MSG_DONTWAIT) != 0) {
        // Our queue to it is full: closing says the same (it cleans up on EOF).
        sock_.reset();
      }
    }
    // Read what it still sends until its end closes (it exits right after),
    // so that it is never blocked on a full queue to us meanwhile.
    while (sock_ && keeper_now_ms() < deadline) {
      struct pollfd p = {sock_.get(), POLLIN, 0};
      int wait = static_cast<int>(std::max<std::int64_t>(1, deadline - keeper_now_ms()));
      if (::poll(&p, 1, wait) < 0 && errno != EINTR) break;
      KeeperHeader header;
      ssize_t n = ::recv(sock_.get(), &header, sizeof header, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
    }
    sock_.reset();
    for (;;) {
      int status;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || (r < 0 && errno != EINTR)) {
        pid_ = 0;
        return;
      }
      if (keeper_now_ms() >= deadline) break;
      struct timespec pause = {0, 1000000};
      ::nanosleep(&pause, nullptr);
    }
    ::kill(pid_, SIGKILL);
    int status;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = 0;
  }

 private:
  void launch(KeeperOptions options, bool consume_ready) {
    if (!options.token.empty() && !is_keeper_token(options.token)) {
      throw Error(ErrorKind::invalid_argument,
                  "keeper: the owner token must be 16 lowercase hex characters, not '" + options.token + "'");
    }
    std::string program = find_keeper_program();
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) throw_system_error("keeper: socketpair");
    UniqueFd ours(pair[0]);
    UniqueFd theirs(pair[1]);
    int size = static_cast<int>(sizeof(KeeperHeader) + kKeeperMaxMessage + 4096);
    ::setsockopt(ours.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    ::setsockopt(theirs.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (program.empty()) {
      pid_ = fork_keeper(ours.get(), theirs.get(), options);
    } else {
      pid_ = exec_keeper(program, theirs, options);
      path_ = program;
    }
    theirs.reset();  // the keeper has it; ours must not keep its end open
    sock_ = std::move(ours);
    wait_ready(consume_ready);
  }

  static pid_t fork_keeper(int ours, int theirs, const KeeperOptions& options) {
    // Everything the child needs is on this stack before the fork.
    char token[kKeeperTokenLength + 1] = {};
    options.token.copy(token, kKeeperTokenLength);  // the NUL after it is already there
    const rlim_t nofile = options.child_nofile_soft;
    sigset_t all, old;
    sigfillset(&all);
    // Block every signal across fork, so that no handler of the host runs
    // in the keeper before it has reset them.
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = ::fork();
    if (pid == 0) {
      ::close(ours);
      keeper_main(theirs, token, nofile);
    }
    int fork_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) throw_system_error("cannot start the keeper process: fork", fork_errno);
    return pid;
  }

  static pid_t exec_keeper(const std::string& program, UniqueFd& theirs, const KeeperOptions& options) {
    // The child's end goes to fd 3; dup2 onto itself would leave it
    // close-on-exec, so it must not be 3 already.
    if (theirs.get() == kKeeperSocketFd) {
      int moved = ::fcntl(theirs.get(), F_DUPFD_CLOEXEC, kKeeperSocketFd + 1);
      if (moved < 0) throw_system_error("keeper: fcntl");
      theirs.reset(moved);
    }
    // argv and envp are built before the call.
    std::vector<std::string> args = {program, "--token=" + options.token,
                                     "--child-nofile=" + std::to_string(options.child_nofile_soft)};
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(&arg[0]);
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    if (int err = ::posix_spawn_file_actions_init(&actions)) throw_system_error("keeper: posix_spawn_file_actions_init", err);
    if (int err = ::posix_spawnattr_init(&attr)) {
      ::posix_spawn_file_actions_destroy(&actions);
      throw_system_error("keeper: posix_spawnattr_init", err);
    }
    // A clean signal state: the host may block signals or ignore SIGPIPE
    // (cpp-httplib's server does), and the keeper must not inherit either.
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    int err = ::posix_spawn_file_actions_adddup2(&actions, theirs.get(), kKeeperSocketFd);
    if (err == 0) err = ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (err == 0) err = ::posix_spawnattr_setsigmask(&attr, &none);
    if (err == 0) err = ::posix_spawnattr_setsigdefault(&attr, &all);
    pid_t pid = 0;
    if (err == 0) err = ::posix_spawn(&pid, program.c_str(), &actions, &attr, argv.data(), environ);
    ::posix_spawnattr_destroy(&attr);
    ::posix_spawn_file_actions_destroy(&actions);
    if (err != 0) throw_system_error("cannot start the keeper program '" + program + "'", err);
    return pid;
  }

  std::string describe() const {
    return "the keeper " + (path_.empty() ? std::string("process (forked)") : "program '" + path_ + "'") + " (pid " +
           std::to_string(pid_) + ")";
  }

  /// Kills and reaps a keeper that failed to start; throws `message`.
  [[noreturn]] void fail_start(const std::string& message) {
    ::kill(pid_, SIGKILL);
    int status;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = 0;
    sock_.reset();
    throw Error(ErrorKind::system, message);
  }

  void wait_ready(bool consume) {
    const std::int64_t deadline = keeper_now_ms() + 10000;
    for (;;) {
      struct pollfd p = {sock_.get(), POLLIN, 0};
      int wait = static_cast<int>(std::max<std::int64_t>(0, deadline - keeper_now_ms()));
      int r = ::poll(&p, 1, wait);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) fail_start(errno_message(describe() + ": poll", errno));
      if (r == 0) fail_start(describe() + " did not report ready within 10 s");
      break;
    }
    KeeperHeader header{};
    ssize_t n = retry_eintr([&] { return ::recv(sock_.get(), &header, sizeof header, consume ? 0 : MSG_PEEK); });
    if (n != static_cast<ssize_t>(sizeof header)) {
      // Gone before it was ready: say how it ended.
      int status = 0;
      std::string how;
      pid_t r = 0;
      for (int i = 0; i < 1000 && r == 0; ++i) {
        r = ::waitpid(pid_, &status, WNOHANG);
        if (r == 0) {
          struct timespec pause = {0, 1000000};
          ::nanosleep(&pause, nullptr);
        }
      }
      if (r == pid_) {
        how = WIFEXITED(status) ? "exited with code " + std::to_string(WEXITSTATUS(status))
                                : "was killed by signal " + std::to_string(WTERMSIG(status));
        pid_ = 0;
        sock_.reset();
        throw Error(ErrorKind::system, describe_gone(how));
      }
      fail_start(describe() + " closed its socket before it was ready");
    }
    if (header.type != KeeperMessage::ready || header.b != kKeeperProtocolVersion) {
      fail_start(describe() + " speaks keeper protocol " + std::to_string(header.b) + ", this library needs " +
                 std::to_string(kKeeperProtocolVersion) + " (rebuild it, or set PYMANAGER_KEEPER)");
    }
  }

  std::string describe_gone(const std::string& how) const {
    return "the keeper " + (path_.empty() ? std::string("process (forked)") : "program '" + path_ + "'") + " " + how +
           " before it was ready";
  }

  bool send(KeeperMessage type, std::uint32_t id, std::int64_t a) noexcept {
    std::lock_guard<std::mutex> lock(send_mutex_);
    return sock_ && send_keeper_message(sock_.get(), type, id, a) == 0;
  }

  pid_t pid_ = 0;
  std::string path_;
  UniqueFd sock_;
  std::mutex send_mutex_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_KEEPER_CLIENT_HPP
