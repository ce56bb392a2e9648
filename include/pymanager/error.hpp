// pymanager: the one error family at the library boundary.
#ifndef PYMANAGER_ERROR_HPP
#define PYMANAGER_ERROR_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pymanager {
inline namespace v1 {

/// What went wrong, chosen by meaning so that the CLI can map it to an exit
/// code and the HTTP API to a status.
enum class ErrorKind {
  config_not_found,     ///< the config file does not exist (exit 1)
  config_unreadable,    ///< it exists but cannot be read (exit 2)
  config_not_json,      ///< it is not valid JSON (exit 3)
  config_no_processes,  ///< it declares no processes (exit 4)
  config_invalid,       ///< valid JSON, invalid pymanager config (exit 5)
  spawn_failed,         ///< a process could not be started (exit 5)
  verify_failed,        ///< a verifier did not pass (exit 5)
  not_found,            ///< no process with that id (HTTP 404)
  invalid_argument,     ///< a malformed id or request (HTTP 400)
  shutting_down,        ///< refused because shutdown has begun (HTTP 403)
  conflict,             ///< refused because the processes are still being launched (HTTP 409)
  system,               ///< a system call failed (exit 5)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

/// The exit code DESIGN.md assigns to each kind (compatible with the original).
inline int exit_code_for(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::config_not_found: return 1;
    case ErrorKind::config_unreadable: return 2;
    case ErrorKind::config_not_json: return 3;
    case ErrorKind::config_no_processes: return 4;
    default: return 5;
  }
}

/// `<context>: <strerror(err)>`, the shape of every system error message.
inline std::string errno_message(const std::string& context, int err) {
  return context + ": " + std::strerror(err);
}

[[noreturn]] inline void throw_system_error(const std::string& context, int err = errno) {
  throw Error(ErrorKind::system, errno_message(context, err));
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_ERROR_HPP
