// pymanager: a small HTTP/1.1 server for the API, built so that nothing a
// client does can stall it or make it grow:
// - one event thread reads and writes every connection without blocking
//   (poll), with a deadline for each state: an idle keep-alive connection
//   is closed after `idle_timeout`, a request must arrive whole within
//   `request_timeout`, an answer must be taken within `write_timeout`;
// - a request's head is bounded (request line, header bytes, header count)
//   and answered 414 or 431 as soon as it crosses a bound, before it is
//   read further; a body is bounded too (413);
// - handlers run on a bounded set of worker threads, so a slow one (a
//   restart waiting for its verifier) never delays a read of the status;
// - the number of connections is bounded: past it, new ones wait in the
//   kernel's backlog until an idle one is closed;
// - TCP_NODELAY on every connection: a keep-alive client is not held up by
//   Nagle's algorithm and delayed ACKs (40 ms a request).
// The API needs only tiny requests without bodies; this server implements
// exactly that much of HTTP/1.1 (no chunked bodies, no upgrades).
// This header holds the server: listening, the event loop, accepting, and
// the workers that run the handler. Each connection (its buffers, parse,
// answer and deadlines) is an HttpConnection (http_connection.hpp); the
// requests, answers, bounds and parser are in http_message.hpp.
#ifndef PYMANAGER_DETAIL_HTTP_SERVER_HPP
#define PYMANAGER_DETAIL_HTTP_SERVER_HPP

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/http_connection.hpp"
#include "pymanager/detail/http_message.hpp"
#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

// ----------------------------------------------------------------- declarations

/// Serves one handler on host:port until stop().
class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  HttpServer(HttpLimits limits, Handler handler) : limits_(limits), handler_(std::move(handler)) {}
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  ~HttpServer() { stop(); }

  /// Binds (port 0: any free port) and listens. Throws ErrorKind::system
  /// naming the address when it cannot.
  void listen(const std::string& host, int port);
  int port() const { return port_; }
  /// Starts the event thread.
  void start();
  /// Stops accepting and reading, sends the answers of requests under way
  /// (for at most 2 s: a DELETE / that ends the manager still gets its
  /// answer), then closes every connection, waits for running handlers and
  /// joins every thread. Idempotent.
  void stop();

 private:
  using Clock = HttpConnection::Clock;

  void event_loop();
  void accept_connections();
  /// Hands a complete request to a worker, or refuses it (503).
  void serve(std::uint64_t id, HttpConnection& c, HttpRequest request);
  void worker_loop();
  bool dispatch(std::uint64_t id, HttpRequest request);
  void wake() const;

  HttpLimits limits_;
  Handler handler_;
  UniqueFd listener_;
  UniqueFd wake_;
  int port_ = 0;
  std::thread loop_;
  std::map<std::uint64_t, HttpConnection> connections_;  ///< the event thread's own
  std::uint64_t next_id_ = 1;
  Clock::time_point accept_paused_until_{};  ///< out of descriptors: accept again after this

  // Shared between the event thread and the workers.
  std::mutex mutex_;
  std::condition_variable work_ready_;
  bool stopping_ = false;         ///< workers: return
  bool stop_requested_ = false;   ///< event loop: finish the answers under way, then return
  Clock::time_point stop_deadline_{};
  std::deque<std::pair<std::uint64_t, HttpRequest>> work_;
  std::deque<std::pair<std::uint64_t, HttpResponse>> done_;
  std::vector<std::thread> workers_;
  std::size_t idle_workers_ = 0;
};

// ------------------------------------------------------------- implementation

inline void HttpServer::listen(const std::string& host, int port) {
  auto fail = [&](int err) {
    throw Error(ErrorKind::system, "HTTP API: cannot listen on " + host + ":" + std::to_string(port) +
                                       (err != 0 ? std::string(": ") + std::strerror(err) : std::string()) +
                                       (err == EADDRINUSE ? " (is the port in use?)" : ""));
  };
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  struct addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0) {
    throw Error(ErrorKind::system, "HTTP API: cannot listen on " + host + ":" + service + ": " + ::gai_strerror(rc));
  }
  std::unique_ptr<struct addrinfo, decltype(&::freeaddrinfo)> addresses(found, &::freeaddrinfo);
  int last_error = 0;
  for (struct addrinfo* a = found; a != nullptr; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!fd) {
      last_error = errno;
      continue;
    }
    // SO_REUSEADDR only: a quick restart works, and a second manager on the
    // same port fails (SO_REUSEPORT would let both bind and share traffic).
    int yes = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd.get(), 128) != 0) {
      last_error = errno;
      continue;
    }
    struct sockaddr_storage bound {};
    socklen_t length = sizeof bound;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &length);
    port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    listener_ = std::move(fd);
    return;
  }
  fail(last_error);
}

inline void HttpServer::start() {
  wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_) throw_system_error("eventfd");
  loop_ = std::thread([this] { event_loop(); });
}

inline void HttpServer::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ && !loop_.joinable() && workers_.empty()) return;
    stop_requested_ = true;
    stop_deadline_ = Clock::now() + std::chrono::seconds(2);
  }
  if (wake_) wake();
  if (loop_.joinable()) loop_.join();
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    workers.swap(workers_);
  }
  work_ready_.notify_all();
  for (auto& worker : workers) worker.join();
  connections_.clear();
  listener_.reset();
}

inline void HttpServer::wake() const {
  std::uint64_t one = 1;
  ssize_t ignored = ::write(wake_.get(), &one, sizeof one);
  (void)ignored;
}

inline void HttpServer::event_loop() {
  std::vector<struct pollfd> fds;
  std::vector<std::uint64_t> ids;
  for (;;) {
    bool stop_requested;
    Clock::time_point stop_deadline;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_requested = stop_requested_;
      stop_deadline = stop_deadline_;
    }
    // Answers from the workers.
    std::deque<std::pair<std::uint64_t, HttpResponse>> done;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done.swap(done_);
    }
    for (auto& item : done) {
      auto it = connections_.find(item.first);
      if (it == connections_.end()) continue;
      it->second.answer(item.second);
      if (!it->second.open()) connections_.erase(it);
    }
    // Pipelined requests that arrived with the previous one.
    for (auto it = connections_.begin(); it != connections_.end();) {
      HttpConnection& c = it->second;
      if (auto request = c.pending_request()) serve(it->first, c, std::move(*request));
      it = c.open() ? std::next(it) : connections_.erase(it);
    }
    const auto now = Clock::now();
    auto next = Clock::time_point::max();
    if (stop_requested) {
      // Only the answers under way are finished; nothing new is read.
      for (auto it = connections_.begin(); it != connections_.end();) {
        it = it->second.answer_under_way() ? std::next(it) : connections_.erase(it);
      }
      if (connections_.empty() || now >= stop_deadline) return;
      next = stop_deadline;
    }
    // Expired deadlines; the next one bounds the wait.
    for (auto it = connections_.begin(); it != connections_.end();) {
      it = it->second.check_deadline(now, next) ? std::next(it) : connections_.erase(it);
    }
    fds.clear();
    ids.clear();
    fds.push_back({wake_.get(), POLLIN, 0});
    ids.push_back(0);
    const bool paused = now < accept_paused_until_;
    if (paused) next = std::min(next, accept_paused_until_);
    const bool accepting = connections_.size() < limits_.max_connections && !paused && !stop_requested;
    fds.push_back({accepting ? listener_.get() : -1, POLLIN, 0});
    ids.push_back(0);
    for (auto& [id, c] : connections_) {
      fds.push_back(c.poll_entry());
      ids.push_back(id);
    }
    int timeout = -1;
    if (next != Clock::time_point::max()) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count() + 1;
      timeout = static_cast<int>(std::clamp<long long>(ms, 0, 60000));
    }
    int ready = ::poll(fds.data(), fds.size(), timeout);
    if (ready < 0 && errno != EINTR) return;
    if (fds[0].revents & POLLIN) {
      std::uint64_t count;
      ssize_t ignored = ::read(wake_.get(), &count, sizeof count);
      (void)ignored;
    }
    if (fds[1].revents & POLLIN) accept_connections();
    for (std::size_t k = 2; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      auto it = connections_.find(ids[k]);
      if (it == connections_.end()) continue;
      HttpConnection& c = it->second;
      if (auto request = c.on_events(fds[k].revents)) serve(ids[k], c, std::move(*request));
      if (!c.open()) connections_.erase(it);
    }
  }
}

inline void HttpServer::accept_connections() {
  // A bounded batch: the other connections get their turn.
  for (int n = 0; n < 64 && connections_.size() < limits_.max_connections; ++n) {
    UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) {
      // Out of descriptors: the listener stays readable, so pause instead of
      // spinning; the connection waits in the backlog.
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        accept_paused_until_ = Clock::now() + std::chrono::milliseconds(100);
      }
      return;
    }
    int yes = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
    connections_.emplace(next_id_++, HttpConnection(std::move(fd), limits_));
  }
}

inline void HttpServer::serve(std::uint64_t id, HttpConnection& c, HttpRequest request) {
  if (!dispatch(id, std::move(request))) c.respond(error_response(503, "no thread to serve the request"), true);
}

inline bool HttpServer::dispatch(std::uint64_t id, HttpRequest request) {
  std::lock_guard<std::mutex> lock(mutex_);
  work_.emplace_back(id, std::move(request));
  // A worker that was notified counts as idle until it takes its item, so
  // compare the queue with the idle workers, not "any idle worker".
  if (work_.size() > idle_workers_ && workers_.size() < limits_.max_workers) {
    try {
      workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::system_error&) {
      // No thread to be had (RLIMIT_NPROC, memory): the workers there are
      // will take it; with none, the request is refused.
      if (workers_.empty()) {
        work_.pop_back();
        return false;
      }
    }
  }
  work_ready_.notify_one();
  return true;
}

inline void HttpServer::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    ++idle_workers_;
    work_ready_.wait(lock, [&] { return stopping_ || !work_.empty(); });
    --idle_workers_;
    if (stopping_) return;
    auto item = std::move(work_.front());
    work_.pop_front();
    lock.unlock();
    HttpResponse response;
    try {
      response = handler_(item.second);
    } catch (const std::exception&) {
      response = error_response(500, "internal error");
    }
    lock.lock();
    done_.emplace_back(item.first, std::move(response));
    wake();
  }
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_HTTP_SERVER_HPP
