// pymanager: how a process is stopped, as data: a list of steps, each a
// signal and how long to wait for the process (its whole group and its
// daemons) to be gone before the next step. One plan serves shutdown, stop,
// restart and the API; one runner (StopRun) says what is due when.
#ifndef PYMANAGER_STOP_PLAN_HPP
#define PYMANAGER_STOP_PLAN_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <csignal>
#include <string>
#include <vector>

#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

struct StopStep {
  int signal = SIGTERM;
  /// How long to wait after sending it before the next step (or, after the
  /// last step, before giving up on the process).
  Clock::duration wait{};
};

/// How long a process gets after SIGKILL to be reaped before the stop is
/// reported as failed. SIGKILL cannot be ignored; this covers a process in
/// uninterruptible sleep (a hung NFS mount).
constexpr std::chrono::seconds kKillWait{10};

struct StopPlan {
  std::vector<StopStep> steps;

  /// `signal`, `grace` seconds, then SIGKILL (the usual plan).
  static StopPlan graceful(int signal, double grace) {
    StopPlan plan;
    if (signal != SIGKILL) plan.steps.push_back({signal, seconds_to_duration(grace)});
    plan.steps.push_back({SIGKILL, kKillWait});
    return plan;
  }
  /// SIGKILL at once (a forced shutdown, ServiceControl::kill).
  static StopPlan kill_now() { return graceful(SIGKILL, 0); }

  /// The longest the plan can take.
  Clock::duration bound() const {
    Clock::duration total{};
    for (const auto& step : steps) total += step.wait;
    return total;
  }
};

/// A plan being carried out. `due()` says when the next step is due;
/// `advance()` returns the step to carry out now (its signal), if any.
class StopRun {
 public:
  StopRun(StopPlan plan, Clock::time_point now) : plan_(std::move(plan)), next_at_(now) {}

  /// When something is due: the next step, or the end of the last wait.
  Clock::time_point due() const { return next_at_; }
  /// True once every step was carried out and the last wait is over.
  bool exhausted(Clock::time_point now) const { return next_ >= plan_.steps.size() && now >= next_at_; }
  bool killing() const { return next_ > 0 && plan_.steps[next_ - 1].signal == SIGKILL; }
  /// The signal of the step taken last, or 0 before the first.
  int last_signal() const { return next_ > 0 ? plan_.steps[next_ - 1].signal : 0; }

  /// The step to carry out now, or nullptr when none is due.
  const StopStep* advance(Clock::time_point now) {
    if (next_ >= plan_.steps.size() || now < next_at_) return nullptr;
    const StopStep* step = &plan_.steps[next_++];
    next_at_ = now + step->wait;
    return step;
  }

  /// Replaces the rest of the plan (a forced shutdown during a graceful
  /// stop): the new plan's first step is due at once.
  void replace(StopPlan plan, Clock::time_point now) {
    plan_ = std::move(plan);
    next_ = 0;
    next_at_ = now;
  }

  const StopPlan& plan() const { return plan_; }

 private:
  StopPlan plan_;
  std::size_t next_ = 0;
  Clock::time_point next_at_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_STOP_PLAN_HPP
