// pymanager: the stop controller carries out stop plans (stop_plan.hpp) and
// the shutdown's order. One runner serves shutdown, stop, restart, kill and
// the API: a plan's steps are taken as they fall due (signals to the group
// and the daemons, queued on the process core, never sent under the lock),
// and a process still alive after its whole plan is given up on, so that
// nothing waits for ever. In a shutdown a process gets its stop signal only
// once everything that depends on it is quiet (nothing of it alive).
//
// Plain data and logic: the Manager's parts call it under the Manager's
// lock; what is to be logged comes back in Effects.
#ifndef PYMANAGER_DETAIL_STOP_CONTROLLER_HPP
#define PYMANAGER_DETAIL_STOP_CONTROLLER_HPP

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "pymanager/config.hpp"
#include "pymanager/detail/owner_mark.hpp"
#include "pymanager/detail/process_core.hpp"
#include "pymanager/detail/process_table.hpp"
#include "pymanager/launch_scheduler.hpp"
#include "pymanager/signals.hpp"
#include "pymanager/stop_plan.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

class StopController {
 public:
  StopController(ProcessTable& table, const LaunchScheduler& graph, const Config& config, bool verbose)
      : table_(table), graph_(graph), config_(config), verbose_(verbose) {}
  /// The core the signals are queued on (set once, before any stop).
  void attach(ProcessCore& core) { core_ = &core; }

  bool shutdown_begun() const { return shutdown_begun_; }
  /// Every process is quiet after the shutdown began.
  bool finished() const { return finished_; }
  /// SIGKILL was needed in the shutdown (or it was asked for).
  bool forced() const { return forced_; }

  /// What a stop is for: the grace a process gets depends on it, and on
  /// nothing else.
  enum class Purpose {
    shutdown,   ///< the whole manager ends
    operation,  ///< one process is stopped or restarted (library, API, Services)
  };

  /// The one place a process's graceful time is chosen: its own
  /// `options.graceful_time`, else the top-level `graceful_time` in a
  /// shutdown and `restart_graceful_time` for a stop or restart.
  double grace(std::size_t i, Purpose purpose) const {
    const ProcessSpec& spec = table_[i].spec;
    return spec.graceful_time.value_or(purpose == Purpose::shutdown ? config_.graceful_time
                                                                    : config_.restart_graceful_time);
  }

  /// Process i's plan: its stop signal, then SIGKILL after `grace` seconds
  /// (when given, as a caller of stop_process may) or grace(i, purpose).
  StopPlan plan(std::size_t i, Purpose purpose, std::optional<double> given = std::nullopt) const {
    return StopPlan::graceful(table_[i].spec.stop_signal, given.value_or(grace(i, purpose)));
  }
  StopPlan shutdown_plan(std::size_t i) const { return plan(i, Purpose::shutdown); }

  /// The longest a shutdown can take: each plan, one after the other along
  /// the longest dependency chain, and a little slack.
  Clock::duration shutdown_bound() const {
    Clock::duration longest{};
    for (std::size_t i = 0; i < table_.size(); ++i) longest = std::max(longest, shutdown_plan(i).bound());
    const auto chain = static_cast<int>(std::max<std::size_t>(1, graph_.chain_length()));
    return (longest + std::chrono::seconds(1)) * chain + std::chrono::seconds(2);
  }

  /// Starts carrying out `plan` for process i (or replaces a plan under way).
  void begin(std::size_t i, StopPlan plan, Effects& fx) {
    ProcRecord& p = table_[i];
    const auto now = Clock::now();
    p.exit_expected = true;
    if (p.quiet) {
      // Nothing to stop: one that never started is stopped now; an exited
      // or failed one keeps saying how it ended.
      if (p.state == ProcessState::waiting || p.state == ProcessState::stopping) table_.set_state(i, ProcessState::stopped);
      return;
    }
    if (p.stop) {
      p.stop->replace(std::move(plan), now);
    } else {
      p.stop.emplace(std::move(plan), now);
    }
    if (p.state != ProcessState::stopping && !p.spawn_pending) table_.set_state(i, ProcessState::stopping);
    advance(i, now, fx);
  }

  /// Begins the shutdown (once), or carries it on: every process whose
  /// dependents are quiet gets its plan; `force`: SIGKILL to all now.
  void begin_shutdown(bool force, Effects& fx) {
    if (!shutdown_begun_) {
      shutdown_begun_ = true;
      next_report_ = Clock::now() + std::chrono::seconds(2);
      if (verbose_) fx.logs.push_back("shutting down");
      for (std::size_t i = 0; i < table_.size(); ++i) {
        if (table_[i].state == ProcessState::waiting) table_.set_state(i, ProcessState::stopped);
      }
    }
    if (force) forced_ = true;
    for (std::size_t i = 0; i < table_.size(); ++i) {
      ProcRecord& p = table_[i];
      if (force) {
        if (!p.stop || !p.stop->killing()) begin(i, StopPlan::kill_now(), fx);
      } else if (!p.stop && dependents_quiet(i)) {
        begin(i, shutdown_plan(i), fx);
      }
    }
    finish_if_quiet(fx);
  }

  /// Recomputes whether process i is quiet, and acts when it has become so.
  void update_quiet(std::size_t i, Effects& fx) {
    if (table_.update_quiet(i)) on_quiet(i, fx);
  }

  /// Process i was spawned: a stop asked for while its spawn was in flight
  /// is carried out now, as is the shutdown.
  void on_spawned(std::size_t i, Effects& fx) {
    ProcRecord& p = table_[i];
    if (p.stop) {
      table_.set_state(i, ProcessState::stopping);
      advance(i, Clock::now(), fx);
    } else if (shutdown_begun_ && dependents_quiet(i)) {
      begin(i, shutdown_plan(i), fx);
    }
  }

  /// Process i left a new daemon: a stop under way reaches it at its next
  /// step, or now if the stop is already at its last one; one adopted after
  /// its process had stopped in a shutdown is stopped in turn.
  void on_daemon_adopted(std::size_t i, Effects& fx) {
    ProcRecord& p = table_[i];
    if (p.stop && p.stop->last_signal() != 0) {
      core_->signal_daemons(static_cast<std::uint32_t>(i), p.stop->last_signal());
    } else if (shutdown_begun_ && !p.stop && dependents_quiet(i)) {
      begin(i, shutdown_plan(i), fx);
    }
  }

  /// Takes the steps that are due, and says every 2 s what a shutdown still
  /// waits for. Returns when to come back.
  Clock::time_point run_timers(Clock::time_point now, Effects& fx) {
    while (!timers_.empty() && timers_.begin()->first <= now) {
      std::size_t i = timers_.begin()->second;
      timers_.erase(timers_.begin());
      ProcRecord& p = table_[i];
      if (!p.stop || p.stop->due() > now) continue;
      if (!p.stop->exhausted(now)) {
        advance(i, now, fx);
        continue;
      }
      if (keeper_is_frozen(core_->keeper_pid())) {
        // Stopped (SIGSTOP) or traced, the keeper serves nothing: end it
        // ourselves; its end is handled as a lost keeper (kill by mark).
        fx.logs.push_back("the keeper process (pid " + std::to_string(core_->keeper_pid()) +
                          ") is stopped and answers nothing: SIGKILL to it");
        ::kill(core_->keeper_pid(), SIGKILL);
        continue;
      }
      fx.logs.push_back("process " + quote(p.spec.name) + " (pid " + std::to_string(p.pid) +
                        ") is still alive after SIGKILL (in uninterruptible sleep?): given up on");
      p.abandoned = true;
      update_quiet(i, fx);
    }
    if (shutdown_begun_ && !finished_ && now >= next_report_) {
      next_report_ = now + std::chrono::seconds(2);
      report_waiting(now, fx);
    }
    Clock::time_point next = timers_.empty() ? Clock::time_point::max() : timers_.begin()->first;
    if (shutdown_begun_ && !finished_) next = std::min(next, next_report_);
    return next;
  }

  /// Forgets every plan and timer (the keeper is lost: nothing is left to signal).
  void drop_all() {
    for (std::size_t i = 0; i < table_.size(); ++i) table_[i].stop.reset();
    timers_.clear();
  }

 private:
  /// Takes the steps of process i's plan that are due.
  void advance(std::size_t i, Clock::time_point now, Effects& fx) {
    ProcRecord& p = table_[i];
    // A spawn in flight is stopped once it is spawned (see on_spawned).
    if (!p.stop || p.spawn_pending) return;
    while (const StopStep* step = p.stop->advance(now)) {
      const bool group = p.group_alive;
      const bool daemons = !p.daemons.empty();
      if (!group && !daemons) break;
      if (step->signal == SIGKILL) {
        p.killed = true;
        // Not for a graceful time of 0: SIGKILL at once is what was asked for.
        if (p.stop->plan().steps.size() > 1 && p.stop->plan().steps.front().wait > Clock::duration::zero()) {
          fx.logs.push_back("process " + quote(p.spec.name) + " (pid " + std::to_string(p.pid) +
                            ") did not stop within its graceful time: SIGKILL");
          if (shutdown_begun_) forced_ = true;
        }
      }
      if (verbose_) {
        fx.logs.push_back(signal_name(step->signal) + " to " + quote(p.spec.name) +
                          (group ? " (process group " + std::to_string(p.pid) + ")" : std::string()) +
                          (daemons ? " (daemons " + join_pids(p.daemons) + ")" : std::string()));
      }
      const auto id = static_cast<std::uint32_t>(i);
      if (group) core_->signal_group(id, step->signal);
      // Always: the keeper looks for daemons adopted since its last report first.
      core_->signal_daemons(id, step->signal);
    }
    timers_.emplace(p.stop->due(), i);
  }

  /// Shutdown order: true once everything that depends on process i is
  /// quiet (always, without `depends_on`).
  bool dependents_quiet(std::size_t i) const {
    for (std::size_t d : graph_.dependents(i)) {
      if (!table_[d].quiet) return false;
    }
    return true;
  }

  /// Process i has nothing left alive.
  void on_quiet(std::size_t i, Effects& fx) {
    ProcRecord& p = table_[i];
    if (p.stop) {
      p.stop.reset();
      if (p.state == ProcessState::stopping) table_.set_state(i, p.failed ? ProcessState::failed : ProcessState::stopped);
    }
    if (!shutdown_begun_) return;
    // What it depended on may stop now.
    for (std::size_t d : graph_.dependencies(i)) {
      if (!table_[d].stop && !table_[d].quiet && dependents_quiet(d)) begin(d, shutdown_plan(d), fx);
    }
    finish_if_quiet(fx);
  }

  void finish_if_quiet(Effects& fx) {
    if (!shutdown_begun_ || finished_ || table_.busy() != 0) return;
    finished_ = true;
    if (verbose_) fx.logs.push_back("all processes have stopped");
  }

  void report_waiting(Clock::time_point now, Effects& fx) const {
    std::size_t reported = 0;
    for (std::size_t i = 0; i < table_.size(); ++i) {
      const ProcRecord& p = table_[i];
      if (p.quiet || ++reported > 20) continue;
      std::string what = p.leader_alive ? ""
                         : p.group_alive ? " (its main process has exited; others in its group have not)"
                                         : "";
      if (!p.daemons.empty()) what += " (daemons " + join_pids(p.daemons) + ")";
      std::string when;
      if (!p.stop) {
        when = "it waits for the processes that depend on it";
      } else if (p.stop->killing()) {
        when = "SIGKILL sent";
      } else {
        const auto left = std::chrono::duration_cast<std::chrono::seconds>(p.stop->due() - now).count();
        when = "SIGKILL in " + std::to_string(std::max<long long>(0, left)) + "s";
      }
      fx.logs.push_back("waiting for process " + quote(p.spec.name) + " (pid " + std::to_string(p.pid) + ") to stop" +
                        what + "; " + when);
    }
    if (reported > 20) fx.logs.push_back("... and " + std::to_string(reported - 20) + " more");
  }

  ProcessTable& table_;
  const LaunchScheduler& graph_;
  const Config& config_;
  bool verbose_;
  ProcessCore* core_ = nullptr;
  bool shutdown_begun_ = false;
  bool finished_ = false;
  bool forced_ = false;
  std::multimap<Clock::time_point, std::size_t> timers_;  ///< stop plan steps due
  Clock::time_point next_report_{};
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_STOP_CONTROLLER_HPP
