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

  /// `cancelled_locked` (called under the lock) ends the wait early.
  ProbeResult run(const ProbeCommand& command, Clock::time_point deadline, const std::function<bool()>& cancelled_locked) {
    ProbeResult result;
    if (command.argv.empty() || command.argv[0].empty()) {
      result.error = "the probe's command is empty";
      return result;
    }
    std::shared_ptr<ProbeRun> run;
    {
      std::lock_guard<std::mutex> lock(s_.mutex);
      if (s_.keeper_gone) {
        result.error = "cannot run " + command.argv[0] + ": the keeper process is gone";
        return result;
      }
      run = s_.probes.add(command.output_limit);
      if (!run) {
        result.error = "cannot run " + command.argv[0] + ": too many probes at once";
        return result;
      }
    }
    CoreRequest request;
    Pipe pipe;
    try {
      LaunchPlan plan = make_launch_plan(spec_of(command), s_.config, s_.options.extra_environment);
      plan.envp.erase(std::remove_if(plan.envp.begin(), plan.envp.end(),
                                     [](const std::string& e) { return e.rfind("PYMANAGER_OWNER=", 0) == 0; }),
                      plan.envp.end());
      plan.envp.push_back(owner_marker(s_.token) + std::to_string(run->id));
      pipe = make_pipe(O_NONBLOCK);
      // The write end blocks: a probe must never see EAGAIN on its stdout.
      ::fcntl(pipe.write.get(), F_SETFL, 0);
      // One pipe for stdout and stderr: the output keeps the order it came in.
      request = ProcessCore::spawn_request(run->id, plan, std::move(pipe.write), UniqueFd());
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(s_.mutex);
      run->ended = run->waited = true;
      s_.probes.release_if_done(run->id);
      result.error = e.what();
      return result;
    }
    std::unique_lock<std::mutex> lock(s_.mutex);
    s_.core->watch_output(run->id, std::move(pipe.read), UniqueFd(), run);
    s_.core->submit(std::move(request));
    s_.changed.wait_until(lock, deadline, [&] { return run->ended || s_.keeper_gone || cancelled_locked(); });
    if (!run->ended && !s_.keeper_gone) {
      result.timed_out = Clock::now() >= deadline;
      result.cancelled = !result.timed_out;
      // Queued after the spawn: it reaches the probe's group once it exists.
      s_.core->signal_group(run->id, SIGKILL);
      s_.changed.wait_for(lock, std::chrono::seconds(5), [&] { return run->ended || s_.keeper_gone; });
    }
    // What it left: the rest of its group, and its daemons.
    if (run->group_alive) s_.core->signal_group(run->id, SIGKILL);
    if (run->spawned) s_.core->signal_daemons(run->id, SIGKILL);
    if (!result.timed_out && !result.cancelled) {
      result.exit = run->exit;
      if (!run->spawned && run->ended && run->spawn_errno != 0) result.error = spawn_error(command, *run);
      if (!run->ended) result.error = "cannot run " + command.argv[0] + ": the keeper process is gone";
    }
    result.output = run->output;
    result.truncated = run->truncated;
    run->waited = true;
    s_.probes.release_if_done(run->id);
    return result;
  }

 private:
  static ProcessSpec spec_of(const ProbeCommand& command) {
    ProcessSpec spec;
    spec.name = command.argv[0];
    spec.executable = command.argv[0];
    spec.arguments.assign(command.argv.begin() + 1, command.argv.end());
    spec.working_directory = command.working_directory;
    spec.environment = command.environment;
    return spec;
  }

  static std::string spawn_error(const ProbeCommand& command, const ProbeRun& run) {
    std::string why = std::strerror(run.spawn_errno);
    if (run.spawn_stage != SpawnStage::exec) why = std::string(describe_stage(run.spawn_stage)) + ": " + why;
    return "cannot run " + command.argv[0] + ": " + why;
  }

  ManagerShared& s_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_PROBE_RUNNER_HPP
