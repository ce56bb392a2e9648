// pymanager: the probe runner: runs one ProbeCommand through the keeper and
// waits for its end, bounded by the deadline (then SIGKILL to its group, and
// a bounded wait for that). Whatever the probe left behind in its group, or
// as daemons, is killed when it ends, so that nothing of it outlives the call.
#ifndef PYMANAGER_DETAIL_PROBE_RUNNER_HPP
#define PYMANAGER_DETAIL_PROBE_RUNNER_HPP

#include <fcntl.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/manager_shared.hpp"
#include "pymanager/detail/owner_mark.hpp"
#include "pymanager/detail/probe_table.hpp"
#include "pymanager/error.hpp"
#include "pymanager/process.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

class ProbeRunner {
 public:
  explicit ProbeRunner(ManagerShared& s) : s_(s) {}

  /// `cancelled_locked` (called under the lock) ends the wait early. The
  /// wait is bounded by `deadline`, then by 5 s for the kill to be seen.
  /// With `process`, the command runs as that process would: in its working
  /// directory, with its environment_file and environment.
  ProbeResult run(const ProbeCommand& command, Clock::time_point deadline, const std::function<bool()>& cancelled_locked,
                  const ProcessSpec* process = nullptr) {
    ProbeResult result;
    if (command.argv.empty() || command.argv[0].empty()) {
      result.error = "the probe's command is empty";
      return result;
    }
    const std::string what = "cannot run probe '" + command.argv[0] + "'";
    // Counted, so that the Manager's destructor waits for this call to end.
    Call call(s_);
    std::shared_ptr<ProbeRun> run;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      if (s_.keeper_gone) {
        result.error = what + ": the keeper process is gone";
        return result;
      }
      // Nothing is spawned only to be killed at once.
      if (cancelled_locked()) {
        result.cancelled = true;
        return result;
      }
      if (Clock::now() >= deadline) {
        result.timed_out = true;
        return result;
      }
      run = s_.probes.add(command.output_limit);
      if (!run) {
        result.error = what + ": " + std::to_string(ProbeTable::kIds) + " probes are running already";
        return result;
      }
    }
    // Whatever ends this call early gives the id back.
    Release release(s_, run);
    CoreRequest request;
    Pipe pipe;
    try {
      LaunchPlan plan = make_launch_plan(spec_of(command, process), s_.config, s_.options.extra_environment);
      plan.envp.erase(std::remove_if(plan.envp.begin(), plan.envp.end(),
                                     [](const std::string& e) { return e.rfind("PYMANAGER_OWNER=", 0) == 0; }),
                      plan.envp.end());
      plan.envp.push_back(owner_marker(s_.token) + std::to_string(run->id));
      pipe = make_pipe(O_NONBLOCK);
      // The write end blocks: a probe must never see EAGAIN on its stdout.
      ::fcntl(pipe.write.get(), F_SETFL, 0);
      // One pipe for stdout and stderr: the output keeps the order it came in.
      request = ProcessCore::spawn_request(run->id, plan, std::move(pipe.write), UniqueFd());
    } catch (const std::exception& e) {
      result.error = probe_message(what, command.argv[0], e.what());
      return result;
    }
    std::unique_lock<std::mutex> lock(s_.mutex);
    s_.core->watch_output(run->id, std::move(pipe.read), UniqueFd(), run);
    s_.core->submit(std::move(request));
    release.submitted = true;
    s_.changed.wait_until(lock, deadline, [&] { return run->ended || s_.keeper_gone || cancelled_locked(); });
    if (!run->ended && !s_.keeper_gone) {
      result.timed_out = Clock::now() >= deadline;
      result.cancelled = !result.timed_out;
      // Queued after the spawn: it reaches the probe's group once it exists.
      s_.core->signal_group(run->id, SIGKILL);
      s_.changed.wait_for(lock, std::chrono::seconds(5), [&] { return run->ended || s_.keeper_gone; });
    }
    if (!s_.keeper_gone) {
      // What it left: the rest of its group, and its daemons.
      if (run->group_alive) s_.core->signal_group(run->id, SIGKILL);
      if (run->spawned) s_.core->signal_daemons(run->id, SIGKILL);
    }
    if (!result.timed_out && !result.cancelled) {
      result.exit = run->exit;
      if (!run->spawned && run->spawn_errno != 0) {
        result.error = spawn_error(what, *run);
      } else if (!run->exit) {
        result.error = what + (s_.keeper_gone ? ": the keeper process is gone" : ": the keeper did not answer");
      }
    }
    result.output = run->output;
    result.truncated = run->truncated;
    return result;
  }

 private:
  /// One run_probe call under way, counted in ManagerShared::probe_calls.
  struct Call {
    explicit Call(ManagerShared& s) : s(s) {
      std::lock_guard<std::mutex> lock(s.mutex);
      ++s.probe_calls;
    }
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;
    // Notified under the lock: once the count is 0 the Manager's destructor
    // may destroy the condition variable.
    ~Call() {
      std::lock_guard<std::mutex> lock(s.mutex);
      --s.probe_calls;
      s.changed.notify_all();
    }
    ManagerShared& s;
  };

  /// Hands the run back to the table (at once, or once its group is empty).
  struct Release {
    Release(ManagerShared& shared, std::shared_ptr<ProbeRun> r) : s(shared), run(std::move(r)) {}
    Release(const Release&) = delete;
    Release& operator=(const Release&) = delete;
    // run()'s own lock is declared after this, so it is released first.
    ~Release() {
      std::lock_guard<std::mutex> lock(s.mutex);
      run->waited = true;
      if (!submitted) run->ended = true;  // never sent: no event will come
      s.probes.release_if_done(run->id);
    }
    ManagerShared& s;
    std::shared_ptr<ProbeRun> run;
    bool submitted = false;  ///< the spawn was queued: its events will come
  };

  static ProcessSpec spec_of(const ProbeCommand& command, const ProcessSpec* process) {
    ProcessSpec spec;
    spec.name = command.argv[0];
    spec.executable = command.argv[0];
    spec.arguments.assign(command.argv.begin() + 1, command.argv.end());
    if (process != nullptr) {
      spec.working_directory = process->working_directory;
      spec.environment_file = process->environment_file;
      spec.environment = process->environment;
    } else {
      spec.working_directory = command.working_directory;
      spec.environment = command.environment;
    }
    return spec;
  }

  /// make_launch_plan names a process ("cannot start process 'x' ..."): here it is a probe.
  static std::string probe_message(const std::string& what, const std::string& name, const std::string& message) {
    const std::string process = "cannot start process '" + name + "'";
    if (message.rfind(process, 0) == 0) return what + message.substr(process.size());
    return what + ": " + message;
  }

  static std::string spawn_error(const std::string& what, const ProbeRun& run) {
    std::string why = std::strerror(run.spawn_errno);
    if (run.spawn_stage != SpawnStage::exec) why = std::string(describe_stage(run.spawn_stage)) + ": " + why;
    return what + ": " + why;
  }

  ManagerShared& s_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_PROBE_RUNNER_HPP
