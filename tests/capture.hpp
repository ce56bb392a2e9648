// What a Manager says, for tests that read it: its log lines (kept in
// memory) and its children's output (written to a pipe the test reads).
#ifndef PYMANAGER_TESTS_CAPTURE_HPP
#define PYMANAGER_TESTS_CAPTURE_HPP

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <mutex>
#include <stdexcept>
#include <string>

#include "pymanager/pymanager.hpp"
#include "tests/test_util.hpp"

namespace testutil {

/// Collects the manager's log lines and its children's output. Give
/// options() to the Manager; the Capture must outlive it.
class Capture {
 public:
  Capture() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("pipe2");
    read_fd_ = fds[0];
    write_fd_ = fds[1];
  }
  ~Capture() {
    ::close(read_fd_);
    ::close(write_fd_);
  }
  Capture(const Capture&) = delete;
  Capture& operator=(const Capture&) = delete;

  /// No color; the output goes to this pipe, the log lines to log().
  pymanager::ManagerOptions options() {
    pymanager::ManagerOptions o;
    o.output_fd = write_fd_;
    o.color = false;
    o.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mutex_);
      log_ += line + "\n";
    };
    return o;
  }

  /// Every log line so far, each ended by a newline.
  std::string log() {
    std::lock_guard<std::mutex> lock(mutex_);
    return log_;
  }

  /// Everything the children printed so far (with name prefixes). Never
  /// blocks: it reads what the pipe holds now.
  std::string output() {
    char buffer[65536];
    for (;;) {
      ssize_t n = ::read(read_fd_, buffer, sizeof buffer);
      if (n <= 0) break;
      output_.append(buffer, static_cast<std::size_t>(n));
    }
    return output_;
  }

  /// Waits (bounded) until output() contains `text`.
  bool wait_output(const std::string& text, std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
    return wait_until([&] { return output().find(text) != std::string::npos; }, timeout);
  }

 private:
  int read_fd_, write_fd_;
  std::mutex mutex_;
  std::string log_;
  std::string output_;
};

}  // namespace testutil

#endif  // PYMANAGER_TESTS_CAPTURE_HPP
