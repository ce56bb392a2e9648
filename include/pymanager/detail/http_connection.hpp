// pymanager: one client connection of the HTTP server (http_server.hpp), as
// its event thread drives it: the bounded read buffer and the parse of each
// request, the answer and its write backlog, the reading and dropping of
// what a refused client still sends, and the deadline of each state. It
// never blocks and never calls a handler: a complete request is handed back
// to the server, which runs it on a worker and brings the answer back.
#ifndef PYMANAGER_DETAIL_HTTP_CONNECTION_HPP
#define PYMANAGER_DETAIL_HTTP_CONNECTION_HPP

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/http_message.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

// ----------------------------------------------------------------- declarations

class HttpConnection {
 public:
  using Clock = std::chrono::steady_clock;
  /// draining: a refusal was sent and the write side shut; what the client
  /// still sends is read and dropped for a while, so that it gets the answer
  /// rather than a reset.
  enum State { reading, handling, writing, draining };

  /// A connection just accepted: idle until its first byte.
  HttpConnection(UniqueFd fd, const HttpLimits& limits);

  /// False once the connection is done (closed, broken, answered and closed):
  /// the server forgets it.
  bool open() const { return static_cast<bool>(fd_); }
  /// An answer is being made or sent: what a stopping server still finishes.
  bool answer_under_way() const { return state_ == handling || state_ == writing; }
  /// What to poll for now.
  struct pollfd poll_entry() const;
  /// Acts on what poll reported. Returns a request when one is complete (the
  /// connection then waits for its answer).
  std::optional<HttpRequest> on_events(short revents);
  /// A pipelined request that arrived with the previous one, once that one
  /// is answered.
  std::optional<HttpRequest> pending_request();
  /// Closes the connection when its deadline passed, answering 408 first if
  /// a request was under way; else lowers `next` to its deadline. False:
  /// the connection is done.
  bool check_deadline(Clock::time_point now, Clock::time_point& next);
  /// The handler's answer to the request it waits for.
  void answer(const HttpResponse& response) { respond(response, close_requested_); }
  /// Sends an answer; `close`: then shuts the connection.
  void respond(const HttpResponse& response, bool close);

 private:
  std::optional<HttpRequest> on_readable();
  std::optional<HttpRequest> try_parse();
  bool flush();
  bool drain();

  UniqueFd fd_;
  HttpLimits limits_;
  std::string in_;
  std::string out_;
  std::size_t out_sent_ = 0;
  State state_ = reading;
  bool close_after_write_ = false;
  Clock::time_point deadline_{};
  bool request_started_ = false;
  bool close_requested_ = false;  ///< the request being handled asked for Connection: close
  bool parse_pending_ = false;    ///< a pipelined request may be waiting in `in_`
  bool broken_ = false;           ///< the client hung up while its request was handled
  std::size_t drained_ = 0;       ///< bytes read and dropped after a refusal
};

// ------------------------------------------------------------- implementation

inline HttpConnection::HttpConnection(UniqueFd fd, const HttpLimits& limits)
    : fd_(std::move(fd)), limits_(limits), deadline_(Clock::now() + limits.idle_timeout) {}

inline struct pollfd HttpConnection::poll_entry() const {
  const bool wants_input = state_ == reading || state_ == draining;
  const short events = static_cast<short>(wants_input ? POLLIN : state_ == writing ? POLLOUT : 0);
  // A connection whose client hung up while it is handled would report
  // POLLHUP on every pass: it leaves the poll set until its answer.
  return {broken_ ? -1 : fd_.get(), events, 0};
}

inline std::optional<HttpRequest> HttpConnection::on_events(short revents) {
  if (state_ == reading && (revents & (POLLIN | POLLHUP | POLLERR))) return on_readable();
  if (state_ == draining) {
    if (!drain()) fd_.reset();
  } else if (state_ == writing && (revents & (POLLOUT | POLLHUP | POLLERR))) {
    if (!flush()) fd_.reset();
  } else if (revents & (POLLHUP | POLLERR)) {
    // While handling, a client that went away is dropped once the answer comes.
    broken_ = true;
    if (state_ != handling) fd_.reset();
  }
  return std::nullopt;
}

inline std::optional<HttpRequest> HttpConnection::pending_request() {
  if (!parse_pending_ || state_ != reading) return std::nullopt;
  parse_pending_ = false;
  return try_parse();
}

inline bool HttpConnection::check_deadline(Clock::time_point now, Clock::time_point& next) {
  if (state_ == handling) return true;
  if (now >= deadline_) {
    // A request begun and not finished in time: one answer, then close.
    if (state_ != reading || !request_started_) return false;
    respond(error_response(408, "request not completed in time"), true);
    if (!fd_) return false;
  }
  next = std::min(next, deadline_);
  return true;
}

inline std::optional<HttpRequest> HttpConnection::on_readable() {
  char buffer[16384];
  // A bounded number of reads per wake-up; the parse fails as soon as a
  // bound is crossed, so `in_` never holds more than the limits plus a read.
  for (int round = 0; round < 4 && state_ == reading; ++round) {
    ssize_t n = ::recv(fd_.get(), buffer, sizeof buffer, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      fd_.reset();
      return std::nullopt;
    }
    if (n < 0) return std::nullopt;
    in_.append(buffer, static_cast<std::size_t>(n));
    if (!request_started_) {
      // Empty lines between requests (RFC 9112, 2.2) do not start one.
      std::size_t blank = 0;
      while (blank + 1 < in_.size() && in_[blank] == '\r' && in_[blank + 1] == '\n') blank += 2;
      in_.erase(0, blank);
      if (in_.empty()) continue;
      request_started_ = true;
      deadline_ = Clock::now() + limits_.request_timeout;
    }
    if (auto request = try_parse()) return request;
  }
  return std::nullopt;
}

inline std::optional<HttpRequest> HttpConnection::try_parse() {
  if (state_ != reading || in_.empty()) return std::nullopt;
  HttpRequest request;
  HttpParse parse = parse_http_request(in_, limits_, request);
  if (parse.outcome == HttpParse::incomplete) return std::nullopt;
  if (parse.outcome == HttpParse::failed) {
    in_.clear();
    respond(error_response(parse.status, parse.message), true);
    return std::nullopt;
  }
  in_.erase(0, parse.consumed);
  std::string connection = request.header("connection");
  for (char& ch : connection) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  close_requested_ = request.minor_version == 0 ? connection.find("keep-alive") == std::string::npos
                                                : connection.find("close") != std::string::npos;
  state_ = handling;
  return request;
}

inline void HttpConnection::respond(const HttpResponse& response, bool close) {
  std::string head = "HTTP/1.1 " + std::to_string(response.status) + " " + http_reason(response.status) + "\r\n";
  head += "Content-Type: " + response.content_type + "\r\n";
  head += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
  for (const auto& h : response.headers) head += h.first + ": " + h.second + "\r\n";
  head += close ? "Connection: close\r\n\r\n" : "Connection: keep-alive\r\n\r\n";
  out_ = head + response.body;
  out_sent_ = 0;
  close_after_write_ = close;
  state_ = writing;
  deadline_ = Clock::now() + limits_.write_timeout;
  if (!flush()) fd_.reset();
}

/// Writes what the socket takes now. False when the connection is done
/// (closed after its last answer, or broken).
inline bool HttpConnection::flush() {
  if (!fd_) return false;
  while (out_sent_ < out_.size()) {
    ssize_t n = ::send(fd_.get(), out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return false;
    out_sent_ += static_cast<std::size_t>(n);
  }
  if (close_after_write_) {
    ::shutdown(fd_.get(), SHUT_WR);
    // Closing now, with what the client still sends unread, would reset the
    // connection and lose the answer: read and drop for a little while.
    state_ = draining;
    drained_ = 0;
    deadline_ = Clock::now() + std::chrono::milliseconds(500);
    return true;
  }
  out_.clear();
  out_sent_ = 0;
  state_ = reading;
  request_started_ = false;
  deadline_ = Clock::now() + limits_.idle_timeout;
  // A pipelined request may be waiting already: the event loop parses it.
  if (!in_.empty()) {
    request_started_ = true;
    deadline_ = Clock::now() + limits_.request_timeout;
    parse_pending_ = true;
  }
  return true;
}

/// Reads and drops what a refused client still sends: at most 256 KiB or
/// until the deadline (check_deadline), then the connection is closed.
inline bool HttpConnection::drain() {
  char buffer[16384];
  for (;;) {
    ssize_t n = ::recv(fd_.get(), buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return false;
    drained_ += static_cast<std::size_t>(n);
    if (drained_ > std::size_t{256} * 1024) return false;
  }
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_HTTP_CONNECTION_HPP
