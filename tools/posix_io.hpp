// The binary's own small POSIX helpers (the library keeps its plumbing in
// pymanager/detail/, which is not for programs that use it).
#ifndef PYMANAGER_TOOLS_POSIX_IO_HPP
#define PYMANAGER_TOOLS_POSIX_IO_HPP

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string>
#include <utility>

namespace pymanager_tool {

/// Closes a file descriptor when it goes out of scope.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_;
};

/// read(2), again when a signal interrupted it.
inline ssize_t read_some(int fd, void* buffer, std::size_t size) {
  ssize_t n;
  do {
    n = ::read(fd, buffer, size);
  } while (n < 0 && errno == EINTR);
  return n;
}

/// poll(2) without a timeout, again when a signal interrupted it.
inline int poll_forever(struct pollfd* fds, nfds_t count) {
  int ready;
  do {
    ready = ::poll(fds, count, -1);
  } while (ready < 0 && errno == EINTR);
  return ready;
}

/// Writes all of `text`; false (errno set) when a write fails, EPIPE included.
inline bool write_all(int fd, const std::string& text) {
  const char* data = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    ssize_t n = ::write(fd, data, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    data += n;
    left -= static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace pymanager_tool

#endif  // PYMANAGER_TOOLS_POSIX_IO_HPP
