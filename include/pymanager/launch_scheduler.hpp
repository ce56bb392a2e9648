// pymanager: what starts when. The launch scheduler holds the dependency
// graph: in a file with `depends_on`, a process may start once each of its
// dependencies reached its condition ("started": spawned; "verified": its
// verifier passed, or it was spawned when it has none); in a file without
// it, each process waits for the previous one to be verified, exactly as
// the original ran them. It also knows the order of the shutdown (a process
// stops only after everything that depends on it has), and runs verifiers
// on a bounded pool of threads. The first failure of a start-up (a spawn or
// a verifier) is reported to it: from then on nothing new is handed out, and
// the verifiers still running see themselves cancelled.
//
// The scheduler itself is plain data: the Manager calls it under its lock.
#ifndef PYMANAGER_LAUNCH_SCHEDULER_HPP
#define PYMANAGER_LAUNCH_SCHEDULER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "pymanager/config.hpp"
#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {

class LaunchScheduler {
 public:
  explicit LaunchScheduler(const Config& config) : size_(config.processes.size()), graph_(config.uses_dependencies()) {
    names_.reserve(size_);
    for (const auto& spec : config.processes) names_.push_back(spec.name);
    needs_.resize(size_);
    waiters_.resize(size_);
    dependencies_.resize(size_);
    dependents_.resize(size_);
    for (std::size_t i = 0; i < size_; ++i) {
      const auto& spec = config.processes[i];
      if (graph_) {
        if (!spec.depends_on) continue;
        for (const auto& dependency : *spec.depends_on) {
          needs_[i].push_back({dependency.index, dependency.condition});
          waiters_[dependency.index].push_back({i, dependency.condition});
          dependencies_[i].push_back(dependency.index);
          dependents_[dependency.index].push_back(i);
        }
      } else if (i > 0) {
        // The original's order: after the previous one's verifier passed.
        needs_[i].push_back({i - 1, DependencyCondition::verified});
        waiters_[i - 1].push_back({i, DependencyCondition::verified});
      }
    }
    reset();
  }

  /// Forgets every milestone: a new start-up.
  void reset() {
    started_.assign(size_, false);
    verified_.assign(size_, false);
    taken_.assign(size_, false);
    unmet_.assign(size_, 0);
    verified_count_ = 0;
    failure_.reset();
    ready_.clear();
    for (std::size_t i = 0; i < size_; ++i) {
      unmet_[i] = needs_[i].size();
      if (unmet_[i] == 0) ready_.push_back(i);
    }
  }

  /// True when the file has `depends_on` (start-up and shutdown as a graph).
  bool uses_graph() const { return graph_; }

  /// The processes that may be launched now and were not handed out yet,
  /// at most `limit` of them, in file order among those ready together.
  std::vector<std::size_t> take_launchable(std::size_t limit = static_cast<std::size_t>(-1)) {
    std::vector<std::size_t> out;
    if (failure_) return out;  // nothing new starts after a failure
    while (!ready_.empty() && out.size() < limit) {
      std::size_t i = ready_.front();
      ready_.pop_front();
      if (taken_[i]) continue;
      taken_[i] = true;
      out.push_back(i);
    }
    return out;
  }

  /// The process was spawned.
  void mark_started(std::size_t i) {
    if (started_[i]) return;
    started_[i] = true;
    release(i, DependencyCondition::started);
  }

  /// Its verifier passed (or it has none and was spawned).
  void mark_verified(std::size_t i) {
    mark_started(i);
    if (verified_[i]) return;
    verified_[i] = true;
    ++verified_count_;
    release(i, DependencyCondition::verified);
  }

  /// True when take_launchable() would return something.
  bool has_launchable() const { return !failure_ && !ready_.empty(); }

  /// The start-up failed: a spawn or a verifier (`message` names the
  /// process). Only the first failure counts; true when this was it.
  bool report_failure(ErrorKind kind, std::string message) {
    if (failure_) return false;
    failure_.emplace(kind, std::move(message));
    return true;
  }
  bool failed() const { return failure_.has_value(); }
  /// The first failure reported since reset(), if any.
  const std::optional<Error>& first_failure() const { return failure_; }

  bool all_verified() const { return verified_count_ == size_; }
  bool launched(std::size_t i) const { return taken_[i]; }

  /// The names of what `i` still waits for before it may start.
  std::vector<std::string> waiting_for(std::size_t i) const {
    std::vector<std::string> out;
    if (taken_[i]) return out;
    for (const auto& need : needs_[i]) {
      bool met = need.condition == DependencyCondition::started ? started_[need.index] : verified_[need.index];
      if (!met) out.push_back(names_[need.index]);
    }
    return out;
  }

  /// What `i` depends on, and what depends on it (`depends_on` only: a file
  /// without it has no shutdown order).
  const std::vector<std::size_t>& dependencies(std::size_t i) const { return dependencies_[i]; }
  const std::vector<std::size_t>& dependents(std::size_t i) const { return dependents_[i]; }

  /// Each process's place on its longest dependency chain: 1 for a process
  /// that depends on nothing, else one more than its deepest dependency's
  /// (all 1 without `depends_on`). The graph's waves, in `pymanager check`.
  std::vector<std::size_t> chain_depths() const {
    std::vector<std::size_t> depth(size_, 1);
    if (!graph_) return depth;
    // Longest paths in a DAG (the parser refused cycles), by Kahn's order.
    std::vector<std::size_t> indegree(size_, 0);
    for (std::size_t i = 0; i < size_; ++i) indegree[i] = dependencies_[i].size();
    std::vector<std::size_t> queue;
    for (std::size_t i = 0; i < size_; ++i) {
      if (indegree[i] == 0) queue.push_back(i);
    }
    for (std::size_t k = 0; k < queue.size(); ++k) {
      std::size_t i = queue[k];
      for (std::size_t d : dependents_[i]) {
        depth[d] = std::max(depth[d], depth[i] + 1);
        if (--indegree[d] == 0) queue.push_back(d);
      }
    }
    return depth;
  }

  /// The number of processes on the longest dependency chain (1 without
  /// `depends_on`): a shutdown takes at most that many stop plans in turn.
  std::size_t chain_length() const {
    const auto depth = chain_depths();
    return depth.empty() ? 0 : *std::max_element(depth.begin(), depth.end());
  }

 private:
  struct Need {
    std::size_t index;
    DependencyCondition condition;
  };

  void release(std::size_t i, DependencyCondition reached) {
    for (const auto& waiter : waiters_[i]) {
      if (waiter.condition != reached || unmet_[waiter.index] == 0) continue;
      if (--unmet_[waiter.index] == 0) ready_.push_back(waiter.index);
    }
  }

  std::size_t size_;
  bool graph_;
  std::vector<std::string> names_;
  std::vector<std::vector<Need>> needs_;    ///< what each process waits for
  std::vector<std::vector<Need>> waiters_;  ///< who waits for each process (index: the waiter)
  std::vector<std::vector<std::size_t>> dependencies_;
  std::vector<std::vector<std::size_t>> dependents_;
  std::vector<bool> started_, verified_, taken_;
  std::vector<std::size_t> unmet_;
  std::size_t verified_count_ = 0;
  std::deque<std::size_t> ready_;
  std::optional<Error> failure_;
};

/// Runs jobs (verifiers) on at most `max_threads` threads, started as they
/// are needed. join() waits for every job; the jobs must end by themselves
/// (a verifier ends at its timeout, or at once when it is cancelled).
class VerifierPool {
 public:
  explicit VerifierPool(std::size_t max_threads) : max_threads_(std::max<std::size_t>(1, max_threads)) {}
  VerifierPool(const VerifierPool&) = delete;
  VerifierPool& operator=(const VerifierPool&) = delete;
  ~VerifierPool() { join(); }

  void submit(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(job));
    // A new thread unless an idle one is free for this job.
    if (jobs_.size() > idle_ && threads_.size() < max_threads_) {
      threads_.emplace_back([this] { run(); });
    } else {
      wake_.notify_one();
    }
  }

  void join() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closing_ = true;
    }
    wake_.notify_all();
    for (auto& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
    threads_.clear();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      if (!jobs_.empty()) {
        auto job = std::move(jobs_.front());
        jobs_.pop_front();
        lock.unlock();
        job();
        lock.lock();
        continue;
      }
      if (closing_) return;
      ++idle_;
      wake_.wait(lock, [&] { return closing_ || !jobs_.empty(); });
      --idle_;
    }
  }

  std::size_t max_threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  std::size_t idle_ = 0;
  bool closing_ = false;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_LAUNCH_SCHEDULER_HPP
