// pymanager: writing the children's prefixed output to a descriptor that
// may stall (a terminal suspended with ^S, `pymanager | sleep 600`), without
// ever making the manager wait for it.
//
// The event thread only queues text (never blocks). A writer thread of its
// own writes it, in pieces of at most PIPE_BUF bytes and only after poll()
// says the descriptor can take them, so that even it never sits in a write
// it cannot leave. A backlog over `max_backlog` bytes is dropped and counted;
// once the reader catches up, one line says how much it missed:
//   pymanager: 1234 lines not shown: the output was not being read
// The descriptor itself is left as it is (blocking): it is often the
// terminal, shared with other programs.
#ifndef PYMANAGER_DETAIL_OUTPUT_WRITER_HPP
#define PYMANAGER_DETAIL_OUTPUT_WRITER_HPP

#include <limits.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "pymanager/detail/fd.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

class OutputWriter {
 public:
  explicit OutputWriter(int fd, std::size_t max_backlog = std::size_t{1} << 20) : fd_(fd), max_backlog_(max_backlog) {
    thread_ = std::thread([this] { run(); });
  }
  OutputWriter(const OutputWriter&) = delete;
  OutputWriter& operator=(const OutputWriter&) = delete;
  /// Writes what is queued for at most about a second more, then gives up.
  ~OutputWriter() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      stop_by_ = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    }
    changed_.notify_all();
    thread_.join();
  }

  /// Queues one or more whole lines; never blocks.
  void write(std::string text) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (backlog_ + text.size() > max_backlog_) {
        dropped_lines_ += static_cast<std::size_t>(std::max<std::ptrdiff_t>(1, std::count(text.begin(), text.end(), '\n')));
        return;
      }
      backlog_ += text.size();
      queue_.push_back(std::move(text));
    }
    changed_.notify_one();
  }

  /// Lines dropped so far because the reader did not keep up.
  std::size_t dropped_lines() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return dropped_total_ + dropped_lines_;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return stopping_ || !queue_.empty() || dropped_lines_ > 0; });
      if (queue_.empty() && dropped_lines_ > 0) {
        // The reader has caught up: say what it missed, where it missed it.
        queue_.push_back("pymanager: " + std::to_string(dropped_lines_) +
                         " lines not shown: the output was not being read\n");
        backlog_ += queue_.back().size();
        dropped_total_ += dropped_lines_;
        dropped_lines_ = 0;
      }
      if (queue_.empty()) return;  // stopping, and everything is written
      std::string text = std::move(queue_.front());
      queue_.pop_front();
      backlog_ -= text.size();
      lock.unlock();
      bool gave_up = !write_out(text);
      lock.lock();
      if (gave_up) {
        queue_.clear();
        backlog_ = 0;
        return;
      }
    }
  }

  /// Writes `text` in pieces the descriptor can take now. False once the
  /// writer is stopping and its last second has passed, or the descriptor
  /// is broken (EPIPE: nobody will ever read).
  bool write_out(const std::string& text) {
    std::size_t done = 0;
    while (done < text.size()) {
      struct pollfd p = {fd_, POLLOUT, 0};
      int ready = ::poll(&p, 1, 100);
      if (ready < 0 && errno != EINTR) return false;
      if (ready <= 0 || (p.revents & POLLOUT) == 0) {
        if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return false;
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_ && std::chrono::steady_clock::now() >= stop_by_) return false;
        continue;
      }
      // At most PIPE_BUF: POLLOUT on a pipe promises that much room, so this
      // write does not block.
      const std::size_t piece = std::min<std::size_t>(PIPE_BUF, text.size() - done);
      ssize_t n = ::write(fd_, text.data() + done, piece);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) return false;
      done += static_cast<std::size_t>(n);
    }
    return true;
  }

  const int fd_;
  const std::size_t max_backlog_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::string> queue_;
  std::size_t backlog_ = 0;
  std::size_t dropped_lines_ = 0;  ///< since the last notice
  std::size_t dropped_total_ = 0;
  bool stopping_ = false;
  std::chrono::steady_clock::time_point stop_by_{};
  std::thread thread_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_OUTPUT_WRITER_HPP
