// pymanager: the process core, the Manager's narrow interface to the
// keeper (through detail/keeper_channel.hpp, which alone encodes and decodes
// its packets) and to the children's output pipes. Requests
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
#include "pymanager/detail/keeper_channel.hpp"
#include "pymanager/error.hpp"
#include "pymanager/output.hpp"
#include "pymanager/process.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

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

class ProcessCore {
 public:
  /// Starts the keeper (see KeeperClient).
  explicit ProcessCore(KeeperOptions options) : channel_(std::move(options)) {
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_fd_) throw_system_error("eventfd");
  }
  ProcessCore(const ProcessCore&) = delete;
  ProcessCore& operator=(const ProcessCore&) = delete;

  int fd() const { return channel_.fd(); }
  pid_t keeper_pid() const { return channel_.keeper_pid(); }
  bool exec_mode() const { return channel_.exec_mode(); }

  /// Builds a spawn request (see KeeperChannel::spawn_request). Queue it with submit().
  static CoreRequest spawn_request(std::uint32_t id, const LaunchPlan& plan, UniqueFd out, UniqueFd err) {
    return KeeperChannel::spawn_request(id, plan, std::move(out), std::move(err));
  }

  /// Queues a request; no I/O. Safe under any lock.
  void submit(CoreRequest request) {
    channel_.submit(std::move(request));
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
  void signal_group(std::uint32_t id, int sig) {
    submit(KeeperChannel::signal_group_request(id, sig));
  }
  void signal_daemons(std::uint32_t id, int sig) {
    submit(KeeperChannel::signal_daemons_request(id, sig));
  }

  /// Goodbye to the keeper (it kills whatever is left) and reap it. Bounded.
  void close() noexcept { channel_.close(); }

 private:
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

  KeeperChannel channel_;
  UniqueFd wake_fd_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;  ///< guards new_outputs_
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
    if (keeper_open && !channel_.flush()) {
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
    const bool wants_out = keeper_open && channel_.wants_write();
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
    if (channel_.throttled()) timeout = timeout < 0 ? 1 : std::min(timeout, 1);
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
      const bool open = channel_.read_events(events, 512);
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
