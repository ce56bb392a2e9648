// pymanager: the Verifier base class, the context a verifier runs in, and the
// registry that maps `module.Class` names (as written in configs) to factories.
#ifndef PYMANAGER_VERIFIER_HPP
#define PYMANAGER_VERIFIER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {

using Clock = std::chrono::steady_clock;

/// Seconds as a Clock duration, clamped to [0, a week] (NaN counts as 0), so
/// that `now + seconds_to_duration(x)` never overflows.
inline Clock::duration seconds_to_duration(double seconds) {
  if (!(seconds > 0)) return Clock::duration::zero();
  if (seconds > detail::kMaxSeconds) seconds = detail::kMaxSeconds;
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

/// How a process ended: an exit code, or the signal that killed it.
struct ExitStatus {
  bool signaled = false;
  int value = 0;  ///< the exit code, or the signal number when `signaled`

  static ExitStatus from_wait_status(int status) {
    if (WIFSIGNALED(status)) return ExitStatus{true, WTERMSIG(status)};
    return ExitStatus{false, WEXITSTATUS(status)};
  }
  /// The original's (Python's) return code: the exit code, or minus the signal.
  int code() const { return signaled ? -value : value; }
  /// "exit code 2" or "signal 9 (Killed)".
  std::string describe() const {
    if (!signaled) return "exit code " + std::to_string(value);
    const char* name = ::strsignal(value);
    return "signal " + std::to_string(value) + (name ? std::string(" (") + name + ")" : std::string());
  }
  bool operator==(const ExitStatus& o) const { return signaled == o.signaled && value == o.value; }
};

/// Seconds as people write them: "30s", "0.5s".
inline std::string format_seconds(double seconds) {
  if (seconds == static_cast<double>(static_cast<long long>(seconds)) && seconds < 1e15) {
    return std::to_string(static_cast<long long>(seconds)) + "s";
  }
  return nlohmann::json(seconds).dump() + "s";
}

/// The message categories of the config's `messages` list.
enum class MessageCategory {
  verifier_fail,     ///< "verifier.fail": an attempt failed
  verifier_verbose,  ///< "verifier.verbose": everything a verifier has to say
};

/// Which of a process's streams a line came from.
enum class OutputStream { out, err };

inline const char* to_string(OutputStream stream) { return stream == OutputStream::out ? "stdout" : "stderr"; }

/// One line a process printed, as a verifier that reads output gets it.
struct SeenLine {
  OutputStream stream = OutputStream::out;
  std::string text;  ///< without its newline
};

/// A short command run on a verifier's behalf (a probe: `pg_isready`, a
/// health script). The keeper spawns it in a process group of its own, with
/// the manager's environment and its mark; whatever of it is left when it
/// ends (or at the deadline) is killed.
struct ProbeCommand {
  /// argv[0]: a path (relative to the base directory) or a name found in PATH.
  std::vector<std::string> argv;
  /// Relative to the base directory; default: the base directory.
  std::optional<std::string> working_directory;
  /// Added to the environment (replacing variables of the same name).
  std::vector<std::pair<std::string, std::string>> environment;
  /// At most this many bytes of its output (stdout and stderr) are kept.
  std::size_t output_limit = std::size_t{64} * 1024;
};

struct ProbeResult {
  /// Its exit; nullopt when it could not be started (`error`), or did not
  /// end by the deadline (`timed_out`: it was killed) or was cancelled.
  std::optional<ExitStatus> exit;
  bool timed_out = false;
  bool cancelled = false;  ///< shutdown began or the start-up failed meanwhile
  std::string output;      ///< stdout and stderr as they came, at most output_limit bytes
  bool truncated = false;  ///< more output than output_limit
  std::string error;       ///< why it could not be started (or run)
};

/// What a verifier sees of the world. Implemented by the Manager; every wait
/// ends early when shutdown begins.
class VerifyContext {
 public:
  virtual ~VerifyContext() = default;
  /// The process's name (its key under `processes`).
  virtual const std::string& process_name() const = 0;
  virtual int pid() const = 0;
  /// Sleeps until `until`; returns false early, as soon as shutdown begins or
  /// the process exits (if it had not exited already when the sleep began).
  virtual bool sleep_until(Clock::time_point until) = 0;
  /// Waits for the process to exit, until `until`; nullopt on timeout or shutdown.
  virtual std::optional<ExitStatus> wait_exit(Clock::time_point until) = 0;
  /// The exit status, once the process has exited.
  virtual std::optional<ExitStatus> exit_status() const = 0;
  /// True once shutdown has begun: stop and return a failure.
  virtual bool cancelled() const = 0;
  virtual void log(MessageCategory category, const std::string& message) = 0;
  /// Runs `command` to its end or until `deadline` (then kills it); ends
  /// early when the verifier is cancelled. Contexts that cannot run commands
  /// say so in the result's `error`.
  virtual ProbeResult run_probe(const ProbeCommand& command, Clock::time_point deadline) {
    (void)command;
    (void)deadline;
    ProbeResult result;
    result.error = "commands cannot be run from this verifier context";
    return result;
  }
  /// run_probe as the process itself would run `command`: in its working
  /// directory, with its environment (`environment_file` sourced first when
  /// it has one, then `options.environment`). `command.working_directory`
  /// and `command.environment` are ignored.
  virtual ProbeResult run_in_process_environment(const ProbeCommand& command, Clock::time_point deadline) {
    return run_probe(command, deadline);
  }
  /// The process's working directory, absolute ("" when unknown: the
  /// current directory).
  virtual std::string working_directory() const { return {}; }
  /// The config's `default_shell`, for commands given as one string.
  virtual std::string default_shell() const { return "/bin/sh"; }
  /// For a verifier whose reads_output() is true: the next line the process
  /// printed in this run, from its first byte and in order (stdout and
  /// stderr as they were read), whether or not its output is suppressed or
  /// redirected. nullopt at `until`, once the verifier is cancelled, or
  /// once the process has exited with a non-zero code or a signal and every
  /// line it printed was returned (after an exit with code 0 a daemon it
  /// left may still print: the wait goes on).
  virtual std::optional<SeenLine> next_line(Clock::time_point until) {
    sleep_until(until);
    return std::nullopt;
  }
  /// Lines the manager could not keep for next_line (the process printed
  /// faster than the verifier read, beyond a bounded backlog), so far.
  virtual std::size_t lines_missed() const { return 0; }
};

struct VerifyResult {
  bool passed = false;
  /// For a failure: what the verifier last saw ("connection refused", "status 503").
  std::string message;

  static VerifyResult ok(std::string message = {}) { return {true, std::move(message)}; }
  static VerifyResult failure(std::string message) { return {false, std::move(message)}; }
};

/// A check that a process reached its desired state. One instance serves
/// every run of its process (launch and each restart): `verify` must not keep
/// state between calls and may run on any thread.
class Verifier {
 public:
  virtual ~Verifier() = default;
  virtual VerifyResult verify(VerifyContext& context) const = 0;
  /// True for verifiers whose success is the process exiting (ExitedVerifier):
  /// the manager then does not fail the verifier early when the process exits,
  /// and does not report the exit as an unexpected death.
  virtual bool expects_exit() const { return false; }
  /// True for verifiers that read the process's output (VerifyContext::
  /// next_line): the manager then keeps every line of each run for them,
  /// from before the process is spawned.
  virtual bool reads_output() const { return false; }
};

/// Reads a verifier's `arguments` by name and type, with errors that name the
/// JSON path; `finish()` refuses every member that was not read (with a
/// "did you mean" for a near miss). For user-written verifier factories:
///   ArgumentReader reader(arguments, path);
///   std::string file = reader.required_string("path");
///   double timeout = reader.seconds("timeout").value_or(30);
///   reader.finish();
using ArgumentReader = detail::ObjectReader<nlohmann::json>;

/// Makes a verifier from its `arguments` object; throws a config error naming
/// `path` (e.g. `processes.web.verifier.arguments`) when they are invalid.
using VerifierFactory =
    std::function<std::shared_ptr<const Verifier>(const nlohmann::json& arguments, const std::string& path)>;

/// Maps `module.Class` names to factories. Config files list the modules
/// they use under `modules`; a type must be both listed there and registered here.
class VerifierRegistry {
 public:
  void add(const std::string& name, VerifierFactory factory) { factories_[name] = std::move(factory); }
  bool contains(const std::string& name) const { return factories_.count(name) != 0; }
  const VerifierFactory* find(const std::string& name) const {
    auto it = factories_.find(name);
    return it == factories_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& entry : factories_) out.push_back(entry.first);
    return out;
  }

 private:
  std::map<std::string, VerifierFactory> factories_;
};

/// Calls `attempt` until it passes, `timeout` seconds pass, the process exits
/// or shutdown begins. The pause between attempts starts at 5 ms and doubles
/// up to `interval` seconds, so a fast service is seen at once and a slow one
/// is not hammered. `attempt` returns the result of one try.
template <class Attempt>
VerifyResult retry_until(VerifyContext& context, double timeout, double interval, Attempt attempt) {
  const auto start = Clock::now();
  const auto deadline = start + seconds_to_duration(timeout);
  const auto max_pause = seconds_to_duration(interval);
  auto pause = std::min<Clock::duration>(std::chrono::milliseconds(5), max_pause);
  VerifyResult last = VerifyResult::failure("no attempt made");
  for (int attempt_number = 1;; ++attempt_number) {
    if (context.cancelled()) return VerifyResult::failure("shutdown began while verifying (" + last.message + ")");
    // No attempt starts at the deadline: its answer would only be a timeout
    // of its own, hiding what the previous attempt saw.
    if (attempt_number > 1 && Clock::now() >= deadline) {
      return VerifyResult::failure("timed out after " + format_seconds(timeout) + " (last attempt: " + last.message + ")");
    }
    last = attempt();
    if (last.passed) {
      context.log(MessageCategory::verifier_verbose, "attempt " + std::to_string(attempt_number) + " passed");
      return last;
    }
    context.log(MessageCategory::verifier_fail,
                "attempt " + std::to_string(attempt_number) + " failed: " + last.message);
    // A failed process fails its verifier at once. An exit with code 0 may
    // be a launcher that daemonized (pg_ctl start, redis --daemonize): keep
    // trying until the timeout.
    auto exited = context.exit_status();
    if (exited && (exited->signaled || exited->value != 0)) {
      return VerifyResult::failure("process exited with " + exited->describe() + " while verifying (last attempt: " +
                                   last.message + ")");
    }
    auto now = Clock::now();
    if (now >= deadline) {
      return VerifyResult::failure("timed out after " + format_seconds(timeout) + " (last attempt: " + last.message +
                                   ")" + (exited ? "; the process had exited with exit code 0" : ""));
    }
    // sleep_until returns early on exit or shutdown; the checks above then report it.
    context.sleep_until(std::min(now + pause, deadline));
    pause = std::min(pause * 2, max_pause);
  }
}

/// How often a readiness check is tried by poll_until: every `fast_pause`
/// during the first `fast_period` of waiting (a refused connection on
/// loopback, a stat or a look at a queue cost microseconds, so readiness is
/// seen within about 2 ms for well under 5% of a core), then with a pause
/// that doubles up to `interval`.
struct PollSchedule {
  Clock::duration fast_pause = std::chrono::milliseconds(1);
  /// The pause during `fast_period` doubles from fast_pause up to this
  /// (zero: it stays fast_pause). For checks that cost more than a
  /// connect, such as running a command.
  Clock::duration fast_max = Clock::duration::zero();
  Clock::duration fast_period = std::chrono::seconds(10);
  Clock::duration interval = std::chrono::seconds(1);

  /// The schedule of a verifier whose longest pause is `interval` seconds.
  static PollSchedule with_interval(double interval) {
    PollSchedule schedule;
    schedule.interval = std::max(seconds_to_duration(interval), schedule.fast_pause);
    return schedule;
  }
};

/// Like retry_until, on a PollSchedule: calls `attempt` until it passes,
/// `timeout` seconds pass, the process exits with a non-zero code or a
/// signal (an exit with code 0 may be a launcher that daemonized: trying
/// goes on), or shutdown begins. `attempt(pause)` gets the pause the
/// schedule would take next and returns the result of one try; a failure
/// whose pause should be longer (a service that answered "not yet") may
/// sleep by itself through context.sleep_until. Failed attempts are logged
/// (verifier.fail) when what they saw changes, and at most once a second
/// otherwise.
template <class Attempt>
VerifyResult poll_until(VerifyContext& context, double timeout, const PollSchedule& schedule, Attempt attempt) {
  const auto start = Clock::now();
  const auto deadline = start + seconds_to_duration(timeout);
  auto pause = schedule.fast_pause;
  VerifyResult last = VerifyResult::failure("no attempt made");
  std::string logged;
  auto next_log = start;
  for (long attempt_number = 1;; ++attempt_number) {
    if (context.cancelled()) return VerifyResult::failure("shutdown began while verifying (" + last.message + ")");
    auto now = Clock::now();
    if (attempt_number > 1 && now >= deadline) {
      return VerifyResult::failure("timed out after " + format_seconds(timeout) + " (last attempt: " + last.message + ")" +
                                   (context.exit_status() ? "; the process had exited with exit code 0" : ""));
    }
    const bool fast = now - start < schedule.fast_period;
    last = attempt(pause);
    if (last.passed) {
      context.log(MessageCategory::verifier_verbose, "attempt " + std::to_string(attempt_number) + " passed");
      return last;
    }
    now = Clock::now();
    if (last.message != logged || now >= next_log) {
      context.log(MessageCategory::verifier_fail, "attempt " + std::to_string(attempt_number) + " failed: " + last.message);
      logged = last.message;
      next_log = now + std::chrono::seconds(1);
    }
    auto exited = context.exit_status();
    if (exited && (exited->signaled || exited->value != 0)) {
      return VerifyResult::failure("process exited with " + exited->describe() + " while verifying (last attempt: " +
                                   last.message + ")");
    }
    if (now >= deadline) continue;  // reported above, with the exit if any
    // sleep_until returns early on exit or shutdown; the checks above then report it.
    context.sleep_until(std::min(now + pause, deadline));
    // After the fast period, the pause doubles up to `interval` (never
    // shorter than it was).
    const auto limit = fast ? std::max(schedule.fast_max, schedule.fast_pause) : std::max(schedule.interval, pause);
    pause = std::min(pause * 2, limit);
  }
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIER_HPP
