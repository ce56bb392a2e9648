// pymanager: the children's output as events. Each complete line a process
// prints reaches every subscriber as (process, stdout or stderr, line)
// before any formatting: the prefixed terminal output, the tail buffer,
// `redirect_output` files and the GoogleTest environment's log files are all
// subscribers. Nothing parses formatted text back.
//
// Also here: the writer that puts lines on a terminal or pipe without ever
// blocking the caller (a stuck reader costs dropped lines, counted and
// reported, never a stalled manager).
#ifndef PYMANAGER_OUTPUT_HPP
#define PYMANAGER_OUTPUT_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

/// One line of a process's output. The views are valid during the call only.
struct OutputLine {
  std::size_t process = 0;  ///< 0-based index in Config::processes
  std::string_view name;    ///< the process's name
  OutputStream stream = OutputStream::out;
  std::string_view text;    ///< without its newline
  /// False for the unfinished last line at the end of the stream, and for
  /// the pieces of a line longer than kMaxOutputLine (cut so memory stays bounded).
  bool complete = true;
};

/// Receives output lines on the manager's event thread. It must not block
/// (no waiting on other processes, no unbounded I/O) and must not call
/// back into the Manager.
using OutputSubscriber = std::function<void(const OutputLine&)>;

/// Longer lines are delivered in pieces of this size.
constexpr std::size_t kMaxOutputLine = std::size_t{64} * 1024;

namespace detail {

/// At most `size` bytes of `text`, never ending inside a UTF-8 character
/// (continuation bytes at the cut are left out with their lead byte).
inline std::string utf8_prefix(const std::string& text, std::size_t size) {
  if (text.size() <= size) return text;
  std::size_t cut = size;
  for (int back = 0; back < 3 && cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80; ++back) --cut;
  return text.substr(0, cut);
}

/// Cuts a byte stream into lines.
class LineSplitter {
 public:
  /// Calls `emit(text, complete)` for every line ended in `data`.
  template <class Emit>
  void feed(const char* data, std::size_t size, Emit&& emit) {
    std::size_t start = 0;
    for (;;) {
      const void* found = size > start ? std::memchr(data + start, '\n', size - start) : nullptr;
      if (found == nullptr) break;
      std::size_t end = static_cast<std::size_t>(static_cast<const char*>(found) - data);
      if (partial_.empty()) {
        emit(std::string_view(data + start, end - start), true);
      } else {
        partial_.append(data + start, end - start);
        emit(std::string_view(partial_), true);
        partial_.clear();
      }
      start = end + 1;
    }
    partial_.append(data + start, size - start);
    while (partial_.size() >= kMaxOutputLine) {
      std::string piece = utf8_prefix(partial_, kMaxOutputLine);
      if (piece.empty()) piece = partial_.substr(0, kMaxOutputLine);
      emit(std::string_view(piece), false);
      partial_.erase(0, piece.size());
    }
  }
  /// The unfinished last line, if any (at the end of the stream).
  template <class Emit>
  void finish(Emit&& emit) {
    if (!partial_.empty()) emit(std::string_view(partial_), false);
    partial_.clear();
  }

 private:
  std::string partial_;
};

/// write(2) that cannot raise SIGPIPE in the calling thread: a reader that
/// went away is an EPIPE error, never the end of the host process.
inline ssize_t write_no_sigpipe(int fd, const char* data, std::size_t size) {
  sigset_t pipe_only, old;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  sigset_t pending;
  sigemptyset(&pending);
  ::sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE) == 1;
  ::pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
  ssize_t n = retry_eintr([&] { return ::write(fd, data, size); });
  const int saved = errno;
  if (n < 0 && saved == EPIPE && !was_pending) {
    // Take the SIGPIPE our write raised, so that it never reaches a handler.
    struct timespec zero = {0, 0};
    while (::sigtimedwait(&pipe_only, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = saved;
  return n;
}

}  // namespace detail

/// Writes text to a descriptor it does not own (standard output, standard
/// error, a pipe, a terminal, a file) without ever blocking: what cannot be
/// written now waits in a bounded backlog, written when the descriptor is
/// writable (the event loop asks wait_fd()). When the backlog is full,
/// whole lines are dropped and counted. Thread-safe.
///
/// How it avoids blocking without changing the descriptor's flags (which
/// other users of a shared terminal or pipe would see): a pipe, FIFO or
/// terminal is opened again through /proc/self/fd with O_NONBLOCK (a file
/// description of our own); a socket is written with MSG_DONTWAIT; a regular
/// file is written directly (it never waits for a reader). When the reopen
/// is impossible, it writes only after poll() says there is room, at most
/// PIPE_BUF bytes at a time, which a pipe then takes without waiting.
class StreamWriter {
 public:
  static constexpr std::size_t kDefaultBacklog = std::size_t{1} << 20;

  explicit StreamWriter(int fd, std::size_t max_backlog = kDefaultBacklog) : fd_(fd), max_backlog_(max_backlog) {
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0) {
      mode_ = Mode::broken;
      return;
    }
    if (S_ISREG(st.st_mode)) {
      mode_ = Mode::file;
    } else if (S_ISSOCK(st.st_mode)) {
      mode_ = Mode::socket;
    } else if ((::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0) {
      mode_ = Mode::nonblocking;
    } else {
      const std::string self = "/proc/self/fd/" + std::to_string(fd);
      own_.reset(::open(self.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
      mode_ = own_ ? Mode::nonblocking : Mode::poll_first;
    }
  }
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  /// Queues `text` and writes what it can at once. False when it was
  /// dropped (the backlog is full, or the reader is gone).
  bool write(std::string_view text) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (mode_ == Mode::broken) return count_dropped(text);
    // What waits goes first (also for a writer that no event loop services).
    flush_some();
    std::size_t done = 0;
    if (pending() == 0) done = write_now(text.data(), text.size());
    if (done == text.size()) return true;
    if (mode_ == Mode::broken) return count_dropped(text);
    // A line begun must be finished, whatever the backlog holds.
    if (done == 0 && pending() + text.size() > max_backlog_) return count_dropped(text);
    backlog_.append(text.data() + done, text.size() - done);
    return true;
  }

  /// The descriptor to wait on for writability while something is queued;
  /// -1 when nothing is.
  int wait_fd() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return pending() > 0 && mode_ != Mode::broken ? write_target() : -1;
  }

  /// Writes what it can of the backlog now.
  void on_writable() {
    std::lock_guard<std::mutex> lock(mutex_);
    flush_some();
  }

  /// Lines dropped since the last call, once the backlog has drained (the
  /// reader is reading again) or when `now_or_never` (the end).
  std::size_t take_dropped(bool now_or_never = false) {
    std::lock_guard<std::mutex> lock(mutex_);
    // A reader that went away (broken) never comes back.
    if (dropped_ == 0 || (!now_or_never && (pending() > 0 || mode_ == Mode::broken))) return 0;
    return std::exchange(dropped_, 0);
  }

  /// True once the reader is gone (EPIPE) or the descriptor unusable.
  bool broken() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return mode_ == Mode::broken;
  }
  /// The errno that broke it (0 while it is not broken).
  int error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }

  /// Lines dropped and not yet taken.
  std::size_t dropped() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return dropped_;
  }

  /// Tries to write the backlog for at most `bound` (at the end).
  void flush(Clock::duration bound) {
    const auto deadline = Clock::now() + bound;
    for (;;) {
      int fd;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        flush_some();
        if (pending() == 0 || mode_ == Mode::broken) return;
        fd = write_target();
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return;
      struct pollfd p = {fd, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 100)));
    }
  }

  std::size_t backlog() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return pending();
  }

 private:
  enum class Mode { file, nonblocking, socket, poll_first, broken };

  std::size_t pending() const { return backlog_.size() - head_; }
  int write_target() const { return own_ ? own_.get() : fd_; }

  bool count_dropped(std::string_view text) {
    std::size_t lines = static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
    dropped_ += std::max<std::size_t>(1, lines);
    return false;
  }

  /// Writes as much of `data` as goes without waiting; returns how much.
  std::size_t write_now(const char* data, std::size_t size) {
    std::size_t done = 0;
    while (done < size) {
      ssize_t n = -1;
      std::size_t chunk = size - done;
      switch (mode_) {
        case Mode::file:
          n = detail::write_no_sigpipe(fd_, data + done, chunk);
          break;
        case Mode::socket:
          n = detail::retry_eintr([&] { return ::send(fd_, data + done, chunk, MSG_DONTWAIT | MSG_NOSIGNAL); });
          break;
        case Mode::nonblocking:
          n = detail::write_no_sigpipe(write_target(), data + done, chunk);
          break;
        case Mode::poll_first: {
          struct pollfd p = {fd_, POLLOUT, 0};
          if (::poll(&p, 1, 0) != 1 || (p.revents & POLLOUT) == 0) return done;
          n = detail::write_no_sigpipe(fd_, data + done, std::min<std::size_t>(chunk, PIPE_BUF));
          break;
        }
        case Mode::broken:
          return done;
      }
      if (n > 0) {
        done += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return done;
      // The reader is gone (EPIPE) or the descriptor is unusable: from now
      // on everything is dropped, and counted.
      error_ = n < 0 ? errno : EIO;
      mode_ = Mode::broken;
      return done;
    }
    return done;
  }

  void flush_some() {
    if (pending() == 0) return;
    head_ += write_now(backlog_.data() + head_, pending());
    if (mode_ == Mode::broken) {
      count_dropped(std::string_view(backlog_).substr(head_));
      backlog_.clear();
      head_ = 0;
    } else if (head_ == backlog_.size()) {
      backlog_.clear();
      head_ = 0;
    } else if (head_ > backlog_.size() / 2) {
      backlog_.erase(0, head_);
      head_ = 0;
    }
  }

  int fd_;
  std::size_t max_backlog_;
  Mode mode_ = Mode::broken;
  detail::UniqueFd own_;
  mutable std::mutex mutex_;
  std::string backlog_;
  std::size_t head_ = 0;
  std::size_t dropped_ = 0;
  int error_ = 0;
};

namespace detail {

/// The last lines of each process, for diagnosis. Thread-safe.
class TailBuffers {
 public:
  TailBuffers(std::size_t processes, std::size_t lines_kept) : tails_(processes), lines_kept_(lines_kept) {}

  void add(std::size_t process, std::string_view line) {
    // A very long line is cut, so that memory stays small.
    constexpr std::size_t kMaxKept = 4096;
    std::string kept = line.size() <= kMaxKept ? std::string(line) : utf8_prefix(std::string(line), kMaxKept) + "...";
    std::lock_guard<std::mutex> lock(mutex_);
    auto& tail = tails_[process];
    tail.push_back(std::move(kept));
    while (tail.size() > lines_kept_) tail.pop_front();
  }

  std::vector<std::string> last(std::size_t process, std::size_t lines) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto& tail = tails_[process];
    std::size_t n = std::min(lines, tail.size());
    return std::vector<std::string>(tail.end() - static_cast<std::ptrdiff_t>(n), tail.end());
  }

 private:
  std::vector<std::deque<std::string>> tails_;
  std::size_t lines_kept_;
  mutable std::mutex mutex_;
};

/// Formats lines as the original did, "name | text", names padded to the
/// longest one and optionally colored, and hands them to a StreamWriter.
class TerminalPrinter {
 public:
  TerminalPrinter(StreamWriter& writer, std::size_t name_width, bool color)
      : writer_(writer), name_width_(name_width), color_(color) {}

  void print(const OutputLine& line) {
    std::string out;
    out.reserve(name_width_ + line.text.size() + 16);
    if (color_) {
      static constexpr int kColors[] = {36, 33, 32, 35, 34, 31};
      out += "\x1b[" + std::to_string(kColors[line.process % 6]) + "m";
    }
    out.append(line.name.data(), line.name.size());
    if (line.name.size() < name_width_) out.append(name_width_ - line.name.size(), ' ');
    out += color_ ? " |\x1b[0m " : " | ";
    out.append(line.text.data(), line.text.size());
    out += '\n';
    writer_.write(out);
  }

 private:
  StreamWriter& writer_;
  std::size_t name_width_;
  bool color_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_OUTPUT_HPP
