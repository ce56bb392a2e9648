// pymanager: the Manager: launches the configured processes (in file order,
// or as a dependency graph with `depends_on`), verifies them, forwards their
// output, owns the daemons they leave, and stops them all.
//
// How it is built (one concept per header):
// - process_state.hpp: each process's state, with every transition in one table;
// - launch_scheduler.hpp: what starts when, the first failure, and the pool that runs verifiers;
// - stop_plan.hpp: how a process is stopped, as data;
// - output.hpp: output lines as events, and a writer that never blocks;
// - detail/process_core.hpp: the keeper and the pipes behind a narrow, typed interface;
// - detail/process_table.hpp: one record per process;
// - detail/launcher.hpp: start-up, launches and verifiers;
// - detail/event_handler.hpp: the core's events applied to the table;
// - detail/stop_controller.hpp: stop plans and the shutdown's order;
// - detail/output_router.hpp: output lines to their subscribers, and the log;
// - detail/owner_mark.hpp: the mark in every child's environment, and the
//   sweep by it when the keeper is lost;
// - detail/manager_shared.hpp: the state those parts share, behind one mutex.
//
// Threads: the callers' (start, restart, the API's), the verifier pool's
// during start(), and the process core's event loop, which delivers the
// keeper's events and the children's output and runs the stop plans'
// timers. The one mutex is never held across I/O to another process, and
// every wait has a bound.
#ifndef PYMANAGER_MANAGER_HPP
#define PYMANAGER_MANAGER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "pymanager/config.hpp"
#include "pymanager/detail/event_handler.hpp"
#include "pymanager/detail/launcher.hpp"
#include "pymanager/detail/manager_shared.hpp"
#include "pymanager/detail/probe_runner.hpp"
#include "pymanager/detail/process_core.hpp"
#include "pymanager/error.hpp"
#include "pymanager/launch_scheduler.hpp"
#include "pymanager/manager_options.hpp"
#include "pymanager/output.hpp"
#include "pymanager/process.hpp"
#include "pymanager/process_state.hpp"
#include "pymanager/stop_plan.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

class Manager {
 public:
  /// Starts the keeper process (nothing is launched yet: call start()).
  explicit Manager(Config config, ManagerOptions options = {});
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;
  /// Stops everything (each process's stop plan), joins the event thread,
  /// and has the keeper kill whatever escaped. Bounded by the stop plans.
  ~Manager();

  /// Launches every process: in file order, each after the previous one's
  /// verifier passed, or, when the file has `depends_on`, each as soon as its
  /// dependencies are met, in parallel. On a failure nothing more starts, the
  /// verifiers still running are cancelled, everything launched is shut down,
  /// and the Error (spawn_failed or verify_failed) is thrown. If shutdown is
  /// requested meanwhile, throws ErrorKind::shutting_down.
  void start();

  /// Begins the shutdown and returns at once: each process gets its stop
  /// signal once everything that depends on it has stopped, then SIGKILL
  /// after its graceful time. `force`: SIGKILL to everything now.
  void shutdown(bool force = false);
  /// Waits until the shutdown is complete (every process group is empty and
  /// every daemon gone); with keep_alive false, that also happens once every
  /// process has exited. Returns false if `timeout` passed first.
  bool wait_finished(std::optional<Clock::duration> timeout = std::nullopt);

  bool finished() const;
  bool shutdown_begun() const;
  ManagerState state() const;
  /// True when the keeper process was lost (killed from outside): the
  /// Manager then killed everything it knew of and shut down.
  bool keeper_lost() const;
  /// The longest a shutdown can take: each process's stop plan, one after
  /// the other along the longest dependency chain, and a little slack.
  Clock::duration shutdown_bound() const;
  /// The graceful time of a stop or restart asked for by the API or a test:
  /// the process's own `graceful_time`, else restart-graceful-time.
  double restart_grace(std::size_t index) const;
  /// Transitions taken outside process_state.hpp's table (a bug; for tests).
  std::size_t illegal_transitions() const;
  /// The keeper process's pid (for diagnosis and fault injection).
  pid_t keeper_pid() const { return s_.core->keeper_pid(); }
  const Config& config() const { return s_.config; }
  std::size_t size() const { return s_.table.size(); }

  std::vector<ProcessInfo> processes() const;
  /// One process by 0-based index.
  ProcessInfo process(std::size_t index) const;
  /// The 0-based index of the process named `name`, or nullopt.
  std::optional<std::size_t> index_of(const std::string& name) const;
  /// The last `lines` lines the process printed (stdout and stderr), oldest first.
  std::vector<std::string> output_tail(std::size_t index, std::size_t lines) const;

  /// Stops one process with its stop plan (its stop signal, SIGKILL after
  /// `grace` seconds; default restart_grace(index), as the API's stop) and
  /// its daemons with it;
  /// returns once nothing of it is left. With keep_alive false, stopping the
  /// last running process ends the manager. Throws shutting_down once
  /// shutdown has begun, conflict while start() is still launching.
  void stop_process(std::size_t index, std::optional<double> grace = std::nullopt);
  /// Starts a stopped process again and runs its verifier.
  ProcessInfo start_process(std::size_t index);
  /// stop_process, then launch and verify again: the old daemons are gone
  /// before the new launcher runs.
  ProcessInfo restart(std::size_t index, std::optional<double> grace = std::nullopt);
  /// Sends `sig` to the process's group and its daemons (fault injection).
  void signal_process(std::size_t index, int sig);
  /// SIGKILL to the process's group and daemons; returns once they are gone.
  void kill_process(std::size_t index);

  /// Runs a short command through the keeper (in its own process group,
  /// with the children's environment and this manager's mark) until it ends
  /// or `deadline` passes (then it is killed: `timed_out`). Whatever it left
  /// in its group or as daemons is killed when it ends. Ends early, as
  /// `cancelled`, once shutdown begins. Verifiers get the same through
  /// VerifyContext::run_probe. Any thread.
  ProbeResult run_probe(const ProbeCommand& command, Clock::time_point deadline);


 private:
  class Operation;
  /// Runs a stop plan and waits for it (a stop, a restart, a kill). Bounded.
  void stop_and_wait(std::size_t i, StopPlan plan, std::unique_lock<std::mutex>& lock);
  StopPlan operation_plan(std::size_t i, std::optional<double> grace) const;

  detail::ManagerShared s_;
  detail::Launcher launcher_{s_};
  detail::EventHandler events_{s_};
  std::thread event_thread_;
};

// ===========================================================================
// Implementation. Nothing below is part of the interface.

/// One stop/start/restart: serialized per process, refused during start-up
/// and shutdown, and counted so that its own exit does not end a manager
/// without keep-alive.
class Manager::Operation {
 public:
  Operation(Manager& m, std::size_t index, const char* verb) : s_(m.s_) {
    s_.table.check_index(index);
    const std::string what = std::string("cannot ") + verb + " process " + detail::quote(s_.table[index].spec.name);
    // Checked before waiting for the process's own lock too: a refusal must
    // not wait for an operation under way.
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      check_allowed_locked(what);
    }
    lock_ = std::unique_lock<std::mutex>(s_.table[index].operation);
    std::lock_guard<std::mutex> lock(s_.mutex);
    check_allowed_locked(what);
    ++s_.operations;
  }
  Operation(const Operation&) = delete;
  Operation& operator=(const Operation&) = delete;
  ~Operation() {
    detail::Effects fx;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      --s_.operations;
      s_.end_if_all_exited_locked(fx);
    }
    s_.run(fx);
  }

 private:
  void check_allowed_locked(const std::string& what) const {
    if (s_.stops.shutdown_begun()) throw Error(ErrorKind::shutting_down, what + ": shutdown has begun");
    if (s_.phase == ManagerState::booting || s_.phase == ManagerState::launching) {
      throw Error(ErrorKind::conflict, what + ": the processes are still being launched");
    }
  }

  detail::ManagerShared& s_;
  std::unique_lock<std::mutex> lock_;
};

// ------------------------------------------------------------- construction

inline Manager::Manager(Config config, ManagerOptions options) : s_(std::move(config), std::move(options)) {
  // Each process needs two pipes: raise our own descriptor limit as far as
  // the hard limit allows; the children get the limit we were given.
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    s_.child_nofile = limit.rlim_cur;
    const auto needed = static_cast<rlim_t>(detail::descriptors_needed(s_.config.processes, true));
    const rlim_t wanted = needed + 1024;  // and room for the host's own
    if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed) {
      limit.rlim_cur = limit.rlim_max == RLIM_INFINITY ? wanted : std::min(wanted, limit.rlim_max);
      ::setrlimit(RLIMIT_NOFILE, &limit);
    }
  }
  detail::KeeperOptions keeper_options;
  keeper_options.token = s_.token;
  keeper_options.child_nofile_soft = s_.child_nofile;
  s_.core = std::make_unique<detail::ProcessCore>(std::move(keeper_options));
  if (s_.options.verbose && !s_.core->exec_mode()) {
    const char* asked = std::getenv("PYMANAGER_KEEPER");
    s_.options.log(asked != nullptr && std::string(asked) == "fork"
                       ? "keeper forked from this process (PYMANAGER_KEEPER=fork)"
                       : "keeper forked from this process: no pymanager-keeper program next to it or in its "
                         "runfiles (name one with PYMANAGER_KEEPER); it shares this process's memory");
  }
  s_.stops.attach(*s_.core);
  s_.core->add_writer(s_.output.output_writer());
  s_.core->add_writer(s_.output.log_writer());
  event_thread_ = std::thread([this] { s_.core->run(events_); });
}

inline Manager::~Manager() {
  shutdown();
  wait_finished(shutdown_bound());
  {
    std::unique_lock<std::mutex> lock(s_.mutex);
    // run_probe calls on other threads were cancelled by the shutdown; each
    // ends within 5 s of it (the kill seen).
    s_.changed.wait_for(lock, std::chrono::seconds(10), [&] { return s_.probe_calls == 0; });
    s_.stopping = true;
  }
  s_.core->stop_loop();
  if (event_thread_.joinable()) event_thread_.join();
  s_.core->close();
  s_.output.finish();
}

// ------------------------------------------------------------- public API

inline void Manager::start() {
  {
    std::lock_guard<std::mutex> lock(s_.mutex);
    if (s_.stops.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    s_.phase = ManagerState::launching;
    s_.scheduler.reset();
  }
  if (std::optional<Error> failure = launcher_.run_startup()) {
    if (failure->kind() != ErrorKind::shutting_down) s_.log(failure->what());
    shutdown();
    wait_finished(shutdown_bound());
    throw *failure;
  }
  detail::Effects fx;
  {
    std::lock_guard<std::mutex> lock(s_.mutex);
    if (s_.stops.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown requested during start-up");
    s_.phase = ManagerState::running;
    if (s_.options.verbose) fx.logs.push_back("all processes are up");
    s_.end_if_all_exited_locked(fx);
  }
  s_.run(fx);
}

inline void Manager::shutdown(bool force) {
  detail::Effects fx;
  {
    std::lock_guard<std::mutex> lock(s_.mutex);
    s_.shutdown_locked(force, fx);
  }
  s_.run(fx);
}

inline bool Manager::wait_finished(std::optional<Clock::duration> timeout) {
  std::unique_lock<std::mutex> lock(s_.mutex);
  if (!timeout) {
    // Bounded in steps, so that a lost wake-up cannot hang it.
    while (!s_.stops.finished()) s_.changed.wait_for(lock, std::chrono::seconds(1));
    return true;
  }
  return s_.changed.wait_for(lock, *timeout, [&] { return s_.stops.finished(); });
}

inline bool Manager::finished() const {
  std::lock_guard<std::mutex> lock(s_.mutex);
  return s_.stops.finished();
}

inline bool Manager::shutdown_begun() const {
  std::lock_guard<std::mutex> lock(s_.mutex);
  return s_.stops.shutdown_begun();
}

inline ManagerState Manager::state() const {
  std::lock_guard<std::mutex> lock(s_.mutex);
  return s_.state_locked();
}

inline bool Manager::keeper_lost() const {
  std::lock_guard<std::mutex> lock(s_.mutex);
  return s_.keeper_lost;
}

inline Clock::duration Manager::shutdown_bound() const { return s_.stops.shutdown_bound(); }

inline double Manager::restart_grace(std::size_t index) const {
  s_.table.check_index(index);
  return s_.stops.grace(index, detail::StopController::Purpose::operation);
}

inline std::size_t Manager::illegal_transitions() const {
  std::lock_guard<std::mutex> lock(s_.mutex);
  return s_.table.illegal_transitions();
}

inline std::vector<ProcessInfo> Manager::processes() const {
  std::lock_guard<std::mutex> lock(s_.mutex);
  std::vector<ProcessInfo> out;
  out.reserve(s_.table.size());
  for (std::size_t i = 0; i < s_.table.size(); ++i) out.push_back(s_.table.info(i, s_.scheduler));
  return out;
}

inline ProcessInfo Manager::process(std::size_t index) const {
  s_.table.check_index(index);
  std::lock_guard<std::mutex> lock(s_.mutex);
  return s_.table.info(index, s_.scheduler);
}

inline std::optional<std::size_t> Manager::index_of(const std::string& name) const { return s_.table.index_of(name); }

inline std::vector<std::string> Manager::output_tail(std::size_t index, std::size_t lines) const {
  s_.table.check_index(index);
  return s_.output.tail(index, lines);
}

inline void Manager::stop_process(std::size_t index, std::optional<double> grace) {
  Operation op(*this, index, "stop");
  std::unique_lock<std::mutex> lock(s_.mutex);
  stop_and_wait(index, operation_plan(index, grace), lock);
}

inline ProcessInfo Manager::start_process(std::size_t index) {
  Operation op(*this, index, "start");
  {
    std::lock_guard<std::mutex> lock(s_.mutex);
    if (!s_.table[index].quiet) return s_.table.info(index, s_.scheduler);
  }
  launcher_.launch_and_verify_now(index);
  return process(index);
}

inline ProcessInfo Manager::restart(std::size_t index, std::optional<double> grace) {
  Operation op(*this, index, "restart");
  {
    std::unique_lock<std::mutex> lock(s_.mutex);
    stop_and_wait(index, operation_plan(index, grace), lock);
  }
  launcher_.launch_and_verify_now(index);
  return process(index);
}

inline void Manager::signal_process(std::size_t index, int sig) {
  s_.table.check_index(index);
  std::lock_guard<std::mutex> lock(s_.mutex);
  const detail::ProcRecord& p = s_.table[index];
  if (p.group_alive) s_.core->signal_group(static_cast<std::uint32_t>(index), sig);
  if (!p.daemons.empty()) s_.core->signal_daemons(static_cast<std::uint32_t>(index), sig);
}

inline void Manager::kill_process(std::size_t index) {
  s_.table.check_index(index);
  std::unique_lock<std::mutex> lock(s_.mutex);
  if (s_.table[index].quiet || s_.stops.shutdown_begun()) return;
  stop_and_wait(index, StopPlan::kill_now(), lock);
}

inline ProbeResult Manager::run_probe(const ProbeCommand& command, Clock::time_point deadline) {
  return detail::ProbeRunner(s_).run(command, deadline, [this] { return s_.stops.shutdown_begun(); });
}

// ------------------------------------------------------------------ stops

inline StopPlan Manager::operation_plan(std::size_t i, std::optional<double> grace) const {
  return s_.stops.plan(i, detail::StopController::Purpose::operation, grace);
}

inline void Manager::stop_and_wait(std::size_t i, StopPlan plan, std::unique_lock<std::mutex>& lock) {
  detail::ProcRecord& p = s_.table[i];
  const auto bound = plan.bound() + std::chrono::seconds(5);
  detail::Effects fx;
  s_.stops.begin(i, std::move(plan), fx);
  lock.unlock();
  s_.run(fx);
  s_.core->wake();
  lock.lock();
  if (!s_.changed.wait_for(lock, bound, [&] { return p.quiet || s_.keeper_gone; }) || p.abandoned) {
    throw Error(ErrorKind::system, "process " + detail::quote(p.spec.name) + " (pid " + std::to_string(p.pid) +
                                       ") did not stop, even after SIGKILL");
  }
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_MANAGER_HPP
