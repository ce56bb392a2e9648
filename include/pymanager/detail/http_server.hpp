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
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pymanager/detail/fd.hpp"
#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

// ----------------------------------------------------------------- declarations

/// Bounds on what a client may send and how long it may take.
struct HttpLimits {
  std::size_t max_request_line = std::size_t{8} * 1024; ///< longer: 414
  std::size_t max_header_bytes = std::size_t{16} * 1024;  ///< all header lines together; more: 431
  std::size_t max_headers = 64;              ///< more header lines: 431
  std::size_t max_body = std::size_t{64} * 1024;        ///< a larger Content-Length: 413
  std::size_t max_connections = 256;         ///< more wait in the kernel's backlog
  std::size_t max_workers = 32;              ///< threads that run handlers
  std::chrono::milliseconds idle_timeout{2000};     ///< an open connection with no request under way
  std::chrono::milliseconds request_timeout{5000};  ///< from a request's first byte to its last
  std::chrono::milliseconds write_timeout{5000};    ///< for the client to take an answer
};

struct HttpRequest {
  std::string method;
  std::string target;  ///< as sent: path and query
  std::string raw_path;  ///< as sent, before '?' (split it before decoding: %2F is not a separator)
  std::string path;      ///< percent-decoded (may hold any bytes)
  std::string query;   ///< raw, after '?'
  int minor_version = 1;
  std::vector<std::pair<std::string, std::string>> headers;  ///< names lower-cased
  std::string body;

  /// The first header of that name (lower case), or "".
  std::string header(const std::string& lower_name) const;
  bool has_header(const std::string& lower_name) const;
  /// A query parameter, percent-decoded; nullopt when absent.
  std::optional<std::string> query_param(const std::string& name) const;
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
};

/// What parse_http_request found at the start of a buffer.
struct HttpParse {
  enum Outcome { incomplete, complete, failed } outcome = incomplete;
  std::size_t consumed = 0;  ///< complete: the bytes of this request (head and body)
  int status = 0;            ///< failed: 400, 413, 414, 431, 501, 505
  std::string message;       ///< failed: why
};

/// Parses one request from the start of `data`. Incomplete input that is
/// already over a bound fails at once, so that nothing unbounded is kept.
inline HttpParse parse_http_request(const std::string& data, const HttpLimits& limits, HttpRequest& out);

/// Decodes %XX escapes (and nothing else); malformed escapes stay as they are.
inline std::string percent_decode(const std::string& text);

inline const char* http_reason(int status);

/// `{"success": false, "error": {"message": M}}`, with bytes that are not
/// UTF-8 replaced (a message may quote what the client sent).
inline HttpResponse error_response(int status, const std::string& message);

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
  using Clock = std::chrono::steady_clock;
  struct Connection {
    UniqueFd fd;
    std::string in;
    std::string out;
    std::size_t out_sent = 0;
    /// draining: a refusal was sent and the write side shut; what the client
    /// still sends is read and dropped for a while, so that it gets the
    /// answer rather than a reset.
    enum State { reading, handling, writing, draining } state = reading;
    bool close_after_write = false;
    Clock::time_point deadline{};
    bool request_started = false;
    bool close_requested = false;  ///< the request being handled asked for Connection: close
    bool parse_pending = false;    ///< a pipelined request may be waiting in `in`
    bool broken = false;           ///< the client hung up while its request was handled
    std::size_t drained = 0;       ///< bytes read and dropped after a refusal
  };

  void event_loop();
  void accept_connections();
  void on_readable(std::uint64_t id, Connection& c);
  void try_parse(std::uint64_t id, Connection& c);
  void respond(Connection& c, const HttpResponse& response, bool close);
  bool flush(Connection& c);
  bool drain(Connection& c);
  void worker_loop();
  bool dispatch(std::uint64_t id, HttpRequest request);
  void wake() const;

  HttpLimits limits_;
  Handler handler_;
  UniqueFd listener_;
  UniqueFd wake_;
  int port_ = 0;
  std::thread loop_;
  std::map<std::uint64_t, Connection> connections_;  ///< the event thread's own
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

inline std::string HttpRequest::header(const std::string& lower_name) const {
  for (const auto& h : headers) {
    if (h.first == lower_name) return h.second;
  }
  return "";
}

inline bool HttpRequest::has_header(const std::string& lower_name) const {
  for (const auto& h : headers) {
    if (h.first == lower_name) return true;
  }
  return false;
}

inline std::optional<std::string> HttpRequest::query_param(const std::string& name) const {
  std::size_t start = 0;
  while (start <= query.size()) {
    std::size_t amp = query.find('&', start);
    std::string pair = query.substr(start, amp == std::string::npos ? std::string::npos : amp - start);
    std::size_t eq = pair.find('=');
    if (percent_decode(pair.substr(0, eq)) == name) {
      return eq == std::string::npos ? std::string() : percent_decode(pair.substr(eq + 1));
    }
    if (amp == std::string::npos) break;
    start = amp + 1;
  }
  return std::nullopt;
}

inline std::string percent_decode(const std::string& text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

inline HttpResponse error_response(int status, const std::string& message) {
  nlohmann::json body = {{"success", false}, {"error", {{"message", message}}}};
  return HttpResponse{status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

inline const char* http_reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

inline HttpParse parse_http_request(const std::string& data, const HttpLimits& limits, HttpRequest& out) {
  HttpParse result;
  auto fail = [&](int status, std::string message) {
    result.outcome = HttpParse::failed;
    result.status = status;
    result.message = std::move(message);
    return result;
  };
  // Blank lines before a request are allowed (RFC 9112, 2.2).
  std::size_t start = 0;
  while (start + 1 < data.size() && data[start] == '\r' && data[start + 1] == '\n') start += 2;
  if (start > limits.max_request_line) return fail(400, "too many empty lines before the request line");
  std::size_t line_end = data.find("\r\n", start);
  if (line_end == std::string::npos) {
    if (data.size() - start > limits.max_request_line) {
      return fail(414, "request line longer than " + std::to_string(limits.max_request_line) + " bytes");
    }
    return result;
  }
  if (line_end - start > limits.max_request_line) {
    return fail(414, "request line longer than " + std::to_string(limits.max_request_line) + " bytes");
  }
  const std::string line = data.substr(start, line_end - start);
  std::size_t sp1 = line.find(' ');
  std::size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos || line.find(' ', sp2 + 1) != std::string::npos) {
    return fail(400, "malformed request line");
  }
  out = HttpRequest();
  out.method = line.substr(0, sp1);
  out.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string version = line.substr(sp2 + 1);
  if (out.method.empty() || out.target.empty() || out.target[0] != '/') return fail(400, "malformed request line");
  for (char c : out.method) {
    if (c < 'A' || c > 'Z') return fail(400, "malformed request method");
  }
  if (version == "HTTP/1.1") {
    out.minor_version = 1;
  } else if (version == "HTTP/1.0") {
    out.minor_version = 0;
  } else if (version.rfind("HTTP/", 0) == 0) {
    return fail(505, "unsupported HTTP version " + version);
  } else {
    return fail(400, "malformed request line");
  }
  std::size_t question = out.target.find('?');
  out.raw_path = out.target.substr(0, question);
  out.path = percent_decode(out.raw_path);
  if (question != std::string::npos) out.query = out.target.substr(question + 1);

  // Header lines, each checked as soon as it is whole; an unfinished one
  // counts against the bound too.
  std::size_t pos = line_end + 2;
  const std::size_t headers_start = pos;
  for (;;) {
    std::size_t end = data.find("\r\n", pos);
    if (end == std::string::npos) {
      if (data.size() - headers_start > limits.max_header_bytes) {
        return fail(431, "request headers larger than " + std::to_string(limits.max_header_bytes) + " bytes");
      }
      return result;
    }
    if (end + 2 - headers_start > limits.max_header_bytes) {
      return fail(431, "request headers larger than " + std::to_string(limits.max_header_bytes) + " bytes");
    }
    if (end == pos) {
      pos += 2;
      break;
    }
    if (out.headers.size() >= limits.max_headers) {
      return fail(431, "more than " + std::to_string(limits.max_headers) + " request headers");
    }
    const std::string header = data.substr(pos, end - pos);
    std::size_t colon = header.find(':');
    if (colon == std::string::npos || colon == 0 || header[0] == ' ' || header[0] == '\t') {
      return fail(400, "malformed header line");
    }
    std::string name = header.substr(0, colon);
    for (char& c : name) {
      if (c == ' ' || c == '\t') return fail(400, "malformed header name");
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    std::size_t value_start = header.find_first_not_of(" \t", colon + 1);
    std::size_t value_end = header.find_last_not_of(" \t");
    std::string value = value_start == std::string::npos ? "" : header.substr(value_start, value_end - value_start + 1);
    out.headers.emplace_back(std::move(name), std::move(value));
    pos = end + 2;
  }
  if (out.has_header("transfer-encoding")) return fail(501, "request bodies with Transfer-Encoding are not accepted");
  std::size_t body_size = 0;
  if (out.has_header("content-length")) {
    const std::string text = out.header("content-length");
    if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) {
      return fail(400, "malformed Content-Length");
    }
    body_size = static_cast<std::size_t>(std::stoull(text));
    if (body_size > limits.max_body) {
      return fail(413, "request body larger than " + std::to_string(limits.max_body) + " bytes");
    }
  }
  if (data.size() - pos < body_size) return result;
  out.body = data.substr(pos, body_size);
  result.outcome = HttpParse::complete;
  result.consumed = pos + body_size;
  return result;
}

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
      respond(it->second, item.second, it->second.close_requested);
      if (!it->second.fd) connections_.erase(it);
    }
    // Pipelined requests that arrived with the previous one.
    for (auto it = connections_.begin(); it != connections_.end();) {
      Connection& c = it->second;
      if (c.parse_pending && c.state == Connection::reading) {
        c.parse_pending = false;
        try_parse(it->first, c);
      }
      it = c.fd ? std::next(it) : connections_.erase(it);
    }
    const auto now = Clock::now();
    auto next = Clock::time_point::max();
    if (stop_requested) {
      // Only the answers under way are finished; nothing new is read.
      for (auto it = connections_.begin(); it != connections_.end();) {
        const auto state = it->second.state;
        it = state == Connection::handling || state == Connection::writing ? std::next(it) : connections_.erase(it);
      }
      if (connections_.empty() || now >= stop_deadline) return;
      next = stop_deadline;
    }
    // Expired deadlines; the next one bounds the wait.
    for (auto it = connections_.begin(); it != connections_.end();) {
      Connection& c = it->second;
      if (c.state != Connection::handling && now >= c.deadline) {
        if (c.state == Connection::reading && c.request_started) {
          // A request begun and not finished in time: one answer, then close.
          respond(c, error_response(408, "request not completed in time"), true);
          if (c.fd) {
            next = std::min(next, c.deadline);
            ++it;
            continue;
          }
        }
        it = connections_.erase(it);
        continue;
      }
      if (c.state != Connection::handling) next = std::min(next, c.deadline);
      ++it;
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
      const bool wants_input = c.state == Connection::reading || c.state == Connection::draining;
      const short events = static_cast<short>(wants_input ? POLLIN : c.state == Connection::writing ? POLLOUT : 0);
      // A connection whose client hung up while it is handled would report
      // POLLHUP on every pass: it leaves the poll set until its answer.
      fds.push_back({c.broken ? -1 : c.fd.get(), events, 0});
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
      Connection& c = it->second;
      bool keep = true;
      if (c.state == Connection::reading && (fds[k].revents & (POLLIN | POLLHUP | POLLERR))) {
        on_readable(ids[k], c);
        keep = static_cast<bool>(c.fd);
      } else if (c.state == Connection::draining) {
        keep = drain(c);
      } else if (c.state == Connection::writing && (fds[k].revents & (POLLOUT | POLLHUP | POLLERR))) {
        keep = flush(c);
      } else if (fds[k].revents & (POLLHUP | POLLERR)) {
        // While handling, a client that went away is dropped once the answer comes.
        c.broken = true;
        keep = c.state == Connection::handling;
      }
      if (!keep) connections_.erase(it);
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
    Connection c;
    c.fd = std::move(fd);
    c.deadline = Clock::now() + limits_.idle_timeout;
    connections_.emplace(next_id_++, std::move(c));
  }
}

inline void HttpServer::on_readable(std::uint64_t id, Connection& c) {
  char buffer[16384];
  // A bounded number of reads per wake-up; the parse fails as soon as a
  // bound is crossed, so `in` never holds more than the limits plus a read.
  for (int round = 0; round < 4 && c.state == Connection::reading; ++round) {
    ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      c.fd.reset();
      return;
    }
    if (n < 0) return;
    c.in.append(buffer, static_cast<std::size_t>(n));
    if (!c.request_started) {
      // Empty lines between requests (RFC 9112, 2.2) do not start one.
      std::size_t blank = 0;
      while (blank + 1 < c.in.size() && c.in[blank] == '\r' && c.in[blank + 1] == '\n') blank += 2;
      c.in.erase(0, blank);
      if (c.in.empty()) continue;
      c.request_started = true;
      c.deadline = Clock::now() + limits_.request_timeout;
    }
    try_parse(id, c);
  }
}

inline void HttpServer::try_parse(std::uint64_t id, Connection& c) {
  if (c.state != Connection::reading || c.in.empty()) return;
  HttpRequest request;
  HttpParse parse = parse_http_request(c.in, limits_, request);
  if (parse.outcome == HttpParse::incomplete) return;
  if (parse.outcome == HttpParse::failed) {
    c.in.clear();
    respond(c, error_response(parse.status, parse.message), true);
    return;
  }
  c.in.erase(0, parse.consumed);
  std::string connection = request.header("connection");
  for (char& ch : connection) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  c.close_requested = request.minor_version == 0 ? connection.find("keep-alive") == std::string::npos
                                                 : connection.find("close") != std::string::npos;
  c.state = Connection::handling;
  if (!dispatch(id, std::move(request))) {
    respond(c, error_response(503, "no thread to serve the request"), true);
  }
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

/// Reads and drops what a refused client still sends: at most 256 KiB or
/// until the deadline (the event loop's), then the connection is closed.
inline bool HttpServer::drain(Connection& c) {
  char buffer[16384];
  for (;;) {
    ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return false;
    c.drained += static_cast<std::size_t>(n);
    if (c.drained > std::size_t{256} * 1024) return false;
  }
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

inline void HttpServer::respond(Connection& c, const HttpResponse& response, bool close) {
  std::string head = "HTTP/1.1 " + std::to_string(response.status) + " " + http_reason(response.status) + "\r\n";
  head += "Content-Type: " + response.content_type + "\r\n";
  head += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
  for (const auto& h : response.headers) head += h.first + ": " + h.second + "\r\n";
  head += close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n";
  c.out = head + response.body;
  c.out_sent = 0;
  c.close_after_write = close;
  c.state = Connection::writing;
  c.deadline = Clock::now() + limits_.write_timeout;
  if (!flush(c)) c.fd.reset();
}

/// Writes what the socket takes now. False when the connection is done
/// (closed after its last answer, or broken).
inline bool HttpServer::flush(Connection& c) {
  if (!c.fd) return false;
  while (c.out_sent < c.out.size()) {
    ssize_t n = ::send(c.fd.get(), c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return false;
    c.out_sent += static_cast<std::size_t>(n);
  }
  if (c.close_after_write) {
    ::shutdown(c.fd.get(), SHUT_WR);
    // Closing now, with what the client still sends unread, would reset the
    // connection and lose the answer: read and drop for a little while.
    c.state = Connection::draining;
    c.drained = 0;
    c.deadline = Clock::now() + std::chrono::milliseconds(500);
    return true;
  }
  c.out.clear();
  c.out_sent = 0;
  c.state = Connection::reading;
  c.request_started = false;
  c.deadline = Clock::now() + limits_.idle_timeout;
  // A pipelined request may be waiting already: the event loop parses it.
  if (!c.in.empty()) {
    c.request_started = true;
    c.deadline = Clock::now() + limits_.request_timeout;
    c.parse_pending = true;
  }
  return true;
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_HTTP_SERVER_HPP
