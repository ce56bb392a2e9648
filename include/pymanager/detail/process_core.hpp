// pymanager: the process core, the Manager's narrow interface to the
// keeper (detail/keeper.hpp): requests (spawn, signal a group, signal a
// process's daemons) are queued without any I/O, from any thread, and sent
// by the event thread without blocking; what the keeper reports comes back
// as typed events. The Manager never sees a keeper packet.
#ifndef PYMANAGER_DETAIL_PROCESS_CORE_HPP
#define PYMANAGER_DETAIL_PROCESS_CORE_HPP

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/keeper.hpp"
#include "pymanager/error.hpp"
#include "pymanager/process.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

/// What happened to a process, as the keeper saw it.
struct CoreEvent {
  enum class Type { spawned, spawn_failed, exited, group_empty, daemon_adopted, daemon_gone };
  Type type = Type::spawned;
  std::uint32_t id = 0;  ///< the process (kKeeperNoOwner: a daemon nobody claims)
  pid_t pid = 0;         ///< spawned, exited, daemon_*: the process; group_empty: the group
  int wait_status = 0;   ///< exited, daemon_gone
  int error = 0;         ///< spawn_failed: errno
  SpawnStage stage = SpawnStage::protocol;  ///< spawn_failed: where
  /// daemon_adopted: when the daemon started (/proc/PID/stat, clock ticks
  /// since boot; 0 unknown), so that its pid is never mistaken for another's later.
  std::uint64_t start_time = 0;
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
  UniqueFd fds[2];
};

class ProcessCore {
 public:
  /// Starts the keeper. `wake` is called (from any thread, never blocking)
  /// whenever a request is queued, so that the event thread sends it.
  ProcessCore(KeeperOptions options, std::function<void()> wake) : keeper_(std::move(options)), wake_(std::move(wake)) {
    int flags = ::fcntl(keeper_.socket_fd(), F_GETFL);
    ::fcntl(keeper_.socket_fd(), F_SETFL, flags | O_NONBLOCK);
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
    request.fds[0] = std::move(out);
    request.fds[1] = std::move(err);
    return request;
  }

  /// Queues a request; no I/O. Safe under any lock.
  void submit(CoreRequest request) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(request));
    }
    wake_();
  }
  void signal_group(std::uint32_t id, int sig) { submit(simple(KeeperMessage::signal_group, id, sig)); }
  void signal_daemons(std::uint32_t id, int sig) { submit(simple(KeeperMessage::signal_daemons, id, sig)); }

  /// True while requests wait for room in the socket.
  bool wants_write() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return !queue_.empty();
  }

  /// Event thread: sends queued requests until the socket is full. False
  /// once the keeper is gone.
  bool flush() {
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
    for (const auto& fd : request.fds) {
      if (fd) fds[count++] = fd.get();
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
    return -1;
  }

  KeeperClient keeper_;
  std::function<void()> wake_;
  mutable std::mutex mutex_;
  std::deque<CoreRequest> queue_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_PROCESS_CORE_HPP
