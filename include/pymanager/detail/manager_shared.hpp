// pymanager: what the Manager's parts share. The Manager (manager.hpp) is a
// facade over three parts that work on one state behind one mutex:
// - the launcher (detail/launcher.hpp): start-up, launches and verifiers;
// - the event handler (detail/event_handler.hpp): what the process core
//   reports, on its event loop's thread;
// - the stop controller (detail/stop_controller.hpp): stop plans and the
//   shutdown's order.
// The mutex is never held across I/O to another process: requests to the
// keeper are queued under it and sent by the event loop without blocking,
// and messages are logged after it is released (Effects).
#ifndef PYMANAGER_DETAIL_MANAGER_SHARED_HPP
#define PYMANAGER_DETAIL_MANAGER_SHARED_HPP

#include <sys/resource.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pymanager/config.hpp"
#include "pymanager/detail/output_router.hpp"
#include "pymanager/detail/owner_mark.hpp"
#include "pymanager/detail/probe_table.hpp"
#include "pymanager/detail/process_core.hpp"
#include "pymanager/detail/process_table.hpp"
#include "pymanager/detail/stop_controller.hpp"
#include "pymanager/error.hpp"
#include "pymanager/launch_scheduler.hpp"
#include "pymanager/manager_options.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

struct ManagerShared {
  ManagerShared(Config c, ManagerOptions o)
      : config(prepared(std::move(c))),
        options(std::move(o)),
        token(random_token()),
        output(config.processes, options.output_fd, options.color, options.log, options.on_output,
               options.output_lines_kept),
        table(config.processes),
        scheduler(config),
        stops(table, scheduler, config, options.verbose),
        probes(config.processes.size()) {}
  ManagerShared(const ManagerShared&) = delete;
  ManagerShared& operator=(const ManagerShared&) = delete;

  void log(const std::string& message) const { output.log(message); }
  /// Carries out what was collected under the lock; call without it.
  void run(Effects& fx) const {
    for (const auto& message : fx.logs) log(message);
    fx.logs.clear();
  }

  ManagerState state_locked() const {
    if (stops.forced()) return ManagerState::force_shutdown;
    if (stops.shutdown_begun()) return ManagerState::shutdown;
    return phase;
  }

  /// Begins (or carries on) the shutdown, and wakes every waiter.
  void shutdown_locked(bool force, Effects& fx) {
    stops.begin_shutdown(force, fx);
    changed.notify_all();
    core->wake();
  }

  /// keep_alive false: once every launched process has exited (daemons
  /// count as running) while running, the manager shuts down (and so exits).
  void end_if_all_exited_locked(Effects& fx) {
    if (config.keep_alive || phase != ManagerState::running || stops.shutdown_begun() || operations > 0) return;
    for (std::size_t i = 0; i < table.size(); ++i) {
      const ProcRecord& p = table[i];
      if (p.leader_alive || !p.daemons.empty() || p.spawn_pending) return;
    }
    if (options.verbose) fx.logs.push_back("all processes have exited");
    shutdown_locked(false, fx);
  }

  Config config;
  ManagerOptions options;
  const std::string token;  ///< this manager's mark in every child's environment
  rlim_t child_nofile = 0;  ///< the descriptor limit the children get
  OutputRouter output;
  std::unique_ptr<ProcessCore> core;  ///< set by the Manager's constructor

  mutable std::mutex mutex;
  std::condition_variable changed;
  ProcessTable table;
  LaunchScheduler scheduler;
  StopController stops;
  ProbeTable probes;  ///< probe commands in flight (run_probe)
  std::size_t probe_calls = 0;  ///< run_probe calls under way: the destructor waits for them
  ManagerState phase = ManagerState::booting;  ///< booting, launching or running
  bool stopping = false;  ///< the destructor asks the event thread to end
  bool keeper_gone = false;
  bool keeper_lost = false;  ///< gone without being asked to go
  /// Too few descriptors for two pipes per process: one each (set by start()).
  std::atomic<bool> merge_streams{false};
  std::size_t spawns_in_flight = 0;
  int operations = 0;                   ///< stop/start/restart calls under way
  std::vector<std::size_t> to_verify;   ///< spawned during start(), for the verifier pool
  std::vector<pid_t> orphans;           ///< daemons no process claims
  std::map<pid_t, std::uint64_t> daemon_starts;  ///< every daemon's start time, to recognise it later

 private:
  static Config prepared(Config c) {
    if (c.processes.empty()) throw Error(ErrorKind::config_no_processes, "processes: no processes are configured");
    if (c.base_directory.empty()) c.base_directory = current_directory();
    return c;
  }
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_MANAGER_SHARED_HPP
