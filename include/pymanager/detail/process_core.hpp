// pymanager: the process core, the Manager's narrow interface to the
// keeper (detail/keeper.hpp) and to the children's output pipes. Requests
// (spawn, signal a group, signal a process's daemons) are queued without any
// I/O, from any thread, and sent by the core's event loop without blocking;
// what happens comes back as typed events (spawned, exited, group empty,
// daemon adopted / gone, output bytes and output lines). The Manager never
// sees a keeper packet or reads a pipe.
//
// The event loop (run) is one thread: it reads the keeper's socket and the
// pipes through epoll, sends what is queued when the socket has room, keeps
// the registered writers flowing, and calls its listener, which must not
// block. An exit is delivered only after every line its process printed
// before it; a spawn is sent only once its pipes are watched.
#ifndef PYMANAGER_DETAIL_PROCESS_CORE_HPP
#define PYMANAGER_DETAIL_PROCESS_CORE_HPP

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/keeper.hpp"
#include "pymanager/error.hpp"
#include "pymanager/output.hpp"
#include "pymanager/process.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

/// What happened to a process, as the keeper saw it.
struct CoreEvent {
  enum class Type { spawned, spawn_failed, exited, group_empty, daemon_adopted, daemon_gone, output_bytes, output_line };
  Type type = Type::spawned;
  std::uint32_t id = 0;  ///< the process (kKeeperNoOwner: a daemon nobody claims)
  pid_t pid = 0;         ///< spawned, exited, daemon_*: the process; group_empty: the group
  int wait_status = 0;   ///< exited, daemon_gone
  int error = 0;         ///< spawn_failed: errno
  SpawnStage stage = SpawnStage::protocol;  ///< spawn_failed: where
  /// daemon_adopted: when the daemon started (/proc/PID/stat, clock ticks
  /// since boot; 0 unknown), so that its pid is never mistaken for another's later.
  std::uint64_t start_time = 0;
  // output_bytes: a chunk as read; output_line: one line, without its newline.
  OutputStream stream = OutputStream::out;
  std::string_view text;  ///< valid during the call only
  bool complete = true;   ///< output_line: false for an unfinished last line or a piece of an over-long one
  void* context = nullptr;  ///< output_*: what watch_output was given for this run
};

/// What the event loop calls. On the loop's thread; must not block.
class CoreListener {
 public:
  virtual void on_event(const CoreEvent& event) = 0;
  /// The keeper is gone without being asked to go.
  virtual void on_keeper_lost() = 0;
  /// Runs what is due at `now`; returns when something is due next
  /// (time_point::max() for nothing).
  virtual Clock::time_point on_tick(Clock::time_point now) = 0;

 protected:
  ~CoreListener() = default;
};

/// A process's start time (field 22 of /proc/PID/stat), 0 when unknown.
inline std::uint64_t process_start_time(pid_t pid) {
  UniqueFd fd(::open(("/proc/" + std::to_string(pid) + "/stat").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return 0;
  char buffer[1024];
  ssize_t n = retry_eintr([&] { return ::read(fd.get(), buffer, sizeof buffer - 1); });
  if (n <= 0) return 0;
  buffer[n] = '\0';
  // "pid (comm) state ppid ...": comm may hold anything; count fields after the last ')'.
  const char* p = std::strrchr(buffer, ')');
  if (p == nullptr) return 0;
  for (int field = 2; field < 22 && *p; ++p) {
    if (*p == ' ') ++field;
  }
  return std::strtoull(p, nullptr, 10);
}

/// One request waiting to be sent, with the descriptors it passes.
struct CoreRequest {
  KeeperHeader header{};
  std::string payload;
  UniqueFd out_fd;  ///< the child's stdout (and stderr, when err_fd is empty)
  UniqueFd err_fd;
};

class ProcessCore {
 public:
  /// Starts the keeper (see KeeperClient).
  explicit ProcessCore(KeeperOptions options) : keeper_(std::move(options)) {
    int flags = ::fcntl(keeper_.socket_fd(), F_GETFL);
    ::fcntl(keeper_.socket_fd(), F_SETFL, flags | O_NONBLOCK);
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_fd_) throw_system_error("eventfd");
  }
  ProcessCore(const ProcessCore&) = delete;
  ProcessCore& operator=(const ProcessCore&) = delete;

  int fd() const { return keeper_.socket_fd(); }
  pid_t keeper_pid() const { return keeper_.pid(); }
  bool exec_mode() const { return keeper_.exec_mode(); }

  /// Builds a spawn request (throws spawn_failed when it cannot be sent:
  /// too large, or a NUL byte in a string). Queue it with submit().
  static CoreRequest spawn_request(std::uint32_t id, const LaunchPlan& plan, UniqueFd out, UniqueFd err) {
    if (plan.argv.empty() || plan.argv.size() + plan.envp.size() + 2 > kKeeperMaxStrings) {
      throw Error(ErrorKind::spawn_failed, "command line and environment have " +
                                               std::to_string(plan.argv.size() + plan.envp.size()) + " strings (at most " +
                                               std::to_string(kKeeperMaxStrings - 2) + ")");
    }
    CoreRequest request;
    request.payload = encode_spawn_payload(plan.path, plan.working_directory, plan.argv, plan.envp);
    if (request.payload.size() > kKeeperMaxMessage) {
      throw Error(ErrorKind::spawn_failed, "command line and environment too large (" +
                                               std::to_string(request.payload.size()) + " bytes, at most " +
                                               std::to_string(kKeeperMaxMessage) + ")");
    }
    request.header = KeeperHeader{KeeperMessage::spawn, id, 0, static_cast<std::int64_t>(request.payload.size())};
    request.out_fd = std::move(out);
    request.err_fd = std::move(err);
    return request;
  }

  /// Queues a request; no I/O. Safe under any lock.
  void submit(CoreRequest request) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(request));
    }
    wake();
  }

  /// Watches one run's output pipes from now on (either may be empty);
  /// `context` comes back with each of their events. Call it before the
  /// spawn that writes to them is submitted. No I/O; safe under any lock.
  void watch_output(std::uint32_t id, UniqueFd out, UniqueFd err, std::shared_ptr<void> context) {
    auto watched = std::make_unique<Watched>();
    watched->id = id;
    watched->fds[0] = std::move(out);
    watched->fds[1] = std::move(err);
    watched->context = std::move(context);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      new_outputs_.push_back(std::move(watched));
    }
    wake();
  }

  /// A writer the loop keeps flowing (waits for room, writes its backlog).
  /// Before run().
  void add_writer(StreamWriter* writer) {
    if (writer != nullptr) writers_.push_back({writer, -1});
  }

  /// Wakes the loop (any thread, never blocks): something changed.
  void wake() const {
    std::uint64_t one = 1;
    ssize_t ignored = ::write(wake_fd_.get(), &one, sizeof one);
    (void)ignored;
  }

  /// Ends run() (after its current pass).
  void stop_loop() {
    stop_.store(true);
    wake();
  }

  /// The event loop; returns after stop_loop().
  void run(CoreListener& listener);
  void signal_group(std::uint32_t id, int sig) { submit(simple(KeeperMessage::signal_group, id, sig)); }
  void signal_daemons(std::uint32_t id, int sig) { submit(simple(KeeperMessage::signal_daemons, id, sig)); }

  /// True while requests wait for room in the socket.
  bool wants_write() const {
    if (throttled_) return false;  // no room will be announced: a timer retries
    std::lock_guard<std::mutex> lock(mutex_);
    return !queue_.empty();
  }

  /// Event thread: sends queued requests until the socket is full. False
  /// once the keeper is gone.
  bool flush() {
    throttled_ = false;
    for (;;) {
      CoreRequest* front;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (queue_.empty()) return true;
        front = &queue_.front();  // only this thread pops: the pointer stays valid
      }
      int sent = send(*front);
      if (sent == 0) return true;  // full: wait for POLLOUT
      if (sent < 0) return false;
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.pop_front();
    }
  }

  /// Event thread: reads at most `max` events. False once the keeper is gone
  /// (end of file, or a broken socket).
  bool read_events(std::vector<CoreEvent>& out, std::size_t max) {
    for (std::size_t k = 0; k < max; ++k) {
      KeeperHeader header{};
      ssize_t n = retry_eintr([&] { return ::recv(fd(), &header, sizeof header, MSG_DONTWAIT); });
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      if (n != static_cast<ssize_t>(sizeof header)) return false;
      CoreEvent event;
      event.id = header.id;
      switch (header.type) {
        case KeeperMessage::spawned:
          event.type = CoreEvent::Type::spawned;
          event.pid = static_cast<pid_t>(header.a);
          break;
        case KeeperMessage::spawn_failed:
          event.type = CoreEvent::Type::spawn_failed;
          event.error = static_cast<int>(header.a);
          event.stage = static_cast<SpawnStage>(header.b);
          break;
        case KeeperMessage::exited:
          event.type = CoreEvent::Type::exited;
          event.wait_status = static_cast<int>(header.a);
          event.pid = static_cast<pid_t>(header.b);
          break;
        case KeeperMessage::group_empty:
          event.type = CoreEvent::Type::group_empty;
          event.pid = static_cast<pid_t>(header.b);
          break;
        case KeeperMessage::daemon_adopted:
          event.type = CoreEvent::Type::daemon_adopted;
          event.pid = static_cast<pid_t>(header.a);
          break;
        case KeeperMessage::daemon_gone:
          event.type = CoreEvent::Type::daemon_gone;
          event.pid = static_cast<pid_t>(header.a);
          event.wait_status = static_cast<int>(header.b);
          break;
        default:
          continue;  // nothing the Manager needs (ready came in the constructor)
      }
      out.push_back(event);
    }
    return true;
  }

  /// Goodbye to the keeper (it kills whatever is left) and reap it. Bounded.
  void close() noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.clear();
    }
    keeper_.close_and_reap();
  }

 private:
  static CoreRequest simple(KeeperMessage type, std::uint32_t id, int sig) {
    CoreRequest request;
    request.header = KeeperHeader{type, id, sig, 0};
    return request;
  }

  /// 1 sent, 0 no room now, -1 the keeper is gone.
  int send(CoreRequest& request) {
    struct iovec iov[2] = {{&request.header, sizeof request.header}, {request.payload.data(), request.payload.size()}};
    struct msghdr msg {};
    msg.msg_iov = iov;
    msg.msg_iovlen = request.payload.empty() ? 1 : 2;
    int fds[2];
    std::size_t count = 0;
    for (const UniqueFd* fd : {&request.out_fd, &request.err_fd}) {
      if (*fd) fds[count++] = fd->get();
    }
    alignas(8) char control[CMSG_SPACE(sizeof fds)] = {};
    if (count > 0) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(count * sizeof(int));
      struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(count * sizeof(int));
      std::memcpy(CMSG_DATA(c), fds, count * sizeof(int));
    }
    ssize_t n = retry_eintr([&] { return ::sendmsg(fd(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL); });
    if (n >= 0) return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) return 0;
    // Too many descriptors in flight for this user (the kernel counts every
    // process of the user against our RLIMIT_NOFILE): the keeper is fine,
    // the send is tried again in a millisecond.
    if (errno == ETOOMANYREFS) {
      throttled_ = true;
      return 0;
    }
    return -1;
  }

  bool throttled_ = false;  ///< event thread only: a send met ETOOMANYREFS

  /// One run's pipes, read by the loop.
  struct Watched {
    std::uint32_t id = 0;
    UniqueFd fds[2];
    LineSplitter splitters[2];
    std::shared_ptr<void> context;
    bool done() const { return !fds[0] && !fds[1]; }
  };
  struct Writer {
    StreamWriter* writer;
    int watched_fd;
  };

  void read_output(Watched& w, int which, CoreListener& listener);
  void drain(std::uint32_t id, CoreListener& listener);

  KeeperClient keeper_;
  UniqueFd wake_fd_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mutex_;
  std::deque<CoreRequest> queue_;
  std::vector<std::unique_ptr<Watched>> new_outputs_;
  // The loop's own (its thread only):
  int epoll_fd_ = -1;
  std::vector<std::vector<std::unique_ptr<Watched>>> outputs_;  ///< by id
  std::vector<Writer> writers_;
};

// ------------------------------------------------------------ event loop

inline void ProcessCore::run(CoreListener& listener) {
  // Signals are for the host's other threads; a SIGPIPE from a write to a
  // reader that went away must not reach anyone.
  sigset_t all;
  sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) {
    listener.on_keeper_lost();  // nothing can be watched: as good as lost
    return;
  }
  epoll_fd_ = epoll.get();
  // Tags: 0 the wake eventfd, 1 the keeper, 2.. the writers; a pipe is
  // tagged with its Watched's address plus 0 (stdout) or 1 (stderr).
  auto add = [&](int fd, std::uint32_t events, std::uint64_t tag) {
    struct epoll_event ev {};
    ev.events = events;
    ev.data.u64 = tag;
    return ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
  };
  add(wake_fd_.get(), EPOLLIN, 0);
  bool keeper_open = add(fd(), EPOLLIN, 1);
  bool keeper_wants_out = false;
  auto lose_keeper = [&] {
    keeper_open = false;
    // Its hang-up would wake every epoll_wait from now on.
    ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd(), nullptr);
    listener.on_keeper_lost();
  };
  std::vector<struct epoll_event> ready(256);
  std::vector<CoreEvent> events;
  Clock::time_point next = listener.on_tick(Clock::now());
  while (!stop_.load()) {
    // Queued requests first, then the outputs registered before them: a
    // spawn is never sent before its pipes are watched.
    if (keeper_open && !flush()) {
      lose_keeper();
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& w : new_outputs_) {
        for (int which = 0; which < 2; ++which) {
          if (w->fds[which]) add(w->fds[which].get(), EPOLLIN, reinterpret_cast<std::uintptr_t>(w.get()) + which);
        }
        if (outputs_.size() <= w->id) outputs_.resize(static_cast<std::size_t>(w->id) + 1);
        outputs_[w->id].push_back(std::move(w));
      }
      new_outputs_.clear();
    }
    // The keeper's socket is watched for room only while requests wait.
    const bool wants_out = keeper_open && wants_write();
    if (keeper_open && wants_out != keeper_wants_out) {
      struct epoll_event ev {};
      ev.events = EPOLLIN | (wants_out ? EPOLLOUT : 0u);
      ev.data.u64 = 1;
      ::epoll_ctl(epoll.get(), EPOLL_CTL_MOD, fd(), &ev);
      keeper_wants_out = wants_out;
    }
    bool unwatched_writer = false;
    for (std::size_t w = 0; w < writers_.size(); ++w) {
      int want = writers_[w].writer->wait_fd();
      if (want >= 0 && want == writers_[w].watched_fd) continue;
      if (writers_[w].watched_fd >= 0) ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, writers_[w].watched_fd, nullptr);
      writers_[w].watched_fd = -1;
      // A descriptor epoll cannot watch (a regular file: EPERM) is written on each pass.
      if (want >= 0 && add(want, EPOLLOUT, 2 + w)) writers_[w].watched_fd = want;
      if (want >= 0 && writers_[w].watched_fd < 0) unwatched_writer = true;
    }
    int timeout = -1;
    if (next != Clock::time_point::max()) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count() + 1;
      timeout = static_cast<int>(std::clamp<long long>(ms, 0, 60000));
    }
    if (unwatched_writer) timeout = timeout < 0 ? 50 : std::min(timeout, 50);
    if (throttled_) timeout = timeout < 0 ? 1 : std::min(timeout, 1);
    int n = ::epoll_wait(epoll.get(), ready.data(), static_cast<int>(ready.size()), timeout);
    if (n < 0 && errno != EINTR) break;
    bool keeper_readable = false;
    for (int k = 0; k < std::max(n, 0); ++k) {
      const std::uint64_t tag = ready[k].data.u64;
      if (tag == 0) {
        std::uint64_t count;
        ssize_t ignored = ::read(wake_fd_.get(), &count, sizeof count);
        (void)ignored;
      } else if (tag == 1) {
        keeper_readable = true;
      } else if (tag >= 2 + writers_.size()) {
        // Output first, so that an exit is delivered after the lines before it.
        auto* w = reinterpret_cast<Watched*>(static_cast<std::uintptr_t>(tag & ~std::uint64_t{1}));
        read_output(*w, static_cast<int>(tag & 1), listener);
      }
    }
    for (auto& w : writers_) w.writer->on_writable();
    if (keeper_open && keeper_readable) {
      events.clear();
      const bool open = read_events(events, 512);
      for (const auto& event : events) {
        if (event.type == CoreEvent::Type::exited) drain(event.id, listener);
        listener.on_event(event);
      }
      if (!open) lose_keeper();
    }
    // Forget the pipes that reached their end.
    for (auto& list : outputs_) {
      if (list.empty()) continue;
      list.erase(std::remove_if(list.begin(), list.end(), [](const auto& w) { return w->done(); }), list.end());
    }
    next = listener.on_tick(Clock::now());
  }
  // The end: what the pipes still hold is read once more.
  for (std::uint32_t id = 0; id < outputs_.size(); ++id) drain(id, listener);
  outputs_.clear();
  epoll_fd_ = -1;
}

/// Everything process `id`'s pipes hold now.
inline void ProcessCore::drain(std::uint32_t id, CoreListener& listener) {
  if (id >= outputs_.size()) return;
  for (auto& w : outputs_[id]) {
    for (int which = 0; which < 2; ++which) {
      if (w->fds[which]) read_output(*w, which, listener);
    }
  }
}

/// Reads what one pipe holds (bounded, for fairness): its bytes, then its lines.
inline void ProcessCore::read_output(Watched& w, int which, CoreListener& listener) {
  char buffer[65536];
  auto& pipe = w.fds[which];
  CoreEvent event;
  event.id = w.id;
  event.stream = which == 0 ? OutputStream::out : OutputStream::err;
  event.context = w.context.get();
  auto emit = [&](std::string_view text, bool complete) {
    event.type = CoreEvent::Type::output_line;
    event.text = text;
    event.complete = complete;
    listener.on_event(event);
  };
  for (int round = 0; round < 16 && pipe; ++round) {
    ssize_t n = retry_eintr([&] { return ::read(pipe.get(), buffer, sizeof buffer); });
    if (n > 0) {
      event.type = CoreEvent::Type::output_bytes;
      event.text = std::string_view(buffer, static_cast<std::size_t>(n));
      listener.on_event(event);
      w.splitters[which].feed(buffer, static_cast<std::size_t>(n), emit);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    // The end (or an error): the unfinished line, then forget the pipe.
    w.splitters[which].finish(emit);
    // Out of the epoll set first: a copy of the descriptor in another
    // process (a fork of the host) would keep it there, with our pointer.
    if (epoll_fd_ >= 0) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, pipe.get(), nullptr);
    pipe.reset();
    return;
  }
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_PROCESS_CORE_HPP
