// pymanager: small POSIX helpers: an owning file descriptor, EINTR retries.
#ifndef PYMANAGER_DETAIL_FD_HPP
#define PYMANAGER_DETAIL_FD_HPP

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>

#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

/// Retries a system call that failed with EINTR. Never use it for close():
/// on Linux the descriptor is gone even when close reports EINTR.
template <class F>
auto retry_eintr(F call) -> decltype(call()) {
  decltype(call()) result;
  do {
    result = call();
  } while (result == -1 && errno == EINTR);
  return result;
}

/// Owns one file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

/// A pipe whose both ends are close-on-exec from creation (pipe2, so that a
/// spawn on another thread cannot inherit them).
struct Pipe {
  UniqueFd read;
  UniqueFd write;
};

inline Pipe make_pipe(int extra_flags = 0) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | extra_flags) != 0) throw_system_error("pipe2");
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

/// Writes all of `size` bytes; false on error (EPIPE included).
inline bool write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = retry_eintr([&] { return ::write(fd, data, size); });
    if (n < 0) return false;
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

inline bool write_all(int fd, const std::string& text) { return write_all(fd, text.data(), text.size()); }

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_FD_HPP
