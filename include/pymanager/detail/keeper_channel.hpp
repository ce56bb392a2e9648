// pymanager: the keeper channel, the one place that turns the Manager's
// requests into keeper packets and the keeper's packets into typed events.
// Requests (spawn, signal a group, signal a process's daemons) are queued
// from any thread without I/O; the process core's event loop sends them
// when the socket has room (never blocking) and reads what comes back as
// CoreEvents. Everything else of the keeper (its program, its protocol,
// starting and reaping it) is in detail/keeper_program.hpp and
// detail/keeper_client.hpp.
#ifndef PYMANAGER_DETAIL_KEEPER_CHANNEL_HPP
#define PYMANAGER_DETAIL_KEEPER_CHANNEL_HPP

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/keeper_client.hpp"
#include "pymanager/detail/keeper_protocol.hpp"
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

/// The Manager's end of the keeper's socket: a queue of requests and a
/// decoder of events. submit() from any thread; flush(), wants_write() and
/// read_events() on the event loop's thread only.
class KeeperChannel {
 public:
  /// Starts the keeper (see KeeperClient); its socket is made non-blocking.
  explicit KeeperChannel(KeeperOptions options) : keeper_(std::move(options)) {
    int flags = ::fcntl(keeper_.socket_fd(), F_GETFL);
    ::fcntl(keeper_.socket_fd(), F_SETFL, flags | O_NONBLOCK);
  }
  KeeperChannel(const KeeperChannel&) = delete;
  KeeperChannel& operator=(const KeeperChannel&) = delete;

  int fd() const { return keeper_.socket_fd(); }
  pid_t keeper_pid() const { return keeper_.pid(); }
  bool exec_mode() const { return keeper_.exec_mode(); }
  /// A send met ETOOMANYREFS: no room will be announced, retry on a timer.
  bool throttled() const { return throttled_; }

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

  /// Queues a request; no I/O. Safe under any lock. (The caller wakes the loop.)
  void submit(CoreRequest request) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(request));
  }
  /// `sig` to process `id`'s group, or to the daemons it left.
  static CoreRequest signal_group_request(std::uint32_t id, int sig) {
    return signal_request(KeeperMessage::signal_group, id, sig);
  }
  static CoreRequest signal_daemons_request(std::uint32_t id, int sig) {
    return signal_request(KeeperMessage::signal_daemons, id, sig);
  }

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
  static CoreRequest signal_request(KeeperMessage type, std::uint32_t id, int sig) {
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

  KeeperClient keeper_;
  mutable std::mutex mutex_;
  std::deque<CoreRequest> queue_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_KEEPER_CHANNEL_HPP
