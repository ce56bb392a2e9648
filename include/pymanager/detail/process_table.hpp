// pymanager: the process table. One record per configured process: its
// state (process_state.hpp), what of it is alive (main process, group,
// daemons, a spawn in flight), its stop under way, and its last exit. The
// table keeps the count of processes that are not quiet (something alive),
// so that "everything has stopped" is one comparison, and counts every
// transition taken outside process_state.hpp's table.
//
// Plain data: the Manager's parts use it under the Manager's lock.
#ifndef PYMANAGER_DETAIL_PROCESS_TABLE_HPP
#define PYMANAGER_DETAIL_PROCESS_TABLE_HPP

#include <sys/types.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "pymanager/config.hpp"
#include "pymanager/detail/keeper.hpp"
#include "pymanager/detail/line_feed.hpp"
#include "pymanager/error.hpp"
#include "pymanager/launch_scheduler.hpp"
#include "pymanager/process.hpp"
#include "pymanager/process_state.hpp"
#include "pymanager/stop_plan.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

struct ProcRecord {
  ProcessSpec spec;
  std::mutex operation;  ///< serializes start/stop/restart of this process
  ProcessState state = ProcessState::waiting;
  pid_t pid = 0;
  bool leader_alive = false;
  bool group_alive = false;
  bool spawn_pending = false;
  bool quiet = true;  ///< nothing alive, no spawn in flight
  std::optional<ExitStatus> exit;
  int launches = 0;
  bool exit_expected = false;   ///< a stop or shutdown was asked for, or the verifier waits for the exit
  bool verify_in_pool = false;  ///< launched by start(): the pool runs its verifier
  int spawn_errno = 0;
  SpawnStage spawn_stage{};
  std::string working_directory;  ///< of the launch in flight, for messages
  Clock::time_point spawn_asked{};
  std::vector<pid_t> daemons;
  std::optional<StopRun> stop;
  bool killed = false;
  /// Still alive after its whole stop plan (SIGKILL cannot reach a process
  /// in uninterruptible sleep): given up on, so that nothing waits for ever.
  bool abandoned = false;
  bool failed = false;  ///< this run failed (spawn or verifier): its stop ends in `failed`
  /// This run's lines, while a verifier that reads output runs.
  std::shared_ptr<LineFeed> feed;
};

/// What to do once the Manager's lock is released: messages to log.
struct Effects {
  std::vector<std::string> logs;
};

inline std::string quote(const std::string& name) { return "'" + name + "'"; }

/// "cannot start process 'web' (./web): exec: ..." from the keeper's answer.
inline std::string spawn_failure_message(const ProcRecord& p) {
  std::string why = std::strerror(p.spawn_errno);
  if (p.spawn_stage == SpawnStage::chdir) {
    why = "working_directory " + p.working_directory + ": " + why;
  } else if (p.spawn_stage != SpawnStage::exec) {
    why = std::string(describe_stage(p.spawn_stage)) + ": " + why;
  }
  return "cannot start process " + quote(p.spec.name) + " (" + p.spec.executable + "): " + why;
}

class ProcessTable {
 public:
  explicit ProcessTable(const std::vector<ProcessSpec>& specs) {
    for (const auto& spec : specs) {
      auto record = std::make_unique<ProcRecord>();
      record->spec = spec;
      records_.push_back(std::move(record));
    }
  }

  std::size_t size() const { return records_.size(); }
  ProcRecord& operator[](std::size_t i) { return *records_[i]; }
  const ProcRecord& operator[](std::size_t i) const { return *records_[i]; }

  void check_index(std::size_t index) const {
    if (index >= records_.size()) throw Error(ErrorKind::not_found, "no process with id " + std::to_string(index + 1));
  }
  std::optional<std::size_t> index_of(const std::string& name) const {
    for (std::size_t i = 0; i < records_.size(); ++i) {
      if (records_[i]->spec.name == name) return i;
    }
    return std::nullopt;
  }

  void set_state(std::size_t i, ProcessState to) {
    ProcRecord& p = *records_[i];
    if (p.state == to) return;
    // A transition outside the table is a bug: counted (tests assert there
    // are none), and taken anyway, so that the process is never stuck in a
    // state that is no longer true.
    if (!transition_allowed(p.state, to)) ++illegal_transitions_;
    p.state = to;
  }

  /// Recomputes whether process i is quiet; true when it has just become so.
  bool update_quiet(std::size_t i) {
    ProcRecord& p = *records_[i];
    const bool quiet = p.abandoned || (!p.group_alive && !p.leader_alive && !p.spawn_pending && p.daemons.empty());
    if (quiet == p.quiet) return false;
    p.quiet = quiet;
    if (quiet) {
      --busy_;
    } else {
      ++busy_;
    }
    return quiet;
  }

  /// How many processes have something alive (or a spawn in flight).
  std::size_t busy() const { return busy_; }
  std::size_t illegal_transitions() const { return illegal_transitions_; }

  ProcessInfo info(std::size_t i, const LaunchScheduler& scheduler) const {
    const ProcRecord& p = *records_[i];
    ProcessInfo info;
    info.id = static_cast<int>(i) + 1;
    info.name = p.spec.name;
    info.command = describe_command(p.spec);
    info.running = p.leader_alive;
    info.pid = p.pid;
    info.exit = p.exit;
    info.group_alive = p.group_alive;
    info.restarts = std::max(0, p.launches - 1);
    info.killed = p.killed;
    info.state = p.state;
    info.daemons.assign(p.daemons.begin(), p.daemons.end());
    if (p.state == ProcessState::waiting) info.waiting_for = scheduler.waiting_for(i);
    return info;
  }

 private:
  std::vector<std::unique_ptr<ProcRecord>> records_;
  std::size_t busy_ = 0;
  std::size_t illegal_transitions_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_PROCESS_TABLE_HPP
