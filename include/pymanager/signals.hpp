// pymanager: signal names and numbers, as a config writes them
// (`"stop_signal": "SIGINT"`, `"INT"` or `2`) and as messages show them.
#ifndef PYMANAGER_SIGNALS_HPP
#define PYMANAGER_SIGNALS_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <signal.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace pymanager {
inline namespace v1 {

namespace detail {

struct SignalNameEntry {
  const char* name;  ///< without the SIG prefix
  int number;
};

/// The standard Linux signals by name, without the SIG prefix. Where two
/// names share a number (ABRT/IOT, IO/POLL, CHLD/CLD), the first one is the
/// name signal_name() shows; the others are accepted too.
inline constexpr SignalNameEntry kSignalTable[] = {
    {"HUP", SIGHUP},     {"INT", SIGINT},       {"QUIT", SIGQUIT},   {"ILL", SIGILL},   {"TRAP", SIGTRAP},
    {"ABRT", SIGABRT},   {"IOT", SIGIOT},       {"BUS", SIGBUS},     {"FPE", SIGFPE},   {"KILL", SIGKILL},
    {"USR1", SIGUSR1},   {"SEGV", SIGSEGV},     {"USR2", SIGUSR2},   {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},
    {"TERM", SIGTERM},
#ifdef SIGSTKFLT
    {"STKFLT", SIGSTKFLT},
#endif
    {"CHLD", SIGCHLD},   {"CLD", SIGCHLD},      {"CONT", SIGCONT},   {"STOP", SIGSTOP}, {"TSTP", SIGTSTP},
    {"TTIN", SIGTTIN},   {"TTOU", SIGTTOU},     {"URG", SIGURG},     {"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ},
    {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF},   {"WINCH", SIGWINCH}, {"IO", SIGIO},
#ifdef SIGPOLL
    {"POLL", SIGPOLL},
#endif
#ifdef SIGPWR
    {"PWR", SIGPWR},
#endif
    {"SYS", SIGSYS},
};

}  // namespace detail

/// The highest signal number a config may give (SIGRTMAX: 64 on Linux).
inline int max_signal_number() { return SIGRTMAX; }

/// The number of a signal given by name: "SIGINT" or "INT" (upper case, as
/// kill(1) writes them). nullopt for a name that is not a standard Linux
/// signal (real-time signals are given by number).
inline std::optional<int> signal_from_name(const std::string& name) {
  std::string bare = name.compare(0, 3, "SIG") == 0 ? name.substr(3) : name;
  for (const auto& entry : detail::kSignalTable) {
    if (bare == entry.name) return entry.number;
  }
  return std::nullopt;
}

/// "SIGINT" for 2; "signal 40" for a number without a standard name.
inline std::string signal_name(int number) {
  for (const auto& entry : detail::kSignalTable) {
    if (entry.number == number) return std::string("SIG") + entry.name;
  }
  return "signal " + std::to_string(number);
}

/// Every accepted name, with the SIG prefix or without it, for suggestions.
inline std::vector<std::string> signal_names(bool with_prefix) {
  std::vector<std::string> out;
  for (const auto& entry : detail::kSignalTable) out.push_back((with_prefix ? "SIG" : "") + std::string(entry.name));
  return out;
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_SIGNALS_HPP
