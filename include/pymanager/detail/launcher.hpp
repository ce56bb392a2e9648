// pymanager: the launcher. start-up (run_startup) asks the launch scheduler
// what may start, launches it (pipes, redirect file, a spawn request queued
// on the process core), hands each spawned process with a verifier to the
// bounded verifier pool, and stops at the first failure the scheduler
// reports: nothing new starts, the verifiers still running are cancelled
// (their waits end at once) and joined. launch_and_verify_now serves
// start/restart of one process after the start-up.
#ifndef PYMANAGER_DETAIL_LAUNCHER_HPP
#define PYMANAGER_DETAIL_LAUNCHER_HPP

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/line_feed.hpp"
#include "pymanager/detail/manager_shared.hpp"
#include "pymanager/detail/probe_runner.hpp"
#include "pymanager/error.hpp"
#include "pymanager/launch_scheduler.hpp"
#include "pymanager/process.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

/// Spawns in flight at once: the keeper serves them one by one, and each
/// holds four descriptors until it is sent.
inline constexpr std::size_t kMaxSpawnsInFlight = 256;

/// How many descriptors the processes need: the pipe ends kept per process
/// (two, or one when stdout and stderr share a pipe; one more for a
/// redirect_output file), four for each spawn in flight, and room for the
/// host's own.
inline std::size_t descriptors_needed(const std::vector<ProcessSpec>& specs, bool separate_streams) {
  std::size_t needed = 64 + 4 * std::min<std::size_t>(specs.size(), kMaxSpawnsInFlight);
  for (const auto& spec : specs) needed += (separate_streams ? 2 : 1) + (spec.redirect_output ? 1 : 0);
  return needed;
}

/// What a verifier sees: every wait ends early when shutdown begins or the
/// start-up failed elsewhere.
class VerifierContext : public VerifyContext {
 public:
  VerifierContext(ManagerShared& s, std::size_t index) : s_(s), index_(index) {}
  const std::string& process_name() const override { return s_.table[index_].spec.name; }
  int pid() const override {
    std::lock_guard<std::mutex> lock(s_.mutex);
    return s_.table[index_].pid;
  }
  bool sleep_until(Clock::time_point until) override {
    std::unique_lock<std::mutex> lock(s_.mutex);
    const bool had_exited = s_.table[index_].exit.has_value();
    return !s_.changed.wait_until(lock, until, [&] {
      return cancelled_locked() || (!had_exited && s_.table[index_].exit.has_value());
    });
  }
  std::optional<ExitStatus> wait_exit(Clock::time_point until) override {
    std::unique_lock<std::mutex> lock(s_.mutex);
    s_.changed.wait_until(lock, until, [&] { return cancelled_locked() || s_.table[index_].exit.has_value(); });
    return s_.table[index_].exit;
  }
  std::optional<ExitStatus> exit_status() const override {
    std::lock_guard<std::mutex> lock(s_.mutex);
    return s_.table[index_].exit;
  }
  bool cancelled() const override {
    std::lock_guard<std::mutex> lock(s_.mutex);
    return cancelled_locked();
  }
  ProbeResult run_probe(const ProbeCommand& command, Clock::time_point deadline) override {
    return ProbeRunner(s_).run(command, deadline, [this] { return cancelled_locked(); });
  }
  ProbeResult run_in_process_environment(const ProbeCommand& command, Clock::time_point deadline) override {
    return ProbeRunner(s_).run(command, deadline, [this] { return cancelled_locked(); }, &s_.table[index_].spec);
  }
  std::string working_directory() const override {
    std::lock_guard<std::mutex> lock(s_.mutex);
    return s_.table[index_].working_directory;
  }
  std::string default_shell() const override { return s_.config.default_shell; }
  std::optional<SeenLine> next_line(Clock::time_point until) override {
    std::unique_lock<std::mutex> lock(s_.mutex);
    const ProcRecord& p = s_.table[index_];
    const std::shared_ptr<LineFeed> feed = p.feed;
    auto failed_exit = [&] { return p.exit && (p.exit->signaled || p.exit->value != 0); };
    s_.changed.wait_until(lock, until, [&] {
      return cancelled_locked() || (feed && !feed->empty()) || failed_exit();
    });
    if (feed && !feed->empty() && !cancelled_locked()) return feed->pop();
    return std::nullopt;
  }
  std::size_t lines_missed() const override {
    std::lock_guard<std::mutex> lock(s_.mutex);
    return s_.table[index_].feed ? s_.table[index_].feed->missed() : 0;
  }
  void log(MessageCategory category, const std::string& message) override {
    const auto& messages = s_.config.messages;
    bool show = category == MessageCategory::verifier_fail ? messages.verifier_fail : messages.verifier_verbose;
    if (show) s_.log("verifier of '" + process_name() + "': " + message);
  }

 private:
  bool cancelled_locked() const {
    return s_.stops.shutdown_begun() || (s_.scheduler.failed() && s_.table[index_].verify_in_pool);
  }
  ManagerShared& s_;
  std::size_t index_;
};

class Launcher {
 public:
  explicit Launcher(ManagerShared& s) : s_(s) {}

  /// The whole start-up; returns its first failure (the scheduler's, or a
  /// launch that could not even be asked for), or nothing. The verifiers
  /// are all joined when it returns.
  std::optional<Error> run_startup() {
    std::optional<Error> failure;
    try {
      check_descriptor_budget();
    } catch (const Error& e) {
      failure = e;
    }
    VerifierPool pool(s_.options.verifier_threads);
    std::unique_lock<std::mutex> lock(s_.mutex);
    auto next_check = Clock::now() + std::chrono::seconds(1);
    while (!failure && !s_.stops.shutdown_begun() && !s_.scheduler.failed() && !s_.keeper_gone &&
           !s_.scheduler.all_verified()) {
      auto batch = s_.scheduler.take_launchable(kMaxSpawnsInFlight - std::min(kMaxSpawnsInFlight, s_.spawns_in_flight));
      if (!batch.empty()) {
        for (std::size_t i : batch) s_.table[i].verify_in_pool = true;
        lock.unlock();
        failure = launch_all(batch);
        lock.lock();
        continue;
      }
      try {
        for (std::size_t i : s_.to_verify) pool.submit([this, i] { run_verifier(i); });
      } catch (const std::system_error& e) {
        failure = Error(ErrorKind::system, std::string("cannot start a verifier thread: ") + e.what());
      }
      s_.to_verify.clear();
      const auto now = Clock::now();
      if (!failure && now >= next_check) {
        next_check = now + std::chrono::seconds(1);
        failure = unanswered_spawn_locked(now);
      }
      if (failure) break;
      s_.changed.wait_for(lock, std::chrono::milliseconds(500), [&] {
        return s_.scheduler.failed() || s_.stops.shutdown_begun() || s_.keeper_gone || !s_.to_verify.empty() ||
               s_.scheduler.all_verified() || (s_.scheduler.has_launchable() && s_.spawns_in_flight < kMaxSpawnsInFlight);
      });
    }
    // Cancel the verifiers still running (their waits end at once), then join them.
    if (failure) s_.scheduler.report_failure(failure->kind(), failure->what());
    const bool cancel = !s_.scheduler.failed() && (s_.stops.shutdown_begun() || s_.keeper_gone);
    if (cancel) s_.scheduler.report_failure(ErrorKind::shutting_down, "the start-up was cancelled");
    lock.unlock();
    s_.changed.notify_all();
    pool.join();
    lock.lock();
    for (std::size_t i = 0; i < s_.table.size(); ++i) s_.table[i].verify_in_pool = false;
    const auto& first = s_.scheduler.first_failure();
    if (first && first->kind() != ErrorKind::shutting_down) return first;
    if (s_.keeper_lost) return Error(ErrorKind::system, "the keeper process was lost during start-up");
    if (first || s_.stops.shutdown_begun()) return Error(ErrorKind::shutting_down, "shutdown requested during start-up");
    return std::nullopt;
  }

  /// start/restart of one process: launch, wait for the spawn, verify.
  void launch_and_verify_now(std::size_t i) {
    begin_launch(i);
    {
      std::unique_lock<std::mutex> lock(s_.mutex);
      wait_spawned_locked(lock, i);
      if (s_.table[i].spec.verifiers.empty()) return;
    }
    const VerifierSpec* failed = nullptr;
    VerifyResult result = call_verifier(i, &failed);
    std::string message = result.passed ? std::string() : failure_message(i, result, *failed);
    bool begun;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      after_verified_locked(i, result.passed);
      begun = s_.stops.shutdown_begun();
    }
    s_.changed.notify_all();
    if (result.passed) return;
    if (begun) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    throw Error(ErrorKind::verify_failed, message);
  }

 private:
  std::optional<Error> launch_all(const std::vector<std::size_t>& batch) {
    for (std::size_t i : batch) {
      try {
        begin_launch(i);
      } catch (const Error& e) {
        return e;
      }
    }
    return std::nullopt;
  }

  /// The keeper answers a spawn within milliseconds; 30 s covers a machine
  /// that is swapping.
  std::optional<Error> unanswered_spawn_locked(Clock::time_point now) const {
    for (std::size_t i = 0; i < s_.table.size(); ++i) {
      const ProcRecord& p = s_.table[i];
      if (p.spawn_pending && p.verify_in_pool && now - p.spawn_asked > std::chrono::seconds(30)) {
        return Error(ErrorKind::spawn_failed,
                     "cannot start process " + quote(p.spec.name) + ": the keeper did not answer within 30s");
      }
    }
    return std::nullopt;
  }

  /// Before anything is launched: enough descriptors for every process, or a
  /// clear error. When only a pipe per process fits, stdout and stderr share it.
  void check_descriptor_budget() {
    struct rlimit limit {};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return;
    const auto& specs = s_.config.processes;
    const std::string limits = std::to_string(limit.rlim_cur) + " (hard limit " +
                               (limit.rlim_max == RLIM_INFINITY ? std::string("unlimited") : std::to_string(limit.rlim_max)) +
                               "; raise it with ulimit -n)";
    const std::size_t separate = descriptors_needed(specs, true), shared = descriptors_needed(specs, false);
    if (separate <= limit.rlim_cur) return;
    if (shared > limit.rlim_cur) {
      throw Error(ErrorKind::spawn_failed, "cannot start " + std::to_string(specs.size()) + " processes: they need about " +
                                               std::to_string(shared) + " file descriptors, but the limit is " + limits);
    }
    s_.merge_streams = true;
    s_.log("warning: " + std::to_string(specs.size()) + " processes need about " + std::to_string(separate) +
           " file descriptors to read stdout and stderr apart, but the limit is " + limits +
           ": each process's stderr shares its stdout's pipe, and its lines count as stdout");
  }

  void begin_launch(std::size_t i) {
    ProcRecord& p = s_.table[i];
    LaunchPlan plan = make_launch_plan(p.spec, s_.config, s_.options.extra_environment);
    // The mark by which the keeper attributes daemons, and by which the
    // manager finds what is left if the keeper is ever lost.
    const std::string marker = owner_marker(s_.token);
    plan.envp.erase(std::remove_if(plan.envp.begin(), plan.envp.end(),
                                   [](const std::string& e) { return e.rfind("PYMANAGER_OWNER=", 0) == 0; }),
                    plan.envp.end());
    plan.envp.push_back(marker + std::to_string(i));
    Pipe pipes[2];
    const int streams = s_.merge_streams ? 1 : 2;
    try {
      for (int k = 0; k < streams; ++k) pipes[k] = make_pipe(O_NONBLOCK);
    } catch (const Error& e) {
      struct rlimit limit {};
      ::getrlimit(RLIMIT_NOFILE, &limit);
      throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) + ": " + e.what() +
                                               (errno == EMFILE ? " (the limit is " + std::to_string(limit.rlim_cur) +
                                                                      " file descriptors; raise it with ulimit -n)"
                                                                : std::string()));
    }
    // The write ends block: a child must never see EAGAIN on its stdout.
    for (int k = 0; k < streams; ++k) ::fcntl(pipes[k].write.get(), F_SETFL, 0);
    int launches;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      launches = p.launches;
    }
    std::optional<std::string> redirect;
    if (p.spec.redirect_output) redirect = join_dir(s_.config.base_directory, *p.spec.redirect_output);
    auto output = s_.output.open_run(i, redirect, launches == 0);
    if (p.spec.reads_output()) output->feed = std::make_shared<LineFeed>();
    CoreRequest request;
    try {
      request = ProcessCore::spawn_request(static_cast<std::uint32_t>(i), plan, std::move(pipes[0].write),
                                           std::move(pipes[1].write));
    } catch (const Error& e) {
      throw Error(e.kind(), "cannot start process " + quote(p.spec.name) + ": " + e.what());
    }
    Effects fx;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      if (s_.stops.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun");
      // Nothing new starts once the start-up failed.
      if (s_.scheduler.failed() && p.verify_in_pool) throw Error(ErrorKind::shutting_down, "the start-up failed");
      if (s_.keeper_gone) {
        throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) + ": the keeper process is gone");
      }
      s_.table.set_state(i, ProcessState::starting);
      p.spawn_pending = true;
      p.spawn_errno = 0;
      p.exit.reset();
      p.exit_expected = p.spec.expects_exit();
      // The lines of this run, from its first byte, for the verifiers that read them.
      if (p.feed) p.feed->close();
      p.feed = output->feed;
      p.stop.reset();
      p.killed = false;
      p.abandoned = false;
      p.failed = false;
      p.working_directory = plan.working_directory;
      p.spawn_asked = Clock::now();
      ++s_.spawns_in_flight;
      s_.stops.update_quiet(i, fx);
      // Watched before the spawn is sent, so that the output is read before
      // the exit is recorded.
      s_.core->watch_output(static_cast<std::uint32_t>(i), std::move(pipes[0].read), std::move(pipes[1].read), output);
      s_.core->submit(std::move(request));
    }
    if (s_.options.verbose) s_.log("launching " + quote(p.spec.name) + ": " + describe_command(p.spec));
    s_.run(fx);
  }

  void wait_spawned_locked(std::unique_lock<std::mutex>& lock, std::size_t i) {
    ProcRecord& p = s_.table[i];
    // The keeper answers within milliseconds; 30 s covers a machine that is
    // swapping. Past that the launch counts as failed.
    bool answered = s_.changed.wait_for(lock, std::chrono::seconds(30), [&] { return !p.spawn_pending || s_.keeper_gone; });
    if (!answered || p.spawn_pending) {
      throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) +
                                               (s_.keeper_gone ? ": the keeper process is gone"
                                                               : ": the keeper did not answer within 30s"));
    }
    if (p.state == ProcessState::failed) throw Error(ErrorKind::spawn_failed, spawn_failure_message(p));
  }

  /// On a pool thread during start-up.
  void run_verifier(std::size_t i) {
    const VerifierSpec* failed = nullptr;
    VerifyResult result = call_verifier(i, &failed);
    std::string message = result.passed ? std::string() : failure_message(i, result, *failed);
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      const bool cancelled = s_.stops.shutdown_begun() || s_.scheduler.failed();
      after_verified_locked(i, result.passed);
      if (!result.passed && !cancelled) s_.scheduler.report_failure(ErrorKind::verify_failed, message);
    }
    s_.changed.notify_all();
  }

  /// Every verifier of process i in turn, until one fails: the result, and
  /// the one that failed.
  VerifyResult call_verifier(std::size_t i, const VerifierSpec** failed = nullptr) {
    const ProcessSpec& spec = s_.table[i].spec;
    VerifierContext context(s_, i);
    VerifyResult result = VerifyResult::ok();
    for (const VerifierSpec& verifier : spec.verifiers) {
      try {
        result = verifier.verifier->verify(context);
      } catch (const std::exception& e) {
        // A user-written verifier's exception is its failure, not the end of
        // the manager.
        result = VerifyResult::failure(std::string("the verifier threw: ") + e.what());
      } catch (...) {
        result = VerifyResult::failure("the verifier threw");
      }
      if (!result.passed) {
        if (failed != nullptr) *failed = &verifier;
        return result;
      }
      if (s_.options.verbose || s_.config.messages.verifier_verbose) {
        s_.log(quote(spec.name) + " verified by " + verifier.type +
               (spec.verifiers.size() > 1 ? " (" + verifier.key + ")" : std::string()) +
               (result.message.empty() ? "" : ": " + result.message));
      }
    }
    return result;
  }

  std::string failure_message(std::size_t i, const VerifyResult& result, const VerifierSpec& verifier) const {
    const ProcessSpec& spec = s_.table[i].spec;
    std::string message = "process " + quote(spec.name) + ": verifier " + verifier.type +
                          (spec.verifiers.size() > 1 ? " (" + verifier.key + ")" : std::string()) +
                          " failed: " + result.message;
    auto lines = s_.output.tail(i, 10);
    if (!lines.empty()) {
      message += "\nlast output of " + quote(spec.name) + ":";
      for (const auto& line : lines) message += "\n  " + line;
    }
    return message;
  }

  void after_verified_locked(std::size_t i, bool passed) {
    ProcRecord& p = s_.table[i];
    // The verifiers are done with this run's lines.
    if (p.feed) p.feed->close();
    p.feed.reset();
    if (p.state != ProcessState::verifying) return;  // stopped meanwhile
    if (!passed) {
      // A verifier cancelled by the shutdown or another's failure did not fail.
      const bool cancelled = s_.stops.shutdown_begun() || (s_.scheduler.failed() && p.verify_in_pool);
      if (!cancelled) {
        s_.table.set_state(i, ProcessState::failed);
        p.failed = true;
      }
      return;
    }
    if (p.leader_alive) {
      s_.table.set_state(i, ProcessState::ready);
    } else {
      s_.table.set_state(i, p.daemons.empty() ? ProcessState::exited : ProcessState::daemonized);
    }
    s_.scheduler.mark_verified(i);
  }

  ManagerShared& s_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_LAUNCHER_HPP
