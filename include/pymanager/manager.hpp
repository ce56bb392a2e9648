// pymanager: the Manager: launches the configured processes in order,
// verifies each, forwards their output, and shuts them all down.
//
// Threads: the caller's (start, restart, ...), and one event thread that
// reads the keeper's events and the children's output and enforces the
// SIGKILL deadlines. All state sits behind one mutex; waits are on a
// condition variable with a bound. Nothing polls on a timer: a child's exit
// reaches the Manager as an event from the keeper (see detail/keeper.hpp).
#ifndef PYMANAGER_MANAGER_HPP
#define PYMANAGER_MANAGER_HPP

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "pymanager/config.hpp"
#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/keeper.hpp"
#include "pymanager/error.hpp"
#include "pymanager/process.hpp"
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
  /// Default: standard output.
  int output_fd = STDOUT_FILENO;
  /// Color the name prefixes. Default: when `output_fd` is a terminal.
  std::optional<bool> color;
  /// Receives the manager's own messages (one line, no newline). Default:
  /// "pymanager: <message>" on standard error. Called from the manager's
  /// threads, sometimes with its lock held: it must be thread-safe and must
  /// not call back into the Manager.
  std::function<void(const std::string&)> log;
  /// Also log the life cycle: launches, verifications, signals sent.
  bool verbose = false;
  /// How many of each process's last output lines are kept for diagnosis.
  std::size_t output_lines_kept = 1000;
  /// Called on the event thread (without the Manager's lock held) whenever a
  /// process's main process exits; `expected` is false for an exit nobody
  /// asked for (not a stop, a shutdown or a one-shot step's verified exit).
  std::function<void(const ProcessInfo& process, bool expected)> on_exit;
  /// Extra `NAME=value` entries for every child's environment.
  std::vector<std::string> extra_environment;
};

class Manager;

namespace detail {

/// At most `size` bytes of `text`, never ending inside a UTF-8 character
/// (continuation bytes at the cut are left out with their lead byte).
inline std::string utf8_prefix(const std::string& text, std::size_t size) {
  if (text.size() <= size) return text;
  std::size_t cut = size;
  for (int back = 0; back < 3 && cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80; ++back) --cut;
  return text.substr(0, cut);
}

/// One output pipe being read (a process may have two while an old run's
/// descendants still hold the previous one).
struct OutputStream {
  std::size_t index = 0;
  UniqueFd fd;
  UniqueFd file;  ///< redirect_output target, or none
  std::string file_path;
  bool to_terminal = false;
  std::string partial;
};

}  // namespace detail

class Manager {
 public:
  /// Starts the keeper process (nothing is launched yet: call start()).
  explicit Manager(Config config, ManagerOptions options = {})
      : config_(std::move(config)), options_(std::move(options)), keeper_(config_.processes.size()) {
    if (config_.processes.empty()) throw Error(ErrorKind::config_no_processes, "processes: no processes are configured");
    if (config_.base_directory.empty()) config_.base_directory = detail::current_directory();
    if (!options_.log) {
      options_.log = [](const std::string& message) { detail::write_all(STDERR_FILENO, "pymanager: " + message + "\n"); };
    }
    color_ = options_.color.value_or(::isatty(options_.output_fd) == 1);
    for (std::size_t i = 0; i < config_.processes.size(); ++i) {
      auto proc = std::make_unique<Proc>();
      proc->spec = config_.processes[i];
      name_width_ = std::max(name_width_, proc->spec.name.size());
      procs_.push_back(std::move(proc));
    }
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) throw_system_error("eventfd");
    KeeperReady ready = wait_keeper_ready();
    if (!ready.ok) throw Error(ErrorKind::system, "the keeper process did not start");
    event_thread_ = std::thread([this] { event_loop(); });
  }

  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  /// Stops everything (graceful, then SIGKILL), joins the event thread, and
  /// has the keeper kill whatever escaped the process groups. Bounded by the
  /// graceful time plus a few seconds.
  ~Manager() {
    shutdown();
    wait_finished(shutdown_bound());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake();
    if (event_thread_.joinable()) event_thread_.join();
    keeper_.close_and_reap();
  }

  /// Launches every process in the order of the config and waits for each
  /// one's verifier before the next. On failure, everything already launched
  /// is shut down before the Error (spawn_failed or verify_failed) is thrown.
  /// If shutdown is requested meanwhile, throws ErrorKind::shutting_down.
  void start() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (shutdown_begun_) throw Error(ErrorKind::shutting_down, "shutdown has begun");
      state_ = ManagerState::launching;
    }
    for (std::size_t i = 0; i < procs_.size(); ++i) {
      try {
        std::lock_guard<std::mutex> op(procs_[i]->operation);
        launch_and_verify(i);
      } catch (const Error& e) {
        bool requested;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          requested = shutdown_begun_;
        }
        if (!requested) log(e.what());
        shutdown();
        wait_finished(shutdown_bound());
        if (requested) throw Error(ErrorKind::shutting_down, "shutdown requested during start-up");
        throw;
      }
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (shutdown_begun_) throw Error(ErrorKind::shutting_down, "shutdown requested during start-up");
    state_ = ManagerState::running;
    if (options_.verbose) log("all processes are up");
    maybe_finish_when_all_exited_locked();
  }

  /// Begins the shutdown and returns at once: SIGTERM to every process
  /// group, SIGKILL to what is left after graceful_time. `force`: SIGKILL now.
  void shutdown(bool force = false) {
    std::lock_guard<std::mutex> lock(mutex_);
    begin_shutdown_locked(force);
  }

  /// Waits until the shutdown is complete (every process group is empty).
  /// With keep_alive false, that also happens once every process has exited.
  /// Returns false if `timeout` passed first.
  bool wait_finished(std::optional<Clock::duration> timeout = std::nullopt) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!timeout) {
      changed_.wait(lock, [&] { return finished_; });
      return true;
    }
    return changed_.wait_for(lock, *timeout, [&] { return finished_; });
  }

  bool finished() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return finished_;
  }
  bool shutdown_begun() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return shutdown_begun_;
  }
  ManagerState state() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return state_;
  }
  const Config& config() const { return config_; }
  std::size_t size() const { return procs_.size(); }

  std::vector<ProcessInfo> processes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<ProcessInfo> out;
    for (std::size_t i = 0; i < procs_.size(); ++i) out.push_back(info_locked(i));
    return out;
  }

  /// One process by 0-based index.
  ProcessInfo process(std::size_t index) const {
    check_index(index);
    std::lock_guard<std::mutex> lock(mutex_);
    return info_locked(index);
  }

  /// The 0-based index of the process named `name`, or nullopt.
  std::optional<std::size_t> index_of(const std::string& name) const {
    for (std::size_t i = 0; i < procs_.size(); ++i) {
      if (procs_[i]->spec.name == name) return i;
    }
    return std::nullopt;
  }

  /// The last `lines` lines the process printed (stdout and stderr), oldest first.
  std::vector<std::string> output_tail(std::size_t index, std::size_t lines) const {
    check_index(index);
    std::lock_guard<std::mutex> lock(mutex_);
    const auto& tail = procs_[index]->tail;
    std::size_t n = std::min(lines, tail.size());
    return std::vector<std::string>(tail.end() - static_cast<std::ptrdiff_t>(n), tail.end());
  }

  /// Stops one process: SIGTERM to its group, SIGKILL after `grace` seconds
  /// (default graceful_time); returns once the group is empty.
  /// With keep_alive false, stopping the last running process ends the
  /// manager, as the original did when all processes had terminated.
  /// Throws shutting_down once shutdown has begun, conflict while start()
  /// is still launching.
  void stop_process(std::size_t index, std::optional<double> grace = std::nullopt) {
    Operation op(*this, index, "stop");
    stop_locked_operation(index, grace.value_or(config_.graceful_time));
  }

  /// Starts a stopped process again and runs its verifier.
  ProcessInfo start_process(std::size_t index) {
    Operation op(*this, index, "start");
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (procs_[index]->group_alive) return info_locked(index);
    }
    launch_and_verify(index);
    return process(index);
  }

  /// Stops the process (as stop_process), launches it again and runs its
  /// verifier. Restarts of one process run one after the other; while one is
  /// under way, the process's exit does not count as "all have exited".
  ProcessInfo restart(std::size_t index, std::optional<double> grace = std::nullopt) {
    Operation op(*this, index, "restart");
    stop_locked_operation(index, grace.value_or(config_.graceful_time));
    launch_and_verify(index);
    return process(index);
  }

  /// Sends `sig` to the process's group (for fault injection).
  void signal_process(std::size_t index, int sig) {
    check_index(index);
    std::lock_guard<std::mutex> lock(mutex_);
    if (procs_[index]->group_alive) keeper_.send_signal(static_cast<std::uint32_t>(index), sig);
  }

 private:
  struct Proc {
    ProcessSpec spec;
    std::mutex operation;  ///< serializes start/stop/restart of this process
    pid_t pid = 0;
    bool leader_alive = false;
    bool group_alive = false;
    std::optional<ExitStatus> exit;
    int launches = 0;
    bool exit_expected = false;  ///< a stop or shutdown was asked for, or the verifier waits for the exit
    // The answer to the spawn request in flight.
    bool awaiting_spawn = false;
    int spawn_errno = 0;
    detail::SpawnStage spawn_stage{};
    // Stopping: SIGTERM sent at some point, SIGKILL due at `kill_at`.
    bool term_sent = false;
    bool kill_sent = false;
    Clock::time_point kill_at{};
    std::deque<std::string> tail;
    bool redirect_failure_reported = false;  ///< touched by the event thread only
  };

  /// One stop/start/restart: serialized per process, refused during
  /// start-up and shutdown, and counted so that its own exit does not end a
  /// manager without keep-alive.
  class Operation {
   public:
    Operation(Manager& m, std::size_t index, const char* verb) : m_(m) {
      m_.check_index(index);
      const std::string what = std::string("cannot ") + verb + " process " + quote(m_.procs_[index]->spec.name);
      // Checked before waiting for the process's own lock too: start() holds
      // that lock while it verifies the process, and a refusal must not
      // wait for the verifier.
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
      std::lock_guard<std::mutex> lock(m_.mutex_);
      --m_.operations_;
      m_.maybe_finish_when_all_exited_locked();
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

  class Context : public VerifyContext {
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
        return m_.shutdown_begun_ || (!had_exited && m_.procs_[index_]->exit.has_value());
      });
    }
    std::optional<ExitStatus> wait_exit(Clock::time_point until) override {
      std::unique_lock<std::mutex> lock(m_.mutex_);
      m_.changed_.wait_until(lock, until, [&] { return m_.shutdown_begun_ || m_.procs_[index_]->exit.has_value(); });
      return m_.procs_[index_]->exit;
    }
    std::optional<ExitStatus> exit_status() const override {
      std::lock_guard<std::mutex> lock(m_.mutex_);
      return m_.procs_[index_]->exit;
    }
    bool cancelled() const override {
      std::lock_guard<std::mutex> lock(m_.mutex_);
      return m_.shutdown_begun_;
    }
    void log(MessageCategory category, const std::string& message) override {
      const auto& messages = m_.config_.messages;
      bool show = category == MessageCategory::verifier_fail ? messages.verifier_fail : messages.verifier_verbose;
      if (show) m_.log("verifier of '" + process_name() + "': " + message);
    }

   private:
    Manager& m_;
    std::size_t index_;
  };

  struct KeeperReady {
    bool ok = false;
  };

  KeeperReady wait_keeper_ready() {
    // The keeper's first message; it comes within milliseconds of the fork.
    struct pollfd p = {keeper_.socket_fd(), POLLIN, 0};
    if (detail::retry_eintr([&] { return ::poll(&p, 1, 10000); }) != 1) return {};
    detail::KeeperEvent event{};
    return {keeper_.read_event(event) && event.type == detail::KeeperMessage::ready};
  }

  static std::string quote(const std::string& name) { return "'" + name + "'"; }

  void check_index(std::size_t index) const {
    if (index >= procs_.size()) {
      throw Error(ErrorKind::not_found, "no process with id " + std::to_string(index + 1));
    }
  }

  Clock::duration shutdown_bound() const {
    return seconds_to_duration(config_.graceful_time) +
           std::chrono::seconds(10);
  }

  void log(const std::string& message) const { options_.log(message); }

  void wake() const {
    std::uint64_t one = 1;
    ssize_t ignored = ::write(wake_.get(), &one, sizeof one);
    (void)ignored;
  }

  ProcessInfo info_locked(std::size_t i) const {
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
    info.killed = p.kill_sent;
    return info;
  }

  // ------------------------------------------------------------------ launch

  void launch_and_verify(std::size_t i) {
    launch(i);
    verify(i);
  }

  void launch(std::size_t i) {
    Proc& p = *procs_[i];
    LaunchPlan plan = make_launch_plan(p.spec, config_, options_.extra_environment);
    detail::Pipe pipe = detail::make_pipe();
    ::fcntl(pipe.read.get(), F_SETFL, O_NONBLOCK);
    auto stream = std::make_unique<detail::OutputStream>();
    stream->index = i;
    if (p.spec.redirect_output) {
      std::string file = detail::join_dir(config_.base_directory, *p.spec.redirect_output);
      // The first launch starts the file afresh; restarts append to it.
      int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (p.launches == 0 ? O_TRUNC : O_APPEND);
      stream->file.reset(::open(file.c_str(), flags, 0644));
      stream->file_path = file;
      if (!stream->file) {
        throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) + ": redirect_output " + file +
                                                 ": " + std::strerror(errno));
      }
    }
    stream->to_terminal = !p.spec.suppress_output && !p.spec.redirect_output;
    stream->fd = std::move(pipe.read);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (shutdown_begun_) throw Error(ErrorKind::shutting_down, "shutdown has begun");
      p.awaiting_spawn = true;
      p.spawn_errno = 0;
      p.exit.reset();
      p.exit_expected = p.spec.verifier && p.spec.verifier->verifier->expects_exit();
      p.term_sent = p.kill_sent = false;
      ++spawns_in_flight_;
      // Registered before the spawn, so that the output is read before the
      // exit is recorded.
      new_streams_.push_back(std::move(stream));
    }
    wake();
    if (options_.verbose) log("launching " + quote(p.spec.name) + ": " + describe_command(p.spec));
    bool sent = false;
    try {
      sent = keeper_.send_spawn(static_cast<std::uint32_t>(i), plan.path, plan.working_directory, plan.argv, plan.envp,
                                pipe.write.get());
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      p.awaiting_spawn = false;
      --spawns_in_flight_;
      throw;
    }
    pipe.write.reset();  // the keeper has its own copy now
    std::unique_lock<std::mutex> lock(mutex_);
    if (!sent) {
      p.awaiting_spawn = false;
      p.spawn_errno = EPIPE;
      p.spawn_stage = detail::SpawnStage::protocol;
    }
    bool answered = changed_.wait_for(lock, std::chrono::seconds(30), [&] { return !p.awaiting_spawn || keeper_gone_; });
    --spawns_in_flight_;
    if (!answered || keeper_gone_ || p.awaiting_spawn) {
      p.awaiting_spawn = false;
      finish_if_done_locked();
      throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) + ": the keeper process is gone");
    }
    if (p.spawn_errno != 0) {
      finish_if_done_locked();
      std::string why = std::strerror(p.spawn_errno);
      if (p.spawn_stage == detail::SpawnStage::chdir) {
        why = "working_directory " + plan.working_directory + ": " + why;
      } else if (p.spawn_stage != detail::SpawnStage::exec) {
        why = std::string(detail::describe_stage(p.spawn_stage)) + ": " + why;
      }
      throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(p.spec.name) + " (" + p.spec.executable + "): " + why);
    }
    ++p.launches;
    if (shutdown_begun_) {
      // Shutdown began while the spawn was in flight: stop it right away.
      send_term_locked(i);
      throw Error(ErrorKind::shutting_down, "shutdown has begun");
    }
  }

  void verify(std::size_t i) {
    Proc& p = *procs_[i];
    if (!p.spec.verifier) return;
    Context context(*this, i);
    VerifyResult result;
    try {
      result = p.spec.verifier->verifier->verify(context);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      // A user-written verifier's exception is its failure, not the end of
      // the manager (the clean-up in start() expects a pymanager::Error).
      result = VerifyResult::failure(std::string("the verifier threw: ") + e.what());
    }
    if (result.passed) {
      if (options_.verbose || config_.messages.verifier_verbose) {
        log(quote(p.spec.name) + " verified by " + p.spec.verifier->type + (result.message.empty() ? "" : ": " + result.message));
      }
      return;
    }
    if (cancelled()) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    std::string message = "process " + quote(p.spec.name) + ": verifier " + p.spec.verifier->type + " failed: " + result.message;
    auto lines = output_tail(i, 10);
    if (!lines.empty()) {
      message += "\nlast output of " + quote(p.spec.name) + ":";
      for (const auto& line : lines) message += "\n  " + line;
    }
    throw Error(ErrorKind::verify_failed, message);
  }

  bool cancelled() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return shutdown_begun_;
  }

  // -------------------------------------------------------------------- stop

  void stop_locked_operation(std::size_t i, double grace) {
    std::unique_lock<std::mutex> lock(mutex_);
    Proc& p = *procs_[i];
    if (!p.group_alive) return;
    p.exit_expected = true;
    send_term_locked(i, grace);
    wake();
    auto bound = seconds_to_duration(grace) + std::chrono::seconds(10);
    if (!changed_.wait_for(lock, bound, [&] { return !p.group_alive || keeper_gone_; })) {
      throw Error(ErrorKind::system, "process " + quote(p.spec.name) + " (pid " + std::to_string(p.pid) +
                                         ") did not stop, even after SIGKILL");
    }
  }

  void send_term_locked(std::size_t i, std::optional<double> grace = std::nullopt) {
    Proc& p = *procs_[i];
    if (!p.group_alive || p.term_sent) return;
    p.exit_expected = true;
    p.term_sent = true;
    p.kill_at = Clock::now() + seconds_to_duration(grace.value_or(config_.graceful_time));
    if (options_.verbose) log("SIGTERM to " + quote(p.spec.name) + " (process group " + std::to_string(p.pid) + ")");
    keeper_.send_signal(static_cast<std::uint32_t>(i), SIGTERM);
    wake();  // the event thread must see the new SIGKILL deadline
  }

  void send_kill_locked(std::size_t i) {
    Proc& p = *procs_[i];
    if (!p.group_alive || p.kill_sent) return;
    p.exit_expected = true;
    p.term_sent = true;
    p.kill_sent = true;
    if (options_.verbose) log("SIGKILL to " + quote(p.spec.name) + " (process group " + std::to_string(p.pid) + ")");
    keeper_.send_signal(static_cast<std::uint32_t>(i), SIGKILL);
  }

  void begin_shutdown_locked(bool force) {
    if (!shutdown_begun_) {
      shutdown_begun_ = true;
      state_ = ManagerState::shutdown;
      shutdown_started_ = Clock::now();
      next_report_ = shutdown_started_ + std::chrono::seconds(2);
      if (options_.verbose) log("shutting down");
    }
    if (force) state_ = ManagerState::force_shutdown;
    for (std::size_t i = 0; i < procs_.size(); ++i) {
      if (force) {
        send_kill_locked(i);
      } else {
        send_term_locked(i);
      }
    }
    finish_if_done_locked();
    changed_.notify_all();
    wake();
  }

  void finish_if_done_locked() {
    if (!shutdown_begun_ || finished_ || spawns_in_flight_ > 0) return;
    for (const auto& p : procs_) {
      if (p->group_alive && !keeper_gone_) return;
    }
    finished_ = true;
    if (options_.verbose) log("all processes have stopped");
    changed_.notify_all();
  }

  /// keep_alive false: once every launched process has exited while
  /// running, the manager shuts down (and so exits).
  void maybe_finish_when_all_exited_locked() {
    if (config_.keep_alive || state_ != ManagerState::running || shutdown_begun_ || operations_ > 0) return;
    for (const auto& p : procs_) {
      if (p->leader_alive) return;
    }
    if (options_.verbose) log("all processes have exited");
    begin_shutdown_locked(false);
  }

  // ------------------------------------------------------------ event thread

  void event_loop() {
    std::vector<std::unique_ptr<detail::OutputStream>> streams;
    bool keeper_open = true;
    for (;;) {
      Clock::time_point next_deadline = Clock::time_point::max();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) break;
        for (auto& s : new_streams_) streams.push_back(std::move(s));
        new_streams_.clear();
        for (const auto& p : procs_) {
          if (p->group_alive && p->term_sent && !p->kill_sent) next_deadline = std::min(next_deadline, p->kill_at);
        }
        if (shutdown_begun_ && !finished_) next_deadline = std::min(next_deadline, next_report_);
      }
      std::vector<struct pollfd> fds;
      fds.push_back({wake_.get(), POLLIN, 0});
      fds.push_back({keeper_open ? keeper_.socket_fd() : -1, POLLIN, 0});
      for (const auto& s : streams) fds.push_back({s->fd.get(), POLLIN, 0});
      int timeout = -1;
      if (next_deadline != Clock::time_point::max()) {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next_deadline - Clock::now()).count() + 1;
        timeout = static_cast<int>(std::clamp<long long>(ms, 0, 60000));
      }
      int ready = ::poll(fds.data(), fds.size(), timeout);
      if (ready < 0 && errno != EINTR) {
        log(errno_message("event loop: poll", errno));
        break;
      }
      if (fds[0].revents & POLLIN) {
        std::uint64_t count;
        ssize_t ignored = ::read(wake_.get(), &count, sizeof count);
        (void)ignored;
      }
      // Output first, so that an exit is recorded after the lines before it.
      for (std::size_t k = 0; k < streams.size(); ++k) {
        if (fds[k + 2].revents & (POLLIN | POLLHUP | POLLERR)) drain(*streams[k]);
      }
      streams.erase(std::remove_if(streams.begin(), streams.end(), [](const auto& s) { return !s->fd; }), streams.end());
      if (keeper_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
        detail::KeeperEvent event{};
        if (keeper_.read_event(event)) {
          handle_keeper_event(event, streams);
        } else {
          keeper_open = false;
          on_keeper_gone();
        }
      }
      enforce_deadlines();
    }
    for (auto& s : streams) drain(*s);
  }

  void handle_keeper_event(const detail::KeeperEvent& event, std::vector<std::unique_ptr<detail::OutputStream>>& streams) {
    if (event.id >= procs_.size()) return;
    const std::size_t i = event.id;
    Proc& p = *procs_[i];
    switch (event.type) {
      case detail::KeeperMessage::spawned: {
        std::lock_guard<std::mutex> lock(mutex_);
        p.pid = static_cast<pid_t>(event.a);
        p.leader_alive = true;
        p.group_alive = true;
        p.awaiting_spawn = false;
        changed_.notify_all();
        break;
      }
      case detail::KeeperMessage::spawn_failed: {
        std::lock_guard<std::mutex> lock(mutex_);
        p.awaiting_spawn = false;
        p.spawn_errno = static_cast<int>(event.a);
        p.spawn_stage = static_cast<detail::SpawnStage>(event.b);
        changed_.notify_all();
        break;
      }
      case detail::KeeperMessage::exited: {
        // Read what it printed before it exited, so that the tail is complete.
        for (auto& s : streams) {
          if (s->index == i && s->fd) drain(*s);
        }
        ExitStatus status = ExitStatus::from_wait_status(static_cast<int>(event.a));
        pid_t pid;
        bool expected;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          pid = p.pid;
          expected = p.exit_expected || shutdown_begun_;
        }
        // Logged before anyone waiting for the exit wakes up, so that the
        // messages come in the order things happened.
        if (config_.messages.process_exit) {
          log("process " + quote(p.spec.name) + " (pid " + std::to_string(pid) + ") exited with code " +
              std::to_string(status.code()) + (status.signaled ? " (" + status.describe() + ")" : ""));
        } else if (!expected && options_.verbose) {
          // Without process.exit (or -v), exits are no output of ours: "By
          // default, no additional output is displayed", as the original says.
          log("process " + quote(p.spec.name) + " (pid " + std::to_string(pid) + ") exited unexpectedly with " +
              status.describe());
        }
        ProcessInfo info;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          p.leader_alive = false;
          p.exit = status;
          info = info_locked(i);
          changed_.notify_all();
        }
        if (options_.on_exit) options_.on_exit(info, expected);
        std::lock_guard<std::mutex> lock(mutex_);
        maybe_finish_when_all_exited_locked();
        break;
      }
      case detail::KeeperMessage::group_empty: {
        std::lock_guard<std::mutex> lock(mutex_);
        p.group_alive = false;
        finish_if_done_locked();
        changed_.notify_all();
        break;
      }
      default:
        break;
    }
  }

  void on_keeper_gone() {
    std::lock_guard<std::mutex> lock(mutex_);
    keeper_gone_ = true;
    if (!stopping_) log("the keeper process exited unexpectedly; the managed processes were killed with it");
    for (auto& p : procs_) {
      p->leader_alive = false;
      p->group_alive = false;
      p->awaiting_spawn = false;
    }
    if (!shutdown_begun_) begin_shutdown_locked(true);
    finish_if_done_locked();
    changed_.notify_all();
  }

  void enforce_deadlines() {
    std::lock_guard<std::mutex> lock(mutex_);
    auto now = Clock::now();
    for (std::size_t i = 0; i < procs_.size(); ++i) {
      Proc& p = *procs_[i];
      if (p.group_alive && p.term_sent && !p.kill_sent && now >= p.kill_at) {
        log("process " + quote(p.spec.name) + " (pid " + std::to_string(p.pid) +
            ") did not stop within its graceful time: SIGKILL");
        if (shutdown_begun_) state_ = ManagerState::force_shutdown;
        send_kill_locked(i);
      }
    }
    if (shutdown_begun_ && !finished_ && now >= next_report_) {
      next_report_ = now + std::chrono::seconds(2);
      for (const auto& p : procs_) {
        if (!p->group_alive) continue;
        std::string what = p->leader_alive ? "" : " (its main process has exited; others in its group have not)";
        std::string when = p->kill_sent ? "SIGKILL sent"
                                        : "SIGKILL in " + std::to_string(std::max<long long>(0, std::chrono::duration_cast<std::chrono::seconds>(p->kill_at - now).count())) + "s";
        log("waiting for process " + quote(p->spec.name) + " (pid " + std::to_string(p->pid) + ") to stop" + what + "; " + when);
      }
    }
  }

  /// Reads what is available from one output pipe and forwards whole lines.
  void drain(detail::OutputStream& s) {
    char buffer[65536];
    for (int round = 0; round < 64; ++round) {
      ssize_t n = detail::retry_eintr([&] { return ::read(s.fd.get(), buffer, sizeof buffer); });
      if (n > 0) {
        consume(s, buffer, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      // EOF (or an error): flush the unfinished line and forget the pipe.
      if (!s.partial.empty()) emit_line(s, s.partial, false);
      s.partial.clear();
      s.fd.reset();
      return;
    }
  }

  void consume(detail::OutputStream& s, const char* data, std::size_t size) {
    if (s.file && !detail::write_all(s.file.get(), data, size)) {
      // A full disk: said once per process, and the child goes on (its
      // output is still read, and kept in the tail).
      const int err = errno;
      Proc& p = *procs_[s.index];
      if (!p.redirect_failure_reported) {
        p.redirect_failure_reported = true;
        log("warning: " + errno_message("cannot write the output of " + quote(p.spec.name) + " to " + s.file_path, err) +
            " (output is lost until writes succeed again; this is said once)");
      }
    }
    constexpr std::size_t kMaxLine = std::size_t{64} * 1024;
    std::size_t start = 0;
    for (std::size_t k = 0; k < size; ++k) {
      if (data[k] != '\n') continue;
      s.partial.append(data + start, k - start);
      emit_line(s, s.partial, true);
      s.partial.clear();
      start = k + 1;
    }
    s.partial.append(data + start, size - start);
    // A line without end is cut into pieces, so that memory stays bounded.
    while (s.partial.size() >= kMaxLine) {
      std::string piece = detail::utf8_prefix(s.partial, kMaxLine);
      if (piece.empty()) piece = s.partial.substr(0, kMaxLine);
      emit_line(s, piece, true);
      s.partial.erase(0, piece.size());
    }
  }

  void emit_line(detail::OutputStream& s, const std::string& line, bool /*complete*/) {
    const std::string& name = procs_[s.index]->spec.name;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& tail = procs_[s.index]->tail;
      // Kept for diagnosis: a very long line is cut, so that memory stays small.
      constexpr std::size_t kMaxKept = 4096;
      tail.push_back(line.size() <= kMaxKept ? line : detail::utf8_prefix(line, kMaxKept) + "...");
      while (tail.size() > options_.output_lines_kept) tail.pop_front();
    }
    if (!s.to_terminal) return;
    std::string out;
    std::string padded = name + std::string(name_width_ - std::min(name_width_, name.size()), ' ');
    if (color_) {
      static constexpr int kColors[] = {36, 33, 32, 35, 34, 31};
      out = "\x1b[" + std::to_string(kColors[s.index % 6]) + "m" + padded + " |\x1b[0m " + line + "\n";
    } else {
      out = padded + " | " + line + "\n";
    }
    detail::write_all(options_.output_fd, out);
  }

  Config config_;
  ManagerOptions options_;
  detail::KeeperClient keeper_;
  std::vector<std::unique_ptr<Proc>> procs_;
  std::size_t name_width_ = 0;
  bool color_ = false;
  detail::UniqueFd wake_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  ManagerState state_ = ManagerState::booting;
  bool shutdown_begun_ = false;
  bool finished_ = false;
  bool stopping_ = false;
  bool keeper_gone_ = false;
  int spawns_in_flight_ = 0;
  int operations_ = 0;  ///< stop/start/restart calls under way
  Clock::time_point shutdown_started_{};
  Clock::time_point next_report_{};
  std::vector<std::unique_ptr<detail::OutputStream>> new_streams_;

  std::thread event_thread_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_MANAGER_HPP
