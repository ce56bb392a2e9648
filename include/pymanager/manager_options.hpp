// pymanager: what a Manager is given (ManagerOptions), and the states it
// reports as a whole (ManagerState, with the original's strings).
#ifndef PYMANAGER_MANAGER_OPTIONS_HPP
#define PYMANAGER_MANAGER_OPTIONS_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <unistd.h>

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "pymanager/output.hpp"
#include "pymanager/process.hpp"

namespace pymanager {
inline namespace v1 {

/// The states reported by `GET /status`, with the original's strings.
enum class ManagerState { booting, parsing_modules, launching, running, shutdown, force_shutdown };

inline const char* to_string(ManagerState state) {
  switch (state) {
    case ManagerState::booting: return "booting";
    case ManagerState::parsing_modules: return "parsing modules";
    case ManagerState::launching: return "launching processes";
    case ManagerState::running: return "running";
    case ManagerState::shutdown: return "shutdown";
    case ManagerState::force_shutdown: return "force shutdown";
  }
  return "unknown";
}

struct ManagerOptions {
  /// Where the children's output lines go (prefixed with the process name).
  /// Default: standard output; -1: nowhere (on_output still gets them).
  /// Written without ever blocking: when nobody reads it, lines are dropped
  /// and counted ("N lines not shown, stdout is not being read").
  int output_fd = STDOUT_FILENO;
  /// Color the name prefixes. Default: when `output_fd` is a terminal.
  std::optional<bool> color;
  /// Receives the manager's own messages (one line, no newline), never with
  /// the Manager's lock held. Default: "pymanager: <message>" on standard
  /// error, written without blocking. It must be thread-safe, quick (it runs
  /// on the event thread too) and must not call back into the Manager.
  std::function<void(const std::string&)> log;
  /// Also log the life cycle: launches, verifications, signals sent, daemons.
  bool verbose = false;
  /// How many of each process's last output lines are kept for diagnosis.
  std::size_t output_lines_kept = 1000;
  /// Called on the event thread (without the Manager's lock held) whenever a
  /// process's main process exits, after every line it printed before was
  /// delivered; `expected` is false for an exit nobody asked for (not a stop,
  /// a shutdown or a one-shot step's verified exit).
  std::function<void(const ProcessInfo& process, bool expected)> on_exit;
  /// Receives every output line of every process, on the event thread,
  /// before any formatting (see output.hpp). Must not block.
  OutputSubscriber on_output;
  /// Extra `NAME=value` entries for every child's environment.
  std::vector<std::string> extra_environment;
  /// At most this many verifiers run at once during start().
  std::size_t verifier_threads = 32;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_MANAGER_OPTIONS_HPP
