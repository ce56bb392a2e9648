// pymanager: the event handler: what the process core reports, applied to
// the process table on the core's event-loop thread. Output goes to the
// output router without the lock; spawns, exits, groups and daemons change
// the table (and may advance a stop or the shutdown) under it; a lost
// keeper is answered by killing, by the owner mark, everything it can no
// longer kill. Nothing here blocks: logs are written after the lock is
// released, through writers that never block.
#ifndef PYMANAGER_DETAIL_EVENT_HANDLER_HPP
#define PYMANAGER_DETAIL_EVENT_HANDLER_HPP

#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "pymanager/detail/manager_shared.hpp"
#include "pymanager/detail/owner_mark.hpp"
#include "pymanager/detail/probe_table.hpp"
#include "pymanager/detail/process_core.hpp"
#include "pymanager/process.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

class EventHandler : public CoreListener {
 public:
  explicit EventHandler(ManagerShared& s) : s_(s) {}

  void on_event(const CoreEvent& event) override {
    using Type = CoreEvent::Type;
    const bool probe = s_.probes.is_probe(event.id);
    if (probe && event.type != Type::daemon_adopted && event.type != Type::daemon_gone) {
      on_probe_event(event);
      return;
    }
    // A probe's daemons, and daemons no process claims, are orphans.
    const bool ours = event.id < s_.table.size();
    switch (event.type) {
      case Type::output_bytes:
        if (ours) s_.output.write_run(*static_cast<RunOutput*>(event.context), event.text);
        return;
      case Type::output_line:
        if (!ours) return;
        if (auto* run = static_cast<RunOutput*>(event.context); run != nullptr && run->feed && !run->feed->closed()) {
          {
            std::lock_guard<std::mutex> lock(s_.mutex);
            run->feed->push(event.stream, event.text);
          }
          s_.changed.notify_all();
        }
        s_.output.deliver(event.id, event.stream, event.text, event.complete);
        return;
      case Type::exited:
        if (ours) on_exited(event.id, event);
        return;
      default:
        break;
    }
    CoreEvent copy = event;
    // Read now, without the lock: the daemon's identity for later.
    if (copy.type == Type::daemon_adopted) copy.start_time = process_start_time(copy.pid);
    Effects fx;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      if (ours) {
        apply_locked(copy, fx);
      } else {
        orphan_locked(copy, fx);
        // A daemon a probe left, adopted after the probe ended: killed too.
        const ProbeRun* run = probe ? s_.probes.find(copy.id) : nullptr;
        if (probe && copy.type == Type::daemon_adopted && (run == nullptr || run->ended)) {
          s_.core->signal_daemons(copy.id, SIGKILL);
        }
      }
    }
    s_.changed.notify_all();
    s_.run(fx);
  }

  /// The keeper is gone without being asked to go (killed from outside):
  /// kill what it can no longer kill, and say exactly what was done.
  void on_keeper_lost() override {
    std::vector<pid_t> groups;
    std::vector<std::pair<pid_t, std::uint64_t>> daemons;
    bool asked;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      s_.keeper_gone = true;
      asked = s_.stopping;
      for (std::size_t i = 0; i < s_.table.size(); ++i) {
        if (s_.table[i].group_alive) groups.push_back(s_.table[i].pid);
      }
      for (pid_t pgid : s_.probes.live_groups()) groups.push_back(pgid);
      daemons.assign(s_.daemon_starts.begin(), s_.daemon_starts.end());
      if (!asked) s_.keeper_lost = true;
    }
    if (!asked) {
      KeeperLossSweep sweep = sweep_after_keeper_loss(groups, daemons, owner_marker(s_.token));
      s_.log(describe_keeper_loss(s_.core->keeper_pid(), groups, sweep));
    }
    Effects fx;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      s_.stops.drop_all();
      for (std::size_t i = 0; i < s_.table.size(); ++i) {
        ProcRecord& p = s_.table[i];
        // Its children died with it, by SIGKILL.
        if (p.leader_alive && !p.exit) p.exit = ExitStatus{true, SIGKILL};
        p.leader_alive = p.group_alive = p.spawn_pending = false;
        p.daemons.clear();
        s_.stops.update_quiet(i, fx);
        switch (p.state) {
          case ProcessState::starting:
          case ProcessState::verifying:
          case ProcessState::ready:
          case ProcessState::daemonized:
          case ProcessState::stopping:
            s_.table.set_state(i, ProcessState::stopped);
            break;
          default:
            break;
        }
      }
      s_.daemon_starts.clear();
      s_.orphans.clear();
      s_.probes.end_all();
      s_.spawns_in_flight = 0;
      s_.shutdown_locked(true, fx);
    }
    s_.run(fx);
  }

  /// Stop plan steps that are due, the drop notices; when to come back.
  Clock::time_point on_tick(Clock::time_point now) override {
    Effects fx;
    Clock::time_point next;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      next = s_.stops.run_timers(now, fx);
    }
    s_.changed.notify_all();
    s_.run(fx);
    s_.output.service();
    return next;
  }

 private:
  /// An event of a probe (detail/probe_runner.hpp waits for it).
  void on_probe_event(const CoreEvent& event) {
    using Type = CoreEvent::Type;
    if (event.type == Type::output_line) return;  // a probe's output is kept as bytes
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      ProbeRun* run = s_.probes.find(event.id);
      if (run == nullptr) return;
      switch (event.type) {
        case Type::output_bytes:
          ProbeTable::append(*run, event.text);
          return;  // nobody waits for output alone
        case Type::spawned:
          run->spawned = true;
          run->pid = event.pid;
          run->group_alive = true;
          break;
        case Type::spawn_failed:
          run->spawn_errno = event.error;
          run->spawn_stage = event.stage;
          run->ended = true;
          break;
        case Type::exited:
          run->exit = ExitStatus::from_wait_status(event.wait_status);
          run->ended = true;
          break;
        case Type::group_empty:
          run->group_alive = false;
          break;
        default:
          break;
      }
      s_.probes.release_if_done(event.id);
    }
    s_.changed.notify_all();
  }

  /// A daemon whose environment no longer says where it came from.
  void orphan_locked(const CoreEvent& event, Effects& fx) {
    if (event.type == CoreEvent::Type::daemon_adopted) {
      s_.orphans.push_back(event.pid);
      s_.daemon_starts[event.pid] = event.start_time;
      if (s_.options.verbose) {
        fx.logs.push_back("adopted pid " + std::to_string(event.pid) + ", which no process claims (its environment was cleared)");
      }
    } else if (event.type == CoreEvent::Type::daemon_gone) {
      s_.orphans.erase(std::remove(s_.orphans.begin(), s_.orphans.end(), event.pid), s_.orphans.end());
      s_.daemon_starts.erase(event.pid);
    }
  }

  /// One event of process event.id (except exits: on_exited).
  void apply_locked(const CoreEvent& event, Effects& fx) {
    using Type = CoreEvent::Type;
    const std::size_t i = event.id;
    ProcRecord& p = s_.table[i];
    switch (event.type) {
      case Type::spawned:
        p.pid = event.pid;
        p.leader_alive = true;
        p.group_alive = true;
        p.spawn_pending = false;
        --s_.spawns_in_flight;
        ++p.launches;
        s_.scheduler.mark_started(i);
        if (!p.spec.verifiers.empty()) {
          s_.table.set_state(i, ProcessState::verifying);
          if (p.verify_in_pool && !p.stop) s_.to_verify.push_back(i);
        } else {
          s_.table.set_state(i, ProcessState::ready);
          s_.scheduler.mark_verified(i);
        }
        s_.stops.update_quiet(i, fx);
        s_.stops.on_spawned(i, fx);
        break;
      case Type::spawn_failed:
        p.spawn_pending = false;
        --s_.spawns_in_flight;
        p.spawn_errno = event.error;
        p.spawn_stage = event.stage;
        s_.table.set_state(i, ProcessState::failed);
        p.failed = true;
        if (p.verify_in_pool && !s_.stops.shutdown_begun()) {
          s_.scheduler.report_failure(ErrorKind::spawn_failed, spawn_failure_message(p));
        }
        s_.stops.update_quiet(i, fx);
        break;
      case Type::group_empty:
        p.group_alive = false;
        s_.stops.update_quiet(i, fx);
        break;
      case Type::daemon_adopted:
        if (std::find(p.daemons.begin(), p.daemons.end(), event.pid) == p.daemons.end()) p.daemons.push_back(event.pid);
        s_.daemon_starts[event.pid] = event.start_time;
        if (s_.options.verbose) fx.logs.push_back("process " + quote(p.spec.name) + " left daemon pid " + std::to_string(event.pid));
        if (p.state == ProcessState::exited) s_.table.set_state(i, ProcessState::daemonized);
        s_.stops.update_quiet(i, fx);
        s_.stops.on_daemon_adopted(i, fx);
        break;
      case Type::daemon_gone:
        p.daemons.erase(std::remove(p.daemons.begin(), p.daemons.end(), event.pid), p.daemons.end());
        s_.daemon_starts.erase(event.pid);
        if (s_.options.verbose) {
          fx.logs.push_back("daemon pid " + std::to_string(event.pid) + " of " + quote(p.spec.name) + " is gone");
        }
        if (p.state == ProcessState::daemonized && p.daemons.empty()) s_.table.set_state(i, ProcessState::exited);
        s_.stops.update_quiet(i, fx);
        s_.end_if_all_exited_locked(fx);
        break;
      default:
        break;
    }
  }

  /// The main process of i exited: log, record, tell on_exit.
  void on_exited(std::size_t i, const CoreEvent& event) {
    ProcRecord& p = s_.table[i];
    const ExitStatus status = ExitStatus::from_wait_status(event.wait_status);
    bool expected;
    pid_t pid;
    bool daemons;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      expected = p.exit_expected || s_.stops.shutdown_begun();
      pid = p.pid;
      daemons = !p.daemons.empty();
    }
    // Logged before anyone waiting for the exit can see it, so that the
    // messages come in the order things happened.
    const std::string who = "process " + quote(p.spec.name) + " (pid " + std::to_string(pid) + ") exited ";
    if (s_.config.messages.process_exit) {
      // The original's "exited with code N"; a signal is said as one, not as
      // the negative code the seed's status shows ("exited with signal 9 (Killed)").
      s_.log(who + (status.signaled ? "with " + status.describe() : "with code " + std::to_string(status.code())));
    } else if (!expected && s_.options.verbose && !(status.code() == 0 && daemons)) {
      // Without process.exit (or -v), exits are no output of ours: "By
      // default, no additional output is displayed", as the original says.
      s_.log(who + "unexpectedly with " + status.describe());
    }
    ProcessInfo info;
    Effects fx;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      p.leader_alive = false;
      p.exit = status;
      if (p.state == ProcessState::ready) {
        s_.table.set_state(i, p.daemons.empty() ? ProcessState::exited : ProcessState::daemonized);
      }
      info = s_.table.info(i, s_.scheduler);
      s_.stops.update_quiet(i, fx);
      s_.end_if_all_exited_locked(fx);
    }
    s_.changed.notify_all();
    s_.run(fx);
    if (s_.options.on_exit) s_.options.on_exit(info, expected);
  }

  ManagerShared& s_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_EVENT_HANDLER_HPP
