// pymanager: the Manager: launches the configured processes (in file order,
// or as a dependency graph with `depends_on`), verifies them, forwards their
// output, owns the daemons they leave, and stops them all.
//
// How it is built (one concept per header):
// - process_state.hpp: each process's state, with every transition in one table;
// - launch_scheduler.hpp: what starts when, and the pool that runs verifiers;
// - stop_plan.hpp: how a process is stopped, as data;
// - output.hpp: output lines as events, and a writer that never blocks;
// - detail/process_core.hpp: the keeper behind a narrow, typed interface.
//
// Threads: the callers' (start, restart, the API's), the verifier pool's
// during start(), and the process core's event loop (detail/process_core.hpp),
// which delivers the keeper's events and the children's output lines to the
// Manager and runs its stop plans' timers. All state sits behind one mutex, which is never held across
// I/O to another process: requests to the keeper are queued under it and
// sent by the event thread without blocking, log messages are written after
// it is released, and the terminal output goes through a non-blocking
// writer. Every wait has a bound.
#ifndef PYMANAGER_MANAGER_HPP
#define PYMANAGER_MANAGER_HPP

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <system_error>
#include <vector>

#include "pymanager/config.hpp"
#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/process_core.hpp"
#include "pymanager/error.hpp"
#include "pymanager/launch_scheduler.hpp"
#include "pymanager/output.hpp"
#include "pymanager/process.hpp"
#include "pymanager/process_state.hpp"
#include "pymanager/stop_plan.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

/// The states reported by `GET /status`, with the original's strings.
enum class ManagerState { booting, parsing_modules, launching, running, shutdown, force_shutdown };

inline const char* to_string(ManagerState state) {
  switch (state) {
    case ManagerState::booting: return "booting";
    case ManagerState::parsing_modules: return "parsing modules";
    case ManagerState::launching: return "launching processes";
    case ManagerState::running: return "running";
    case ManagerState::shutdown: return "shutdown";
    case ManagerState::force_shutdown: return "force shutdown";
  }
  return "unknown";
}

struct ManagerOptions {
  /// Where the children's output lines go (prefixed with the process name).
  /// Default: standard output; -1: nowhere (on_output still gets them).
  /// Written without ever blocking: when nobody reads it, lines are dropped
  /// and counted ("N lines not shown, stdout is not being read").
  int output_fd = STDOUT_FILENO;
  /// Color the name prefixes. Default: when `output_fd` is a terminal.
  std::optional<bool> color;
  /// Receives the manager's own messages (one line, no newline), never with
  /// the Manager's lock held. Default: "pymanager: <message>" on standard
  /// error, written without blocking. It must be thread-safe, quick (it runs
  /// on the event thread too) and must not call back into the Manager.
  std::function<void(const std::string&)> log;
  /// Also log the life cycle: launches, verifications, signals sent, daemons.
  bool verbose = false;
  /// How many of each process's last output lines are kept for diagnosis.
  std::size_t output_lines_kept = 1000;
  /// Called on the event thread (without the Manager's lock held) whenever a
  /// process's main process exits, after every line it printed before was
  /// delivered; `expected` is false for an exit nobody asked for (not a stop,
  /// a shutdown or a one-shot step's verified exit).
  std::function<void(const ProcessInfo& process, bool expected)> on_exit;
  /// Receives every output line of every process, on the event thread,
  /// before any formatting (see output.hpp). Must not block.
  OutputSubscriber on_output;
  /// Extra `NAME=value` entries for every child's environment.
  std::vector<std::string> extra_environment;
  /// At most this many verifiers run at once during start().
  std::size_t verifier_threads = 32;
};

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
  std::size_t illegal_transitions() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return illegal_transitions_;
  }
  /// The keeper process's pid (for diagnosis and fault injection).
  pid_t keeper_pid() const { return core_->keeper_pid(); }
  const Config& config() const { return config_; }
  std::size_t size() const { return procs_.size(); }

  std::vector<ProcessInfo> processes() const;
  /// One process by 0-based index.
  ProcessInfo process(std::size_t index) const;
  /// The 0-based index of the process named `name`, or nullopt.
  std::optional<std::size_t> index_of(const std::string& name) const;
  /// The last `lines` lines the process printed (stdout and stderr), oldest first.
  std::vector<std::string> output_tail(std::size_t index, std::size_t lines) const;

  /// Stops one process with its stop plan (its stop signal, SIGKILL after
  /// `grace` seconds; default its graceful time) and its daemons with it;
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

 private:
  struct Proc;
  struct RunOutput;
  class Operation;
  class Context;
  struct Effects;
  class Listener;

  // Launching.
  /// Spawns in flight at once: the keeper serves them one by one, and each
  /// holds four descriptors until it is sent.
  static constexpr std::size_t kMaxSpawnsInFlight = 256;
  std::size_t descriptors_needed(bool separate_streams) const;
  void check_descriptor_budget();
  void begin_launch(std::size_t i);
  void launch_and_verify_now(std::size_t i);
  void run_verifier(std::size_t i);
  VerifyResult call_verifier(std::size_t i);
  std::string failure_message(std::size_t i, const VerifyResult& result) const;
  void wait_spawned_locked(std::unique_lock<std::mutex>& lock, std::size_t i);
  std::string spawn_failure_locked(std::size_t i) const;
  void after_verified_locked(std::size_t i, bool passed);
  // Stopping.
  void begin_stop_locked(std::size_t i, StopPlan plan, Effects& fx);
  void advance_stop_locked(std::size_t i, Clock::time_point now, Effects& fx);
  void stop_and_wait(std::size_t i, StopPlan plan, std::unique_lock<std::mutex>& lock);
  void begin_shutdown_locked(bool force, Effects& fx);
  void on_quiet_locked(std::size_t i, Effects& fx);
  bool dependents_quiet_locked(std::size_t i) const;
  void update_quiet_locked(std::size_t i, Effects& fx);
  void maybe_end_when_all_exited_locked(Effects& fx);
  StopPlan shutdown_plan(std::size_t i) const;
  // The event loop's calls (see Listener).
  void on_core_event(const detail::CoreEvent& event);
  void handle_event(const detail::CoreEvent& event, Effects& fx);
  void on_exited(std::size_t i, const detail::CoreEvent& event);
  void on_keeper_lost();
  Clock::time_point on_tick(Clock::time_point now);
  void run_timers(Clock::time_point now, Effects& fx);
  void write_redirect(RunOutput& output, std::string_view bytes);
  void deliver(std::size_t i, OutputStream stream, std::string_view text, bool complete);
  void service_writers();
  std::string output_name() const;
  // Small things.
  void set_state_locked(std::size_t i, ProcessState to);
  ProcessInfo info_locked(std::size_t i) const;
  void check_index(std::size_t index) const;
  void log(const std::string& message) const { log_(message); }
  void run(Effects& fx);
  void wake() const;
  static std::string quote(const std::string& name) { return "'" + name + "'"; }

  Config config_;
  ManagerOptions options_;
  std::string token_;  ///< this manager's mark in every child's environment
  rlim_t child_nofile_ = 0;
  std::unique_ptr<StreamWriter> out_writer_;
  std::unique_ptr<StreamWriter> log_writer_;  ///< for the default log only
  std::function<void(const std::string&)> log_;
  std::unique_ptr<detail::TerminalPrinter> printer_;
  detail::TailBuffers tails_;
  std::unique_ptr<detail::ProcessCore> core_;
  std::unique_ptr<Listener> listener_;
  std::vector<std::unique_ptr<Proc>> procs_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  LaunchScheduler scheduler_;
  ManagerState state_ = ManagerState::booting;
  bool shutdown_begun_ = false;
  bool startup_failed_ = false;  ///< cancels the verifiers still running
  std::string startup_failure_;
  ErrorKind startup_failure_kind_ = ErrorKind::verify_failed;
  bool finished_ = false;
  bool stopping_ = false;  ///< the destructor asks the event thread to end
  bool keeper_gone_ = false;
  bool keeper_lost_ = false;
  std::size_t illegal_transitions_ = 0;
  /// Too few descriptors for two pipes per process: one each (set by start()).
  std::atomic<bool> merge_streams_{false};
  std::size_t busy_ = 0;        ///< processes not quiet (something of them alive, or a spawn in flight)
  std::size_t spawns_in_flight_ = 0;
  int operations_ = 0;          ///< stop/start/restart calls under way
  std::vector<std::size_t> to_verify_;  ///< spawned during start(), for the verifier pool
  std::multimap<Clock::time_point, std::size_t> timers_;  ///< stop plan steps due
  std::vector<pid_t> orphans_;  ///< daemons no process claims
  std::map<pid_t, std::uint64_t> daemon_starts_;  ///< every daemon's start time, to recognise it later
  Clock::time_point next_report_{};
  Clock::time_point next_drop_notice_{};  ///< event thread only
  std::thread event_thread_;
};

// ===========================================================================
// Implementation. Nothing below is part of the interface.

struct Manager::Proc {
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
  bool exit_expected = false;  ///< a stop or shutdown was asked for, or the verifier waits for the exit
  bool verify_in_pool = false;  ///< launched by start(): the pool runs its verifier
  int spawn_errno = 0;
  detail::SpawnStage spawn_stage{};
  std::string working_directory;  ///< of the launch in flight, for messages
  Clock::time_point spawn_asked{};
  std::vector<pid_t> daemons;
  std::optional<StopRun> stop;
  bool killed = false;
  /// Still alive after its whole stop plan (SIGKILL cannot reach a process
  /// in uninterruptible sleep): given up on, so that nothing waits for ever.
  bool abandoned = false;
  bool failed = false;  ///< this run failed (spawn or verifier): its stop ends in `failed`
};

/// Where one run's output bytes go besides the events: its redirect_output
/// file. Touched by the event loop only, once the run is launched.
struct Manager::RunOutput {
  std::size_t index = 0;
  detail::UniqueFd file;  ///< redirect_output, or none
  /// redirect_output to something that can block (a FIFO, /dev/stdout as a
  /// pipe, a terminal): written without blocking, like the terminal output.
  std::unique_ptr<StreamWriter> file_writer;
  std::string file_path;
  bool file_failed = false;
};

/// The Manager as the event loop's listener.
class Manager::Listener : public detail::CoreListener {
 public:
  explicit Listener(Manager& m) : m_(m) {}
  void on_event(const detail::CoreEvent& event) override { m_.on_core_event(event); }
  void on_keeper_lost() override { m_.on_keeper_lost(); }
  Clock::time_point on_tick(Clock::time_point now) override { return m_.on_tick(now); }

 private:
  Manager& m_;
};

/// What to do once the lock is released: messages to log, exits to report.
struct Manager::Effects {
  std::vector<std::string> logs;
};

/// One stop/start/restart: serialized per process, refused during start-up
/// and shutdown, and counted so that its own exit does not end a manager
/// without keep-alive.
class Manager::Operation {
 public:
  Operation(Manager& m, std::size_t index, const char* verb) : m_(m) {
    m_.check_index(index);
    const std::string what = std::string("cannot ") + verb + " process " + quote(m_.procs_[index]->spec.name);
    // Checked before waiting for the process's own lock too: a refusal must
    // not wait for an operation under way.
    {
      std::lock_guard<std::mutex> lock(m_.mutex_);
      check_allowed_locked(what);
    }
    lock_ = std::unique_lock<std::mutex>(m_.procs_[index]->operation);
    std::lock_guard<std::mutex> lock(m_.mutex_);
    check_allowed_locked(what);
    ++m_.operations_;
  }
  Operation(const Operation&) = delete;
  Operation& operator=(const Operation&) = delete;
  ~Operation() {
    Effects fx;
    {
      std::lock_guard<std::mutex> lock(m_.mutex_);
      --m_.operations_;
      m_.maybe_end_when_all_exited_locked(fx);
    }
    m_.run(fx);
  }

 private:
  void check_allowed_locked(const std::string& what) const {
    if (m_.shutdown_begun_) throw Error(ErrorKind::shutting_down, what + ": shutdown has begun");
    if (m_.state_ == ManagerState::booting || m_.state_ == ManagerState::launching) {
      throw Error(ErrorKind::conflict, what + ": the processes are still being launched");
    }
  }

  Manager& m_;
  std::unique_lock<std::mutex> lock_;
};

/// What a verifier sees: every wait ends early when shutdown begins or the
/// start-up failed elsewhere.
class Manager::Context : public VerifyContext {
 public:
  Context(Manager& manager, std::size_t index) : m_(manager), index_(index) {}
  const std::string& process_name() const override { return m_.procs_[index_]->spec.name; }
  int pid() const override {
    std::lock_guard<std::mutex> lock(m_.mutex_);
    return m_.procs_[index_]->pid;
  }
  bool sleep_until(Clock::time_point until) override {
    std::unique_lock<std::mutex> lock(m_.mutex_);
    const bool had_exited = m_.procs_[index_]->exit.has_value();
    return !m_.changed_.wait_until(lock, until, [&] {
      return cancelled_locked() || (!had_exited && m_.procs_[index_]->exit.has_value());
    });
  }
  std::optional<ExitStatus> wait_exit(Clock::time_point until) override {
    std::unique_lock<std::mutex> lock(m_.mutex_);
    m_.changed_.wait_until(lock, until, [&] { return cancelled_locked() || m_.procs_[index_]->exit.has_value(); });
    return m_.procs_[index_]->exit;
  }
  std::optional<ExitStatus> exit_status() const override {
    std::lock_guard<std::mutex> lock(m_.mutex_);
    return m_.procs_[index_]->exit;
  }
  bool cancelled() const override {
    std::lock_guard<std::mutex> lock(m_.mutex_);
    return cancelled_locked();
  }
  void log(MessageCategory category, const std::string& message) override {
    const auto& messages = m_.config_.messages;
    bool show = category == MessageCategory::verifier_fail ? messages.verifier_fail : messages.verifier_verbose;
    if (show) m_.log("verifier of '" + process_name() + "': " + message);
  }

 private:
  bool cancelled_locked() const {
    return m_.shutdown_begun_ || (m_.startup_failed_ && m_.procs_[index_]->verify_in_pool);
  }
  Manager& m_;
  std::size_t index_;
};

namespace detail {

/// 16 hex digits, different for every Manager.
inline std::string random_token() {
  unsigned char bytes[8] = {};
  if (::getrandom(bytes, sizeof bytes, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof bytes)) {
    auto now = static_cast<unsigned long long>(Clock::now().time_since_epoch().count()) ^
               (static_cast<unsigned long long>(::getpid()) << 32);
    std::memcpy(bytes, &now, sizeof bytes);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

/// True when /proc/PID/environ holds `marker` ("PYMANAGER_OWNER=<token>:")
/// as the start of an entry.
inline bool process_has_marker(pid_t pid, const std::string& marker) {
  UniqueFd fd(::open(("/proc/" + std::to_string(pid) + "/environ").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  std::string text;
  char buffer[65536];
  // An environment is at most a few MiB: read at most 8.
  for (int round = 0; round < 128; ++round) {
    ssize_t n = retry_eintr([&] { return ::read(fd.get(), buffer, sizeof buffer); });
    if (n <= 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  for (std::size_t at = 0; at < text.size();) {
    if (text.compare(at, marker.size(), marker) == 0) return true;
    std::size_t end = text.find('\0', at);
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return false;
}

/// Every process on the machine whose environment carries `marker`.
inline std::vector<pid_t> processes_with_marker(const std::string& marker) {
  std::vector<pid_t> out;
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr) return out;
  const pid_t self = ::getpid();
  while (struct dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (pid <= 0 || *end != '\0' || pid == self) continue;
    if (process_has_marker(static_cast<pid_t>(pid), marker)) out.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(dir);
  return out;
}

/// "1, 2, 3", at most 20 of them ("..., and 97 more").
inline std::string join_pids(const std::vector<pid_t>& pids) {
  std::string out;
  for (std::size_t k = 0; k < pids.size() && k < 20; ++k) out += (out.empty() ? "" : ", ") + std::to_string(pids[k]);
  if (pids.size() > 20) out += ", and " + std::to_string(pids.size() - 20) + " more";
  return out;
}

/// True when process `pid` is stopped or traced (state T or t in /proc).
inline bool keeper_is_frozen(pid_t pid) {
  UniqueFd fd(::open(("/proc/" + std::to_string(pid) + "/stat").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  char buffer[512];
  ssize_t n = retry_eintr([&] { return ::read(fd.get(), buffer, sizeof buffer - 1); });
  if (n <= 0) return false;
  buffer[n] = '\0';
  const char* close_paren = std::strrchr(buffer, ')');
  return close_paren != nullptr && close_paren[1] == ' ' && (close_paren[2] == 'T' || close_paren[2] == 't');
}

}  // namespace detail

// ------------------------------------------------------------- construction

inline Manager::Manager(Config config, ManagerOptions options)
    : config_(std::move(config)),
      options_(std::move(options)),
      token_(detail::random_token()),
      tails_(config_.processes.size(), options_.output_lines_kept),
      scheduler_(config_) {
  if (config_.processes.empty()) throw Error(ErrorKind::config_no_processes, "processes: no processes are configured");
  if (config_.base_directory.empty()) config_.base_directory = detail::current_directory();
  if (options_.output_fd >= 0) out_writer_ = std::make_unique<StreamWriter>(options_.output_fd);
  if (options_.log) {
    log_ = options_.log;
  } else {
    log_writer_ = std::make_unique<StreamWriter>(STDERR_FILENO);
    StreamWriter* writer = log_writer_.get();
    log_ = [writer](const std::string& message) { writer->write("pymanager: " + message + "\n"); };
  }
  std::size_t name_width = 0;
  for (std::size_t i = 0; i < config_.processes.size(); ++i) {
    auto proc = std::make_unique<Proc>();
    proc->spec = config_.processes[i];
    name_width = std::max(name_width, proc->spec.name.size());
    procs_.push_back(std::move(proc));
  }
  if (out_writer_) {
    printer_ = std::make_unique<detail::TerminalPrinter>(*out_writer_, name_width,
                                                         options_.color.value_or(::isatty(options_.output_fd) == 1));
  }
  // Each process needs two pipes: raise our own descriptor limit as far as
  // the hard limit allows; the children get the limit we were given.
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    child_nofile_ = limit.rlim_cur;
    const rlim_t needed = static_cast<rlim_t>(descriptors_needed(true));
    const rlim_t wanted = needed + 1024;  // and room for the host's own
    if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed) {
      limit.rlim_cur = limit.rlim_max == RLIM_INFINITY ? wanted : std::min(wanted, limit.rlim_max);
      ::setrlimit(RLIMIT_NOFILE, &limit);
    }
  }
  detail::KeeperOptions keeper_options;
  keeper_options.token = token_;
  keeper_options.child_nofile_soft = child_nofile_;
  core_ = std::make_unique<detail::ProcessCore>(std::move(keeper_options));
  core_->add_writer(out_writer_.get());
  core_->add_writer(log_writer_.get());
  listener_ = std::make_unique<Listener>(*this);
  event_thread_ = std::thread([this] { core_->run(*listener_); });
}

inline Manager::~Manager() {
  shutdown();
  wait_finished(shutdown_bound());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  core_->stop_loop();
  if (event_thread_.joinable()) event_thread_.join();
  core_->close();
  if (out_writer_) {
    out_writer_->flush(std::chrono::milliseconds(500));
    if (std::size_t dropped = out_writer_->take_dropped(true)) {
      log(std::to_string(dropped) + " lines not shown, " + output_name() +
          (out_writer_->broken() ? " was closed by its reader"
                                 : out_writer_->backlog() > 0 ? " is not being read" : " was not being read"));
    }
  }
  if (log_writer_) log_writer_->flush(std::chrono::milliseconds(500));
}

// ------------------------------------------------------------- public API

inline void Manager::start() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutdown_begun_) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    state_ = ManagerState::launching;
    scheduler_.reset();
    startup_failed_ = false;
  }
  std::optional<Error> failure;
  try {
    check_descriptor_budget();
  } catch (const Error& e) {
    failure = e;
  }
  {
    VerifierPool pool(options_.verifier_threads);
    std::unique_lock<std::mutex> lock(mutex_);
    auto next_check = Clock::now() + std::chrono::seconds(1);
    for (;;) {
      if (failure || shutdown_begun_ || startup_failed_ || keeper_gone_ || scheduler_.all_verified()) break;
      auto batch = scheduler_.take_launchable(kMaxSpawnsInFlight - std::min(kMaxSpawnsInFlight, spawns_in_flight_));
      if (!batch.empty()) {
        for (std::size_t i : batch) procs_[i]->verify_in_pool = true;
        lock.unlock();
        for (std::size_t i : batch) {
          try {
            begin_launch(i);
          } catch (const Error& e) {
            failure = e;
            break;
          }
        }
        lock.lock();
        continue;
      }
      try {
        for (std::size_t i : to_verify_) pool.submit([this, i] { run_verifier(i); });
      } catch (const std::system_error& e) {
        failure = Error(ErrorKind::system, std::string("cannot start a verifier thread: ") + e.what());
      }
      to_verify_.clear();
      if (failure) break;
      const auto now = Clock::now();
      if (now >= next_check) {
        next_check = now + std::chrono::seconds(1);
        // The keeper answers a spawn within milliseconds; 30 s covers a
        // machine that is swapping.
        for (const auto& p : procs_) {
          if (p->spawn_pending && p->verify_in_pool && now - p->spawn_asked > std::chrono::seconds(30)) {
            failure = Error(ErrorKind::spawn_failed, "cannot start process " + quote(p->spec.name) +
                                                         ": the keeper did not answer within 30s");
          }
        }
        if (failure) break;
      }
      changed_.wait_for(lock, std::chrono::milliseconds(500), [&] {
        return startup_failed_ || shutdown_begun_ || keeper_gone_ || !to_verify_.empty() || scheduler_.all_verified() ||
               (scheduler_.has_launchable() && spawns_in_flight_ < kMaxSpawnsInFlight);
      });
    }
    // Cancel the verifiers still running (their waits end at once), then join them.
    startup_failed_ = startup_failed_ || failure.has_value() || shutdown_begun_ || keeper_gone_;
    lock.unlock();
    changed_.notify_all();
    pool.join();
  }
  std::string message;
  ErrorKind kind = ErrorKind::verify_failed;
  bool requested;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& p : procs_) p->verify_in_pool = false;
    if (failure && failure->kind() != ErrorKind::shutting_down) {
      message = failure->what();
      kind = failure->kind();
    } else if (!startup_failure_.empty()) {
      message = startup_failure_;
      kind = startup_failure_kind_;
    } else if (keeper_lost_) {
      message = "the keeper process was lost during start-up";
      kind = ErrorKind::system;
    }
    requested = message.empty() && shutdown_begun_;
  }
  if (requested || !message.empty()) {
    if (!requested) log(message);
    shutdown();
    wait_finished(shutdown_bound());
    if (requested) throw Error(ErrorKind::shutting_down, "shutdown requested during start-up");
    throw Error(kind, message);
  }
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutdown_begun_) throw Error(ErrorKind::shutting_down, "shutdown requested during start-up");
    state_ = ManagerState::running;
    if (options_.verbose) fx.logs.push_back("all processes are up");
    maybe_end_when_all_exited_locked(fx);
  }
  run(fx);
}

inline void Manager::shutdown(bool force) {
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    begin_shutdown_locked(force, fx);
  }
  run(fx);
}

inline bool Manager::wait_finished(std::optional<Clock::duration> timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!timeout) {
    // Bounded in steps, so that a lost wake-up cannot hang it.
    while (!finished_) changed_.wait_for(lock, std::chrono::seconds(1));
    return true;
  }
  return changed_.wait_for(lock, *timeout, [&] { return finished_; });
}

inline bool Manager::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

inline bool Manager::shutdown_begun() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return shutdown_begun_;
}

inline ManagerState Manager::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_;
}

inline bool Manager::keeper_lost() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return keeper_lost_;
}

inline std::vector<ProcessInfo> Manager::processes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<ProcessInfo> out;
  out.reserve(procs_.size());
  for (std::size_t i = 0; i < procs_.size(); ++i) out.push_back(info_locked(i));
  return out;
}

inline ProcessInfo Manager::process(std::size_t index) const {
  check_index(index);
  std::lock_guard<std::mutex> lock(mutex_);
  return info_locked(index);
}

inline std::optional<std::size_t> Manager::index_of(const std::string& name) const {
  for (std::size_t i = 0; i < procs_.size(); ++i) {
    if (procs_[i]->spec.name == name) return i;
  }
  return std::nullopt;
}

inline std::vector<std::string> Manager::output_tail(std::size_t index, std::size_t lines) const {
  check_index(index);
  return tails_.last(index, lines);
}

inline double Manager::restart_grace(std::size_t index) const {
  check_index(index);
  return procs_[index]->spec.graceful_time.value_or(config_.restart_graceful_time);
}

inline void Manager::stop_process(std::size_t index, std::optional<double> grace) {
  Operation op(*this, index, "stop");
  const Proc& p = *procs_[index];
  StopPlan plan = StopPlan::graceful(p.spec.stop_signal, grace.value_or(p.spec.graceful_time.value_or(config_.graceful_time)));
  std::unique_lock<std::mutex> lock(mutex_);
  stop_and_wait(index, std::move(plan), lock);
}

inline ProcessInfo Manager::start_process(std::size_t index) {
  Operation op(*this, index, "start");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!procs_[index]->quiet) return info_locked(index);
  }
  launch_and_verify_now(index);
  return process(index);
}

inline ProcessInfo Manager::restart(std::size_t index, std::optional<double> grace) {
  Operation op(*this, index, "restart");
  const Proc& p = *procs_[index];
  StopPlan plan = StopPlan::graceful(p.spec.stop_signal, grace.value_or(p.spec.graceful_time.value_or(config_.graceful_time)));
  {
    std::unique_lock<std::mutex> lock(mutex_);
    stop_and_wait(index, std::move(plan), lock);
  }
  launch_and_verify_now(index);
  return process(index);
}

inline void Manager::signal_process(std::size_t index, int sig) {
  check_index(index);
  std::lock_guard<std::mutex> lock(mutex_);
  const Proc& p = *procs_[index];
  if (p.group_alive) core_->signal_group(static_cast<std::uint32_t>(index), sig);
  if (!p.daemons.empty()) core_->signal_daemons(static_cast<std::uint32_t>(index), sig);
}

inline void Manager::kill_process(std::size_t index) {
  check_index(index);
  std::unique_lock<std::mutex> lock(mutex_);
  if (procs_[index]->quiet || shutdown_begun_) return;
  stop_and_wait(index, StopPlan::kill_now(), lock);
}

// ----------------------------------------------------------------- launch

/// How many descriptors the processes need: the pipe ends kept per process
/// (two, or one when stdout and stderr share a pipe; one more for a
/// redirect_output file), four for each spawn in flight, and room for the
/// host's own.
inline std::size_t Manager::descriptors_needed(bool separate_streams) const {
  std::size_t needed = 64 + 4 * std::min<std::size_t>(procs_.size(), kMaxSpawnsInFlight);
  for (const auto& p : procs_) needed += (separate_streams ? 2 : 1) + (p->spec.redirect_output ? 1 : 0);
  return needed;
}

/// Before anything is launched: enough descriptors for every process, or a
/// clear error. When only a pipe per process fits, stdout and stderr share it.
inline void Manager::check_descriptor_budget() {
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return;
  const std::string limits = std::to_string(limit.rlim_cur) + " (hard limit " +
                             (limit.rlim_max == RLIM_INFINITY ? std::string("unlimited") : std::to_string(limit.rlim_max)) +
                             "; raise it with ulimit -n)";
  const std::size_t separate = descriptors_needed(true), shared = descriptors_needed(false);
  if (separate <= limit.rlim_cur) return;
  if (shared > limit.rlim_cur) {
    throw Error(ErrorKind::spawn_failed, "cannot start " + std::to_string(procs_.size()) + " processes: they need about " +
                                             std::to_string(shared) + " file descriptors, but the limit is " + limits);
  }
  merge_streams_ = true;
  log("warning: " + std::to_string(procs_.size()) + " processes need about " + std::to_string(separate) +
      " file descriptors to read stdout and stderr apart, but the limit is " + limits +
      ": each process's stderr shares its stdout's pipe, and its lines count as stdout");
}

inline void Manager::begin_launch(std::size_t i) {
  Proc& p = *procs_[i];
  LaunchPlan plan = make_launch_plan(p.spec, config_, options_.extra_environment);
  // The mark by which the keeper attributes daemons, and by which this
  // manager finds what is left if the keeper is ever lost.
  plan.envp.erase(std::remove_if(plan.envp.begin(), plan.envp.end(),
                                 [](const std::string& e) { return e.rfind("PYMANAGER_OWNER=", 0) == 0; }),
                  plan.envp.end());
  plan.envp.push_back("PYMANAGER_OWNER=" + token_ + ":" + std::to_string(i));
  auto output = std::make_shared<RunOutput>();
  output->index = i;
  detail::Pipe pipes[2];
  const int streams = merge_streams_ ? 1 : 2;
  try {
    for (int k = 0; k < streams; ++k) pipes[k] = detail::make_pipe(O_NONBLOCK);
  } catch (const Error& e) {
    struct rlimit limit {};
    ::getrlimit(RLIMIT_NOFILE, &limit);
    throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) + ": " + e.what() +
                                             (errno == EMFILE ? " (the limit is " + std::to_string(limit.rlim_cur) +
                                                                    " file descriptors; raise it with ulimit -n)"
                                                              : std::string()));
  }
  // The write ends block: a child must never see EAGAIN on its stdout.
  for (int k = 0; k < streams; ++k) ::fcntl(pipes[k].write.get(), F_SETFL, 0);
  if (p.spec.redirect_output) {
    std::string file = detail::join_dir(config_.base_directory, *p.spec.redirect_output);
    int launches;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      launches = p.launches;
    }
    // The first launch starts the file afresh; restarts append to it.
    // O_NONBLOCK: opening a FIFO nobody reads must not wait (it fails).
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (launches == 0 ? O_TRUNC : O_APPEND);
    output->file.reset(::open(file.c_str(), flags, 0644));
    output->file_path = file;
    if (!output->file) {
      throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) + ": redirect_output " + file +
                                               ": " + std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(output->file.get(), &st) == 0 && !S_ISREG(st.st_mode)) {
      output->file_writer = std::make_unique<StreamWriter>(output->file.get());
    }
  }
  detail::CoreRequest request;
  try {
    request = detail::ProcessCore::spawn_request(static_cast<std::uint32_t>(i), plan, std::move(pipes[0].write),
                                                 std::move(pipes[1].write));
  } catch (const Error& e) {
    throw Error(e.kind(), "cannot start process " + quote(p.spec.name) + ": " + e.what());
  }
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutdown_begun_) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    // Nothing new starts once the start-up failed.
    if (startup_failed_ && p.verify_in_pool) throw Error(ErrorKind::shutting_down, "the start-up failed");
    if (keeper_gone_) throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) + ": the keeper process is gone");
    set_state_locked(i, ProcessState::starting);
    p.spawn_pending = true;
    p.spawn_errno = 0;
    p.exit.reset();
    p.exit_expected = p.spec.verifier && p.spec.verifier->verifier->expects_exit();
    p.stop.reset();
    p.killed = false;
    p.abandoned = false;
    p.failed = false;
    p.working_directory = plan.working_directory;
    p.spawn_asked = Clock::now();
    ++spawns_in_flight_;
    update_quiet_locked(i, fx);
    // Watched before the spawn is sent, so that the output is read before
    // the exit is recorded.
    core_->watch_output(static_cast<std::uint32_t>(i), std::move(pipes[0].read), std::move(pipes[1].read), output);
    core_->submit(std::move(request));
  }
  if (options_.verbose) log("launching " + quote(p.spec.name) + ": " + describe_command(p.spec));
  run(fx);
}

inline void Manager::wait_spawned_locked(std::unique_lock<std::mutex>& lock, std::size_t i) {
  Proc& p = *procs_[i];
  // The keeper answers within milliseconds; 30 s covers a machine that is
  // swapping. Past that the launch counts as failed.
  bool answered = changed_.wait_for(lock, std::chrono::seconds(30), [&] { return !p.spawn_pending || keeper_gone_; });
  if (!answered || p.spawn_pending) {
    throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) +
                                             (keeper_gone_ ? ": the keeper process is gone" : ": the keeper did not answer within 30s"));
  }
  if (p.state == ProcessState::failed) throw Error(ErrorKind::spawn_failed, spawn_failure_locked(i));
}

/// "cannot start process 'web' (./web): exec: ..." from the keeper's answer.
inline std::string Manager::spawn_failure_locked(std::size_t i) const {
  const Proc& p = *procs_[i];
  std::string why = std::strerror(p.spawn_errno);
  if (p.spawn_stage == detail::SpawnStage::chdir) {
    why = "working_directory " + p.working_directory + ": " + why;
  } else if (p.spawn_stage != detail::SpawnStage::exec) {
    why = std::string(detail::describe_stage(p.spawn_stage)) + ": " + why;
  }
  return "cannot start process " + quote(p.spec.name) + " (" + p.spec.executable + "): " + why;
}

inline void Manager::launch_and_verify_now(std::size_t i) {
  begin_launch(i);
  {
    std::unique_lock<std::mutex> lock(mutex_);
    wait_spawned_locked(lock, i);
    if (!procs_[i]->spec.verifier) return;
  }
  VerifyResult result = call_verifier(i);
  std::string message = result.passed ? std::string() : failure_message(i, result);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    after_verified_locked(i, result.passed);
  }
  changed_.notify_all();
  if (result.passed) return;
  if (shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun");
  throw Error(ErrorKind::verify_failed, message);
}

/// On a pool thread during start().
inline void Manager::run_verifier(std::size_t i) {
  VerifyResult result = call_verifier(i);
  std::string message = result.passed ? std::string() : failure_message(i, result);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool cancelled = shutdown_begun_ || startup_failed_;
    after_verified_locked(i, result.passed);
    if (!result.passed && !cancelled) {
      startup_failed_ = true;
      startup_failure_ = message;
      startup_failure_kind_ = ErrorKind::verify_failed;
    }
  }
  changed_.notify_all();
}

inline VerifyResult Manager::call_verifier(std::size_t i) {
  Proc& p = *procs_[i];
  Context context(*this, i);
  VerifyResult result;
  try {
    result = p.spec.verifier->verifier->verify(context);
  } catch (const std::exception& e) {
    // A user-written verifier's exception is its failure, not the end of
    // the manager.
    result = VerifyResult::failure(std::string("the verifier threw: ") + e.what());
  } catch (...) {
    result = VerifyResult::failure("the verifier threw");
  }
  if (result.passed && (options_.verbose || config_.messages.verifier_verbose)) {
    log(quote(p.spec.name) + " verified by " + p.spec.verifier->type + (result.message.empty() ? "" : ": " + result.message));
  }
  return result;
}

inline std::string Manager::failure_message(std::size_t i, const VerifyResult& result) const {
  const Proc& p = *procs_[i];
  std::string message = "process " + quote(p.spec.name) + ": verifier " + p.spec.verifier->type + " failed: " + result.message;
  auto lines = output_tail(i, 10);
  if (!lines.empty()) {
    message += "\nlast output of " + quote(p.spec.name) + ":";
    for (const auto& line : lines) message += "\n  " + line;
  }
  return message;
}

inline void Manager::after_verified_locked(std::size_t i, bool passed) {
  Proc& p = *procs_[i];
  if (p.state != ProcessState::verifying) return;  // stopped meanwhile
  if (!passed) {
    // A verifier cancelled by the shutdown or another's failure did not fail.
    const bool cancelled = shutdown_begun_ || (startup_failed_ && p.verify_in_pool);
    if (!cancelled) {
      set_state_locked(i, ProcessState::failed);
      p.failed = true;
    }
    return;
  }
  if (p.leader_alive) {
    set_state_locked(i, ProcessState::ready);
  } else {
    set_state_locked(i, p.daemons.empty() ? ProcessState::exited : ProcessState::daemonized);
  }
  scheduler_.mark_verified(i);
}

// ------------------------------------------------------------------- stop

inline StopPlan Manager::shutdown_plan(std::size_t i) const {
  const ProcessSpec& spec = procs_[i]->spec;
  return StopPlan::graceful(spec.stop_signal, spec.graceful_time.value_or(config_.graceful_time));
}

inline Clock::duration Manager::shutdown_bound() const {
  Clock::duration longest{};
  for (std::size_t i = 0; i < procs_.size(); ++i) longest = std::max(longest, shutdown_plan(i).bound());
  const auto chain = static_cast<int>(std::max<std::size_t>(1, scheduler_.chain_length()));
  return (longest + std::chrono::seconds(1)) * chain + std::chrono::seconds(2);
}

/// Starts carrying out `plan` for process i (or replaces a plan under way).
inline void Manager::begin_stop_locked(std::size_t i, StopPlan plan, Effects& fx) {
  Proc& p = *procs_[i];
  const auto now = Clock::now();
  p.exit_expected = true;
  if (p.quiet) {
    // Nothing to stop: one that never started is stopped now; an exited or
    // failed one keeps saying how it ended.
    if (p.state == ProcessState::waiting || p.state == ProcessState::stopping) set_state_locked(i, ProcessState::stopped);
    return;
  }
  if (p.stop) {
    p.stop->replace(std::move(plan), now);
  } else {
    p.stop.emplace(std::move(plan), now);
  }
  if (p.state != ProcessState::stopping && !p.spawn_pending) set_state_locked(i, ProcessState::stopping);
  advance_stop_locked(i, now, fx);
}

/// Takes the steps of process i's stop plan that are due.
inline void Manager::advance_stop_locked(std::size_t i, Clock::time_point now, Effects& fx) {
  Proc& p = *procs_[i];
  // A spawn in flight is stopped once it is spawned (see handle_event).
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
        if (shutdown_begun_) state_ = ManagerState::force_shutdown;
      }
    }
    if (options_.verbose) {
      fx.logs.push_back(signal_name(step->signal) + " to " + quote(p.spec.name) +
                        (group ? " (process group " + std::to_string(p.pid) + ")" : std::string()) +
                        (daemons ? " (daemons " + detail::join_pids(p.daemons) + ")" : std::string()));
    }
    const auto id = static_cast<std::uint32_t>(i);
    if (group) core_->signal_group(id, step->signal);
    // Always: the keeper looks for daemons adopted since its last report first.
    core_->signal_daemons(id, step->signal);
  }
  timers_.emplace(p.stop->due(), i);
}

/// Runs a stop plan and waits for it (a stop, a restart, a kill). Bounded.
inline void Manager::stop_and_wait(std::size_t i, StopPlan plan, std::unique_lock<std::mutex>& lock) {
  Proc& p = *procs_[i];
  const auto bound = plan.bound() + std::chrono::seconds(5);
  Effects fx;
  begin_stop_locked(i, std::move(plan), fx);
  lock.unlock();
  run(fx);
  wake();
  lock.lock();
  if (!changed_.wait_for(lock, bound, [&] { return p.quiet || keeper_gone_; }) || p.abandoned) {
    throw Error(ErrorKind::system, "process " + quote(p.spec.name) + " (pid " + std::to_string(p.pid) +
                                       ") did not stop, even after SIGKILL");
  }
}

inline void Manager::begin_shutdown_locked(bool force, Effects& fx) {
  if (!shutdown_begun_) {
    shutdown_begun_ = true;
    state_ = ManagerState::shutdown;
    next_report_ = Clock::now() + std::chrono::seconds(2);
    if (options_.verbose) fx.logs.push_back("shutting down");
    for (std::size_t i = 0; i < procs_.size(); ++i) {
      Proc& p = *procs_[i];
      if (p.state == ProcessState::waiting) set_state_locked(i, ProcessState::stopped);
    }
  }
  if (force) state_ = ManagerState::force_shutdown;
  for (std::size_t i = 0; i < procs_.size(); ++i) {
    Proc& p = *procs_[i];
    if (force) {
      if (!p.stop || !p.stop->killing()) begin_stop_locked(i, StopPlan::kill_now(), fx);
    } else if (!p.stop && dependents_quiet_locked(i)) {
      begin_stop_locked(i, shutdown_plan(i), fx);
    }
  }
  if (busy_ == 0 && !finished_) {
    finished_ = true;
    if (options_.verbose) fx.logs.push_back("all processes have stopped");
  }
  changed_.notify_all();
  wake();
}

/// Shutdown order: true once everything that depends on process i has
/// nothing left alive (always, without `depends_on`).
inline bool Manager::dependents_quiet_locked(std::size_t i) const {
  for (std::size_t d : scheduler_.dependents(i)) {
    if (!procs_[d]->quiet) return false;
  }
  return true;
}

/// Process i has nothing left alive.
inline void Manager::on_quiet_locked(std::size_t i, Effects& fx) {
  Proc& p = *procs_[i];
  if (p.stop) {
    p.stop.reset();
    if (p.state == ProcessState::stopping) set_state_locked(i, p.failed ? ProcessState::failed : ProcessState::stopped);
  }
  if (shutdown_begun_) {
    // What it depended on may stop now.
    for (std::size_t d : scheduler_.dependencies(i)) {
      if (!procs_[d]->stop && !procs_[d]->quiet && dependents_quiet_locked(d)) begin_stop_locked(d, shutdown_plan(d), fx);
    }
    if (busy_ == 0 && !finished_) {
      finished_ = true;
      if (options_.verbose) fx.logs.push_back("all processes have stopped");
    }
  }
}

/// Recomputes whether process i is quiet and keeps busy_ in step.
inline void Manager::update_quiet_locked(std::size_t i, Effects& fx) {
  Proc& p = *procs_[i];
  const bool quiet = p.abandoned || (!p.group_alive && !p.leader_alive && !p.spawn_pending && p.daemons.empty());
  if (quiet == p.quiet) return;
  p.quiet = quiet;
  if (!quiet) {
    ++busy_;
    return;
  }
  --busy_;
  on_quiet_locked(i, fx);
}

/// keep_alive false: once every launched process has exited (daemons
/// count as running) while running, the manager shuts down (and so exits).
inline void Manager::maybe_end_when_all_exited_locked(Effects& fx) {
  if (config_.keep_alive || state_ != ManagerState::running || shutdown_begun_ || operations_ > 0) return;
  for (const auto& p : procs_) {
    if (p->leader_alive || !p->daemons.empty() || p->spawn_pending) return;
  }
  if (options_.verbose) fx.logs.push_back("all processes have exited");
  begin_shutdown_locked(false, fx);
}

// ------------------------------------------------------------ event thread

/// Every event of the process core, on its loop's thread.
inline void Manager::on_core_event(const detail::CoreEvent& event) {
  using Type = detail::CoreEvent::Type;
  switch (event.type) {
    case Type::output_bytes:
      if (event.id < procs_.size()) write_redirect(*static_cast<RunOutput*>(event.context), event.text);
      return;
    case Type::output_line:
      if (event.id < procs_.size()) deliver(event.id, event.stream, event.text, event.complete);
      return;
    case Type::exited:
      if (event.id < procs_.size()) on_exited(event.id, event);
      return;
    default:
      break;
  }
  detail::CoreEvent copy = event;
  // Read now, without the lock: the daemon's identity for later.
  if (copy.type == Type::daemon_adopted) copy.start_time = detail::process_start_time(copy.pid);
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    handle_event(copy, fx);
  }
  changed_.notify_all();
  run(fx);
}

/// Stop plan steps that are due, the drop notices; when to come back.
inline Clock::time_point Manager::on_tick(Clock::time_point now) {
  Effects fx;
  Clock::time_point next = Clock::time_point::max();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    run_timers(now, fx);
    if (!timers_.empty()) next = timers_.begin()->first;
    if (shutdown_begun_ && !finished_) next = std::min(next, next_report_);
  }
  run(fx);
  service_writers();
  return next;
}

/// Applies one keeper event (except exits: on_exited). Under the lock.
inline void Manager::handle_event(const detail::CoreEvent& event, Effects& fx) {
  using Type = detail::CoreEvent::Type;
  if (event.id >= procs_.size()) {
    if (event.type == Type::daemon_adopted) {
      orphans_.push_back(event.pid);
      daemon_starts_[event.pid] = event.start_time;
      if (options_.verbose) fx.logs.push_back("adopted pid " + std::to_string(event.pid) + ", which no process claims (its environment was cleared)");
    } else if (event.type == Type::daemon_gone) {
      orphans_.erase(std::remove(orphans_.begin(), orphans_.end(), event.pid), orphans_.end());
      daemon_starts_.erase(event.pid);
    }
    return;
  }
  const std::size_t i = event.id;
  Proc& p = *procs_[i];
  switch (event.type) {
    case Type::spawned: {
      p.pid = event.pid;
      p.leader_alive = true;
      p.group_alive = true;
      p.spawn_pending = false;
      --spawns_in_flight_;
      ++p.launches;
      scheduler_.mark_started(i);
      if (p.spec.verifier) {
        set_state_locked(i, ProcessState::verifying);
        if (p.verify_in_pool && !p.stop) to_verify_.push_back(i);
      } else {
        set_state_locked(i, ProcessState::ready);
        scheduler_.mark_verified(i);
      }
      update_quiet_locked(i, fx);
      // Shutdown began (or a stop was asked for) while the spawn was in flight.
      if (p.stop) {
        set_state_locked(i, ProcessState::stopping);
        advance_stop_locked(i, Clock::now(), fx);
      } else if (shutdown_begun_ && dependents_quiet_locked(i)) {
        begin_stop_locked(i, shutdown_plan(i), fx);
      }
      break;
    }
    case Type::spawn_failed:
      p.spawn_pending = false;
      --spawns_in_flight_;
      p.spawn_errno = event.error;
      p.spawn_stage = event.stage;
      set_state_locked(i, ProcessState::failed);
      p.failed = true;
      if (p.verify_in_pool && !startup_failed_ && !shutdown_begun_) {
        startup_failed_ = true;
        startup_failure_ = spawn_failure_locked(i);
        startup_failure_kind_ = ErrorKind::spawn_failed;
      }
      update_quiet_locked(i, fx);
      break;
    case Type::group_empty:
      p.group_alive = false;
      update_quiet_locked(i, fx);
      break;
    case Type::daemon_adopted:
      if (std::find(p.daemons.begin(), p.daemons.end(), event.pid) == p.daemons.end()) p.daemons.push_back(event.pid);
      daemon_starts_[event.pid] = event.start_time;
      if (options_.verbose) fx.logs.push_back("process " + quote(p.spec.name) + " left daemon pid " + std::to_string(event.pid));
      if (p.state == ProcessState::exited) set_state_locked(i, ProcessState::daemonized);
      update_quiet_locked(i, fx);
      // A stop under way reaches the new daemon at its next step, or now
      // if the stop is already at its last one.
      if (p.stop && p.stop->last_signal() != 0) {
        core_->signal_daemons(static_cast<std::uint32_t>(i), p.stop->last_signal());
      } else if (shutdown_begun_ && !p.stop && dependents_quiet_locked(i)) {
        // Adopted after its process had stopped: it is stopped in turn.
        begin_stop_locked(i, shutdown_plan(i), fx);
      }
      break;
    case Type::daemon_gone:
      p.daemons.erase(std::remove(p.daemons.begin(), p.daemons.end(), event.pid), p.daemons.end());
      daemon_starts_.erase(event.pid);
      if (options_.verbose) fx.logs.push_back("daemon pid " + std::to_string(event.pid) + " of " + quote(p.spec.name) + " is gone");
      if (p.state == ProcessState::daemonized && p.daemons.empty()) set_state_locked(i, ProcessState::exited);
      update_quiet_locked(i, fx);
      maybe_end_when_all_exited_locked(fx);
      break;
    case Type::exited:
      break;
  }
}

/// The main process of i exited: log, record, tell on_exit.
inline void Manager::on_exited(std::size_t i, const detail::CoreEvent& event) {
  Proc& p = *procs_[i];
  const ExitStatus status = ExitStatus::from_wait_status(event.wait_status);
  bool expected;
  pid_t pid;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    expected = p.exit_expected || shutdown_begun_;
    pid = p.pid;
  }
  // Logged before anyone waiting for the exit can see it, so that the
  // messages come in the order things happened.
  if (config_.messages.process_exit) {
    log("process " + quote(p.spec.name) + " (pid " + std::to_string(pid) + ") exited with code " +
        std::to_string(status.code()) + (status.signaled ? " (" + status.describe() + ")" : ""));
  } else if (!expected && options_.verbose && !(status.code() == 0 && !p.daemons.empty())) {
    // Without process.exit (or -v), exits are no output of ours: "By
    // default, no additional output is displayed", as the original says.
    log("process " + quote(p.spec.name) + " (pid " + std::to_string(pid) + ") exited unexpectedly with " + status.describe());
  }
  ProcessInfo info;
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    p.leader_alive = false;
    p.exit = status;
    if (p.state == ProcessState::ready) {
      set_state_locked(i, p.daemons.empty() ? ProcessState::exited : ProcessState::daemonized);
    }
    info = info_locked(i);
    update_quiet_locked(i, fx);
    maybe_end_when_all_exited_locked(fx);
  }
  changed_.notify_all();
  run(fx);
  if (options_.on_exit) options_.on_exit(info, expected);
}

/// The keeper is gone without being asked to go (killed from outside):
/// kill what it can no longer kill, and say exactly what was done.
inline void Manager::on_keeper_lost() {
  std::vector<pid_t> groups;
  std::vector<std::pair<pid_t, std::uint64_t>> daemons;
  bool asked;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    keeper_gone_ = true;
    asked = stopping_;
    for (auto& p : procs_) {
      if (p->group_alive) groups.push_back(p->pid);
    }
    for (const auto& entry : daemon_starts_) daemons.push_back(entry);
    if (!asked) keeper_lost_ = true;
  }
  if (!asked) {
    // Its children died with it (PR_SET_PDEATHSIG); their groups and the
    // daemons did not. A group id cannot be reused while the group has a
    // member; a daemon's pid is checked before the kill: the same start
    // time as when it was adopted (or, if that was not known, our mark).
    const std::string marker = "PYMANAGER_OWNER=" + token_ + ":";
    for (pid_t pgid : groups) ::kill(-pgid, SIGKILL);
    std::vector<pid_t> killed_daemons;
    for (const auto& [pid, start] : daemons) {
      const bool same = start != 0 ? detail::process_start_time(pid) == start : detail::process_has_marker(pid, marker);
      if (!same) continue;
      if (::getpgid(pid) == pid) ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      killed_daemons.push_back(pid);
    }
    // Anything else that carries our mark escaped both (a descendant that
    // left its group before the keeper saw it as a daemon).
    std::vector<pid_t> others;
    for (pid_t pid : detail::processes_with_marker(marker)) {
      // Members of the groups and the daemons above are not news.
      const pid_t pgid = ::getpgid(pid);
      ::kill(pid, SIGKILL);
      const bool known = std::find(groups.begin(), groups.end(), pgid) != groups.end() ||
                         std::find(killed_daemons.begin(), killed_daemons.end(), pid) != killed_daemons.end() ||
                         std::find(killed_daemons.begin(), killed_daemons.end(), pgid) != killed_daemons.end();
      if (!known) others.push_back(pid);
    }
    log("the keeper process (pid " + std::to_string(core_->keeper_pid()) + ") was killed: SIGKILL to " +
        std::to_string(groups.size()) + " process group(s)" + (groups.empty() ? "" : " (" + detail::join_pids(groups) + ")") +
        ", " + std::to_string(killed_daemons.size()) + " daemon(s)" +
        (killed_daemons.empty() ? "" : " (" + detail::join_pids(killed_daemons) + ")") + " and " +
        std::to_string(others.size()) + " other process(es) carrying this manager's mark" +
        (others.empty() ? "" : " (" + detail::join_pids(others) + ")") +
        "; a process that cleared its environment and left its process group may have escaped");
  }
  Effects fx;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (std::size_t i = 0; i < procs_.size(); ++i) {
      Proc& p = *procs_[i];
      // Its children died with it, by SIGKILL.
      if (p.leader_alive && !p.exit) p.exit = ExitStatus{true, SIGKILL};
      p.leader_alive = p.group_alive = p.spawn_pending = false;
      p.daemons.clear();
      p.stop.reset();
      update_quiet_locked(i, fx);
      switch (p.state) {
        case ProcessState::starting:
        case ProcessState::verifying:
        case ProcessState::ready:
        case ProcessState::daemonized:
        case ProcessState::stopping:
          set_state_locked(i, ProcessState::stopped);
          break;
        default:
          break;
      }
    }
    daemon_starts_.clear();
    orphans_.clear();
    spawns_in_flight_ = 0;
    begin_shutdown_locked(true, fx);
  }
  changed_.notify_all();
  run(fx);
}

/// Stop plan steps that are due, and the "still waiting for" report.
inline void Manager::run_timers(Clock::time_point now, Effects& fx) {
  while (!timers_.empty() && timers_.begin()->first <= now) {
    std::size_t i = timers_.begin()->second;
    timers_.erase(timers_.begin());
    Proc& p = *procs_[i];
    if (!p.stop || p.stop->due() > now) continue;
    if (p.stop->exhausted(now)) {
      if (detail::keeper_is_frozen(core_->keeper_pid())) {
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
      update_quiet_locked(i, fx);
      continue;
    }
    advance_stop_locked(i, now, fx);
  }
  if (shutdown_begun_ && !finished_ && now >= next_report_) {
    next_report_ = now + std::chrono::seconds(2);
    std::size_t reported = 0;
    for (const auto& p : procs_) {
      if (p->quiet || ++reported > 20) continue;
      std::string what = p->leader_alive ? "" : p->group_alive ? " (its main process has exited; others in its group have not)" : "";
      if (!p->daemons.empty()) what += " (daemons " + detail::join_pids(p->daemons) + ")";
      std::string when = !p->stop ? "it waits for the processes that depend on it"
                         : p->stop->killing() ? "SIGKILL sent"
                                              : "SIGKILL in " + std::to_string(std::max<long long>(0, std::chrono::duration_cast<std::chrono::seconds>(p->stop->due() - now).count())) + "s";
      fx.logs.push_back("waiting for process " + quote(p->spec.name) + " (pid " + std::to_string(p->pid) + ") to stop" + what + "; " + when);
    }
    if (reported > 20) fx.logs.push_back("... and " + std::to_string(reported - 20) + " more");
  }
}

/// redirect_output gets the bytes as they came, so nothing is lost and
/// nothing waits for a newline.
inline void Manager::write_redirect(RunOutput& output, std::string_view bytes) {
  if (output.file_writer) {
    output.file_writer->write(bytes);
    if (!output.file_failed && output.file_writer->broken()) {
      output.file_failed = true;
      log("warning: " + errno_message("cannot write the output of " + quote(procs_[output.index]->spec.name) + " to " + output.file_path, output.file_writer->error()) +
          " (its output is no longer written there; this is said once)");
    }
  } else if (output.file && !output.file_failed) {
    if (!detail::write_all(output.file.get(), bytes.data(), bytes.size())) {
      // A full disk: said once per run, and the child goes on (its output
      // is still read, and kept in the tail).
      output.file_failed = true;
      log("warning: " + errno_message("cannot write the output of " + quote(procs_[output.index]->spec.name) + " to " + output.file_path, errno) +
          " (its output is no longer written there; this is said once)");
    }
  }
}

inline void Manager::deliver(std::size_t i, OutputStream stream, std::string_view text, bool complete) {
  const Proc& p = *procs_[i];
  tails_.add(i, text);
  OutputLine line;
  line.process = i;
  line.name = p.spec.name;
  line.stream = stream;
  line.text = text;
  line.complete = complete;
  if (printer_ && !p.spec.suppress_output && !p.spec.redirect_output) printer_->print(line);
  if (options_.on_output) options_.on_output(line);
}

inline void Manager::service_writers() {
  if (log_writer_) log_writer_->on_writable();
  if (!out_writer_) return;
  out_writer_->on_writable();
  // Said as soon as lines are dropped, every 10 s while it lasts, and once
  // the reader is back.
  if (std::size_t dropped = out_writer_->take_dropped()) {
    log(std::to_string(dropped) + " lines not shown, " + output_name() + " was not being read");
    next_drop_notice_ = Clock::time_point{};
  } else if (out_writer_->dropped() > 0 && Clock::now() >= next_drop_notice_) {
    log(std::to_string(out_writer_->take_dropped(true)) + " lines not shown, " + output_name() +
        (out_writer_->broken() ? " was closed by its reader" : " is not being read"));
    next_drop_notice_ = Clock::now() + std::chrono::seconds(10);
  }
}

inline std::string Manager::output_name() const {
  return options_.output_fd == STDOUT_FILENO ? "stdout" : "the output (fd " + std::to_string(options_.output_fd) + ")";
}

// ------------------------------------------------------------------- small

inline void Manager::set_state_locked(std::size_t i, ProcessState to) {
  Proc& p = *procs_[i];
  if (p.state == to) return;
  // A transition outside the table is a bug: counted (tests assert there
  // are none), and taken anyway, so that the process is never stuck in a
  // state that is no longer true.
  if (!transition_allowed(p.state, to)) ++illegal_transitions_;
  p.state = to;
}

inline ProcessInfo Manager::info_locked(std::size_t i) const {
  const Proc& p = *procs_[i];
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
  if (p.state == ProcessState::waiting) info.waiting_for = scheduler_.waiting_for(i);
  return info;
}

inline void Manager::check_index(std::size_t index) const {
  if (index >= procs_.size()) throw Error(ErrorKind::not_found, "no process with id " + std::to_string(index + 1));
}

inline void Manager::run(Effects& fx) {
  for (const auto& message : fx.logs) log(message);
  fx.logs.clear();
}

inline void Manager::wake() const { core_->wake(); }

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_MANAGER_HPP
