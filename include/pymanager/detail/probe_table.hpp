// pymanager: probes in flight. A probe is a short command a verifier runs
// (VerifyContext::run_probe); the keeper spawns it under an id of its own,
// above every configured process's, so its events never reach the process
// table. This table maps those ids to their runs; the event handler fills a
// run (output, spawn, exit, group), the runner (detail/probe_runner.hpp)
// waits for it. An id is reused only once its run ended and its group is empty.
//
// Plain data: used under the Manager's lock.
#ifndef PYMANAGER_DETAIL_PROBE_TABLE_HPP
#define PYMANAGER_DETAIL_PROBE_TABLE_HPP

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pymanager/detail/keeper.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

struct ProbeRun {
  std::uint32_t id = 0;
  std::size_t output_limit = 0;
  std::string output;
  bool truncated = false;
  bool spawned = false;
  pid_t pid = 0;
  int spawn_errno = 0;  ///< spawn_failed
  SpawnStage spawn_stage{};
  std::optional<ExitStatus> exit;
  bool group_alive = false;
  bool ended = false;    ///< exited, failed to spawn, or the keeper is gone
  bool waited = false;   ///< the runner has returned: erase once the group is empty
};

class ProbeTable {
 public:
  /// At most this many probes at once; their ids follow the processes' ids
  /// (the process core indexes its pipes by id, so ids stay small), and an
  /// id comes back only after every other one was used, so that a late event
  /// of an old probe (a daemon it left) never reaches a new one.
  static constexpr std::uint32_t kIds = 4096;

  /// `processes`: the number of configured processes (ids 0 .. processes-1).
  explicit ProbeTable(std::size_t processes) : first_(static_cast<std::uint32_t>(processes)) {}

  bool is_probe(std::uint32_t id) const { return id >= first_ && id - first_ < kIds; }

  /// A new run under a free id; nullptr when every id is in use.
  std::shared_ptr<ProbeRun> add(std::size_t output_limit) {
    if (runs_.size() >= kIds) return nullptr;
    while (runs_.count(first_ + next_) != 0) next_ = (next_ + 1) % kIds;
    auto run = std::make_shared<ProbeRun>();
    run->id = first_ + next_;
    run->output_limit = output_limit;
    next_ = (next_ + 1) % kIds;
    runs_[run->id] = run;
    return run;
  }

  /// The process groups of the probes alive (for the sweep after a lost keeper).
  std::vector<pid_t> live_groups() const {
    std::vector<pid_t> out;
    for (const auto& entry : runs_) {
      if (entry.second->group_alive && entry.second->pid > 0) out.push_back(entry.second->pid);
    }
    return out;
  }

  ProbeRun* find(std::uint32_t id) {
    auto it = runs_.find(id);
    return it == runs_.end() ? nullptr : it->second.get();
  }

  /// Drops the run once nobody waits for it and nothing of it is alive.
  void release_if_done(std::uint32_t id) {
    auto it = runs_.find(id);
    if (it != runs_.end() && it->second->waited && it->second->ended && !it->second->group_alive) runs_.erase(it);
  }

  static void append(ProbeRun& run, std::string_view bytes) {
    const std::size_t room = run.output_limit > run.output.size() ? run.output_limit - run.output.size() : 0;
    if (bytes.size() > room) run.truncated = true;
    run.output.append(bytes.data(), std::min(room, bytes.size()));
  }

  /// The keeper is gone: every run has ended, nothing of them is left to wait for.
  void end_all() {
    for (auto& entry : runs_) {
      entry.second->ended = true;
      entry.second->group_alive = false;
    }
    for (auto it = runs_.begin(); it != runs_.end();) {
      it = it->second->waited ? runs_.erase(it) : std::next(it);
    }
  }

  std::size_t size() const { return runs_.size(); }

 private:
  std::uint32_t first_;
  std::map<std::uint32_t, std::shared_ptr<ProbeRun>> runs_;
  std::uint32_t next_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_PROBE_TABLE_HPP
