// pymanager for GoogleTest: the implementation behind environment.hpp. The
// one translation unit of the environment that includes the Manager, the
// verifiers and cpp-httplib.
#include "gtest_env/environment.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "pymanager/pymanager.hpp"

namespace pymanager {
inline namespace v1 {
namespace testing {

namespace {

std::string getenv_string(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.compare(0, prefix.size(), prefix) == 0; }

/// A name that is safe as one path component.
std::string file_name_for(const std::string& name) {
  std::string out;
  for (char c : name) out += (c == '/' || c == '\0') ? '_' : c;
  if (out.empty() || out == "." || out == "..") out = "_" + out;
  return out;
}

/// mkdir -p; false (errno set) when a component cannot be made.
bool make_directories(const std::string& path) {
  for (std::size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    std::string part = path.substr(0, slash);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) return false;
    if (slash == std::string::npos) return is_directory(path);
  }
}

/// Copies a file; false when it cannot.
bool copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) return false;
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  out << in.rdbuf();
  return static_cast<bool>(out);
}

std::vector<std::string> runfiles_roots() {
  std::vector<std::string> roots;
  auto add = [&](const std::string& root) {
    if (!root.empty() && is_directory(root) && std::find(roots.begin(), roots.end(), root) == roots.end()) {
      roots.push_back(root);
    }
  };
  add(getenv_string("RUNFILES_DIR"));
  add(getenv_string("TEST_SRCDIR"));
  char exe[4096];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) add(std::string(exe, static_cast<std::size_t>(n)) + ".runfiles");
  return roots;
}

/// The folders directly under a runfiles root (one per workspace), the
/// test's own workspace first.
std::vector<std::string> workspaces_in(const std::string& root) {
  std::vector<std::string> out;
  if (DIR* dir = ::opendir(root.c_str())) {
    while (struct dirent* entry = ::readdir(dir)) {
      std::string name = entry->d_name;
      if (name != "." && name != ".." && is_directory(root + "/" + name)) out.push_back(name);
    }
    ::closedir(dir);
  }
  std::sort(out.begin(), out.end());
  std::string own = getenv_string("TEST_WORKSPACE");
  auto it = std::find(out.begin(), out.end(), own);
  if (it != out.end()) std::rotate(out.begin(), it, it + 1);
  return out;
}

}  // namespace

// ------------------------------------------------------------------ resolve

std::string resolve_path(const std::string& path) {
  if (path.empty()) throw Error(ErrorKind::config_not_found, "no config path given");
  if (path[0] == '/') {
    if (path_exists(path)) return path;
    throw Error(ErrorKind::config_not_found, "config file not found: " + path);
  }
  std::vector<std::string> tried;
  auto try_candidate = [&](const std::string& candidate) {
    if (std::find(tried.begin(), tried.end(), candidate) != tried.end()) return false;
    tried.push_back(candidate);
    return path_exists(candidate);
  };
  if (try_candidate(absolute_path(path))) return tried.back();

  // The same file as Bazel may name it: workspace-relative ("dir/f.json"),
  // with the workspace in front ("ws/dir/f.json"), or as $(rootpath) names a
  // file of another repository ("external/repo/f.json", "../repo/f.json").
  std::vector<std::string> forms = {path};
  if (starts_with(path, "external/")) forms.push_back(path.substr(9));
  if (starts_with(path, "../")) forms.push_back(path.substr(3));
  for (const auto& root : runfiles_roots()) {
    for (const auto& form : forms) {
      if (try_candidate(root + "/" + form)) return tried.back();
    }
    for (const auto& workspace : workspaces_in(root)) {
      if (try_candidate(root + "/" + workspace + "/" + path)) return tried.back();
    }
  }
  // Without a runfiles tree (e.g. --enable_runfiles=no), the manifest maps
  // "ws/dir/f.json" to the file's real place.
  if (std::string manifest = getenv_string("RUNFILES_MANIFEST_FILE"); !manifest.empty()) {
    std::ifstream in(manifest);
    std::string line;
    while (std::getline(in, line)) {
      auto space = line.find(' ');
      if (space == std::string::npos) continue;
      std::string key = line.substr(0, space);
      for (const auto& form : forms) {
        bool match = key == form || (key.size() > form.size() && key.compare(key.size() - form.size(), form.size(), form) == 0 &&
                                     key[key.size() - form.size() - 1] == '/' &&
                                     key.find('/') == key.size() - form.size() - 1);
        if (match && path_exists(line.substr(space + 1))) return line.substr(space + 1);
      }
    }
    tried.push_back("the runfiles manifest " + manifest);
  }
  // `bazel run`: a path the user typed is relative to where they typed it.
  for (const char* variable : {"BUILD_WORKING_DIRECTORY", "BUILD_WORKSPACE_DIRECTORY"}) {
    std::string dir = getenv_string(variable);
    if (!dir.empty() && try_candidate(absolute_path(path, dir))) return tried.back();
  }
  std::string where;
  for (const auto& candidate : tried) where += (where.empty() ? "" : ", ") + candidate;
  throw Error(ErrorKind::config_not_found, "config file not found: " + path + " (looked for " + where + ")");
}

// ------------------------------------------------------------ ConfigSource

ConfigSource ConfigSource::json(nlohmann::ordered_json config, std::string name) {
  ConfigSource source;
  source.json_ = std::move(config);
  source.name_ = std::move(name);
  return source;
}

ConfigSource ConfigSource::config(Config config, std::shared_ptr<PortAllocator> ports, std::string name) {
  ConfigSource source;
  source.config_ = std::move(config);
  source.ports_ = std::move(ports);
  source.name_ = std::move(name);
  return source;
}

// ---------------------------------------------------------- ProcessLogFiles

namespace {

/// Each process's full output in a file of its own, with our notes in it
/// ("[pymanager] pid N exited with ..."). A subscriber of the Manager's
/// output events: the lines and the exit notes both arrive on the Manager's
/// event thread, in the order things happened.
class ProcessLogFiles {
 public:
  ProcessLogFiles() = default;
  ProcessLogFiles(const ProcessLogFiles&) = delete;
  ProcessLogFiles& operator=(const ProcessLogFiles&) = delete;
  ~ProcessLogFiles() { close(); }

  /// `files[i]` empty: no file for process i.
  void open(const std::vector<std::string>& names, const std::vector<std::string>& files,
            const std::function<void(const std::string&)>& log) {
    close();
    for (std::size_t i = 0; i < names.size(); ++i) {
      int fd = -1;
      if (!files[i].empty()) {
        fd = ::open(files[i].c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) log(errno_message("cannot write the output of '" + names[i] + "' to " + files[i], errno));
      }
      files_.push_back(fd);
    }
  }

  void line(const OutputLine& line) {
    if (line.process >= files_.size() || files_[line.process] < 0) return;
    std::string text(line.text);
    text += '\n';
    write_fully(files_[line.process], text);
  }

  void note(std::size_t index, const std::string& text) {
    if (index < files_.size() && files_[index] >= 0) write_fully(files_[index], "[pymanager] " + text + "\n");
  }

  /// Once the Manager is gone (nothing writes any more).
  void close() {
    for (int fd : files_) {
      if (fd >= 0) ::close(fd);
    }
    files_.clear();
  }

 private:
  /// A regular file of our own: it takes everything, or the disk is full
  /// (then the rest of the line is lost, and the process goes on).
  static void write_fully(int fd, const std::string& text) {
    std::size_t done = 0;
    while (done < text.size()) {
      ssize_t n = ::write(fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      done += static_cast<std::size_t>(n);
    }
  }

  std::vector<int> files_;
};

// ---------------------------------------------------------- ProcessOutputs

/// Where Bazel keeps `file`, written under the test's undeclared outputs
/// folder `root`, once the test is over (the sandbox is gone by then):
/// "pymanager/environment/web.log in bazel-testlogs/pkg/my_test/test.outputs/outputs.zip".
/// Bazel's folder is bazel-out/<config>/testlogs/<package>/<test>[/run_1_of_3]/test.outputs,
/// zipped into outputs.zip there (--zip_undeclared_test_outputs, the
/// default). "" when `root` is not such a folder.
std::string kept_by_bazel(const std::string& file, const std::string& root) {
  const std::string marker = "/testlogs/";
  const std::size_t at = root.rfind(marker);
  const bool bazel_layout = at != std::string::npos && root.size() > 13 && root.compare(root.size() - 13, 13, "/test.outputs") == 0;
  if (!bazel_layout || file.compare(0, root.size() + 1, root + "/") != 0) return "";
  return file.substr(root.size() + 1) + " in bazel-testlogs/" + root.substr(at + marker.size()) + "/outputs.zip";
}

/// Where each process's output goes in one run: a live file (under the
/// test's outputs) for what the Manager forwards, the redirect_output file
/// (copied there once the run ends), or nothing for suppress_output; and the
/// file that holds it all, for output_file() and the failure messages.
class ProcessOutputs {
 public:
  /// Decides the files for `config`'s processes: under `root`/pymanager, in
  /// a folder of its own named by `scope` ("" root: no files of ours).
  void prepare(const Config& config, const std::string& root, const std::string& scope,
               const std::function<void(const std::string&)>& log) {
    live_files_.clear();
    output_files_.clear();
    redirects_.clear();
    copies_.clear();
    kept_.clear();
    root_ = root;
    std::string scope_dir;
    if (!root.empty()) {
      std::string base = root + "/pymanager/" + file_name_for(scope);
      if (!make_directories(root + "/pymanager")) {
        log(errno_message("cannot create " + root + "/pymanager (process output files are not written)", errno));
      } else {
        for (int n = 1; n < 1000 && scope_dir.empty(); ++n) {
          std::string candidate = n == 1 ? base : base + "-" + std::to_string(n);
          if (::mkdir(candidate.c_str(), 0755) == 0) scope_dir = candidate;
          else if (errno != EEXIST) break;
        }
      }
    }
    const std::string base_directory = config.base_directory.empty() ? current_directory() : config.base_directory;
    for (const auto& spec : config.processes) {
      std::string file = scope_dir.empty() ? "" : scope_dir + "/" + file_name_for(spec.name) + ".log";
      if (spec.suppress_output) file.clear();
      if (spec.redirect_output) {
        redirects_.push_back(absolute_path(*spec.redirect_output, base_directory));
        live_files_.emplace_back();
        output_files_.push_back(redirects_.back());
      } else {
        redirects_.emplace_back();
        live_files_.push_back(file);
        output_files_.push_back(file);
      }
      copies_.push_back(spec.redirect_output ? file : "");
      kept_.push_back(file);
    }
  }

  /// What ProcessLogFiles writes, per process ("" none).
  const std::vector<std::string>& live_files() const { return live_files_; }

  /// The file with all of process `index`'s output ("" none).
  const std::string& output_file(std::size_t index) const { return output_files_.at(index); }

  /// Where process `index`'s full output is to be found, for a failure
  /// message: under Bazel, where Bazel keeps it after the test, with the path
  /// it has during the test; else the file itself ("" none).
  std::string where(std::size_t index) const {
    const std::string& now = output_files_.at(index);
    const std::string kept = kept_by_bazel(kept_.at(index), root_);
    if (kept.empty()) return now;
    return kept + " (after the test; now " + now + ")";
  }

  /// Once the Manager is gone: each redirect_output file is copied next to
  /// the live files, and the copy is what output_file() names from then on.
  void finish() {
    for (std::size_t i = 0; i < copies_.size(); ++i) {
      if (!copies_[i].empty() && !redirects_[i].empty()) {
        if (copy_file(redirects_[i], copies_[i])) output_files_[i] = copies_[i];
      }
    }
    copies_.clear();
  }

 private:
  std::vector<std::string> live_files_;    ///< written from the output events, per process ("" none)
  std::vector<std::string> output_files_;  ///< what output_file() answers
  std::vector<std::string> redirects_;     ///< redirect_output paths ("" none)
  std::vector<std::string> copies_;        ///< where a redirect_output file is copied at the end
  std::vector<std::string> kept_;          ///< the file under root_ that holds the output at the end ("" none)
  std::string root_;                       ///< the outputs folder ("" none)
};

/// What names a run's folder of output files: the environment, or the
/// test or suite that runs the services.
std::string scope_label(bool global) {
  if (global) return "environment";
  const auto* unit = ::testing::UnitTest::GetInstance();
  if (const auto* test = unit->current_test_info()) return std::string(test->test_suite_name()) + "." + test->name();
  if (const auto* suite = unit->current_test_suite()) return suite->name();
  return "services";
}

// --------------------------------------------------------- failure messages

/// One exit of a main process, as a Session records it.
struct ExitRecord {
  std::size_t index = 0;
  pid_t pid = 0;
  ExitStatus status;
  bool expected = false;  ///< the Manager expected it (a stop, a shutdown, a one-shot step)
  bool injected = false;  ///< the test signalled this process
  bool reported = false;
};

/// The failure message for a process that exited unexpectedly: its status,
/// when, its last lines and where its full output is.
std::string unexpected_exit_message(const std::string& name, const ExitRecord& record, const std::string& when,
                                    const std::vector<std::string>& lines, const std::string& output_file) {
  std::string message = "process '" + name + "' (pid " + std::to_string(record.pid) + ") exited unexpectedly with " +
                        record.status.describe() + " " + when;
  if (lines.empty()) {
    message += "; it printed nothing";
  } else {
    message += "; its last lines:";
    for (const auto& line : lines) message += "\n  " + line;
  }
  if (!output_file.empty()) message += "\nfull output: " + output_file;
  return message;
}

/// One message for each process that a shutdown had to kill with SIGKILL:
/// its group was alive `before`, and it was killed by the time of `after`.
std::vector<std::string> kill_messages(const std::vector<ProcessInfo>& before, const std::vector<ProcessInfo>& after,
                                       const Config& config) {
  std::vector<std::string> messages;
  for (std::size_t i = 0; i < after.size() && i < before.size(); ++i) {
    if (!before[i].group_alive || !after[i].killed) continue;
    const ProcessSpec& spec = config.processes[i];
    const double grace = spec.graceful_time.value_or(config.graceful_time);
    messages.push_back("process '" + after[i].name + "' (pid " + std::to_string(after[i].pid) +
                       ") did not stop within its graceful time " + format_seconds(grace) + " after " +
                       signal_name(spec.stop_signal) + " and was killed with SIGKILL");
  }
  return messages;
}

}  // namespace

// ----------------------------------------------------------------- Session

/// One run of a config: what Environment and Services share.
class Session {
 public:
  Session(ConfigSource source, Options options, bool global)
      : source_(std::move(source)), options_(std::move(options)), global_(global) {
    // Without a log of the user's, the Manager's own default is used for its
    // messages: written to stderr without ever blocking its event thread.
    own_log_ = static_cast<bool>(options_.log);
    if (!options_.log) options_.log = log_to_stderr;
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { down(true); }

  const std::string& source_name() const { return source_.name(); }

  /// Launches and verifies everything. Throws Error with the whole story
  /// (which process, what its verifier saw, its last lines), after shutting
  /// down whatever was launched.
  void up() {
    if (manager_) return;
    quiet_ = false;
    Config config;
    try {
      LoadedConfig loaded = load();
      for (const auto& warning : loaded.warnings()) options_.log(warning);
      ports_ = std::move(loaded.ports);
      config = std::move(loaded.config);
      prepare_outputs(config);
    } catch (...) {
      // The ports a bad config reserved are given back at once.
      ports_.reset();
      throw;
    }
    config.keep_alive = true;  // the tests decide when the services end
    log_files_.open(names_, outputs_.live_files(), options_.log);

    ManagerOptions manager_options;
    manager_options.output_fd = options_.echo_output ? STDOUT_FILENO : -1;
    manager_options.color = false;
    manager_options.on_output = [this](const OutputLine& line) { log_files_.line(line); };
    if (own_log_) manager_options.log = options_.log;
    manager_options.verbose = options_.verbose;
    manager_options.extra_environment = ports_->environment();
    manager_options.on_exit = [this](const ProcessInfo& info, bool expected) { on_exit(info, expected); };
    {
      std::lock_guard<std::mutex> lock(mutex_);
      phase_ = Phase::starting;
      exits_.clear();
      injected_.clear();
    }
    try {
      manager_ = std::make_unique<Manager>(std::move(config), std::move(manager_options));
      live_manager_.store(manager_.get());
      // Bound before anything is launched: a port in use fails the set-up at once.
      api_ = start_http_api(*manager_, manager_->config().http, options_.log);
      manager_->start();
    } catch (...) {
      stop_everything();
      throw;
    }
    // A process that died during the start-up after its verifier passed
    // (a later one was being verified) fails the set-up as well.
    std::string died;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& record : exits_) {
        if (record.expected || record.injected) continue;
        record.reported = true;
        bool verified = names_.size() > record.index && has_verifier_[record.index];
        died += (died.empty() ? "" : "\n") +
                describe_exit(record, verified ? "during the start-up, after its verifier passed" : "during the start-up");
      }
      if (died.empty()) phase_ = Phase::running;
    }
    if (!died.empty()) {
      stop_everything();
      throw Error(ErrorKind::verify_failed, died);
    }
  }

  /// Shuts everything down; reports unexpected exits not reported yet, and
  /// processes that needed SIGKILL. `quiet`: report to the log only (GoogleTest
  /// may be gone, e.g. from a static destructor after exit()).
  void down(bool quiet) {
    if (quiet) quiet_ = true;
    if (!manager_) return;
    auto before = manager_->processes();
    std::vector<ExitRecord> unreported;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      for (const auto& p : before) {
        if (p.pid <= 0 || p.running) continue;
        // The exit is recorded by the event thread just after the Manager
        // marks the process as exited.
        exits_changed_.wait_for(lock, std::chrono::seconds(2), [&] { return find_exit(p.pid) != nullptr; });
      }
      for (auto& record : exits_) {
        if (record.expected || record.injected || record.reported) continue;
        record.reported = true;
        unreported.push_back(record);
      }
      phase_ = Phase::stopping;
    }
    for (const auto& record : unreported) report(describe_exit(record, "before the services were shut down"));

    api_.reset();
    manager_->shutdown();
    // The Manager's own bound: each stop plan, in the order of the graph.
    bool finished = manager_->wait_finished(manager_->shutdown_bound());
    for (const auto& message : kill_messages(before, manager_->processes(), manager_->config())) {
      options_.log(message);
      if (options_.fail_on_kill) report(message);
    }
    if (!finished) report("the services did not stop within their graceful times; the keeper process kills what is left");
    stop_everything();
  }

  // ---------------------------------------------------------- accessors

  bool is_up() const { return manager_ != nullptr; }

  Manager& manager() const {
    if (!manager_) {
      throw Error(ErrorKind::invalid_argument, "the services of " + source_name() +
                                                   " are not up (their set-up failed, or has not run, or they were shut down)");
    }
    return *manager_;
  }

  std::size_t index(const std::string& name) const {
    auto index = manager().index_of(name);
    if (index) return *index;
    std::string known;
    for (const auto& n : names_) known += (known.empty() ? "" : ", ") + n;
    throw Error(ErrorKind::not_found, "no process named '" + name + "' in " + source_name() + " (processes: " + known + ")");
  }

  PortAllocator& ports() const {
    manager();
    return *ports_;
  }

  std::optional<std::string> api_url() const {
    manager();
    if (!api_) return std::nullopt;
    return api_->url();
  }

  std::string output_file(std::size_t index) const { return outputs_.output_file(index); }

  /// A process's graceful time for a stop or restart from a test: its own
  /// `graceful_time`, else the config's restart-graceful-time.
  double restart_grace(std::size_t index) const { return manager().restart_grace(index); }

  /// Signals sent by the test: the exit they cause is not unexpected.
  void mark_injected(pid_t pid) {
    std::lock_guard<std::mutex> lock(mutex_);
    injected_.insert(pid);
  }

 private:
  enum class Phase { down, starting, running, stopping };

  /// The config of the source, with the ports it uses. Errors are named by
  /// source_name(), the path as the user gave it.
  LoadedConfig load() const {
    if (source_.config_) {
      // Run as it is, with the caller's ports if it has any.
      auto ports = source_.ports_ ? source_.ports_ : std::make_shared<PortAllocator>(options_.ports);
      return LoadedConfig{*source_.config_, std::move(ports), source_name()};
    }
    const VerifierRegistry registry = options_.verifiers.value_or(builtin_verifiers());
    if (source_.json_) return load_config_json(*source_.json_, source_name(), registry, options_.ports);
    if (source_.path_.empty()) {
      throw Error(ErrorKind::config_not_found,
                  "no pymanager config: pass --pymanager_config=PATH to the test, or set PYMANAGER_CONFIG");
    }
    const std::string path = resolve_path(source_.path_);
    return load_config_json(read_config_json(path), source_name(), registry, options_.ports, config_directory_of(path));
  }

  /// The names of the processes, and where their output goes.
  void prepare_outputs(const Config& config) {
    std::string root = options_.outputs_dir ? *options_.outputs_dir : getenv_string("TEST_UNDECLARED_OUTPUTS_DIR");
    names_.clear();
    has_verifier_.clear();
    for (const auto& spec : config.processes) {
      names_.push_back(spec.name);
      has_verifier_.push_back(!spec.verifiers.empty());
    }
    outputs_.prepare(config, root, scope_label(global_), options_.log);
  }

  /// Stops and forgets the Manager, the API, the output files and the ports.
  void stop_everything() {
    api_.reset();
    // ~Manager shuts down (bounded), joins its event thread (which may be in
    // on_exit: live_manager_ stays valid until then) and has the keeper kill
    // whatever escaped the process groups.
    manager_.reset();
    live_manager_.store(nullptr);
    log_files_.close();
    outputs_.finish();
    ports_.reset();
    std::lock_guard<std::mutex> lock(mutex_);
    phase_ = Phase::down;
  }

  /// The Manager's event thread: every exit of a main process.
  void on_exit(const ProcessInfo& info, bool expected) {
    const std::size_t index = static_cast<std::size_t>(info.id - 1);
    ExitStatus status = info.exit.value_or(ExitStatus{});
    log_files_.note(index, "pid " + std::to_string(info.pid) + " exited with " + status.describe() +
                               (expected ? "" : " (unexpected)"));
    ExitRecord record;
    bool report_now;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      record.index = index;
      record.pid = info.pid;
      record.status = status;
      record.expected = expected;
      record.injected = injected_.count(info.pid) != 0;
      report_now = !record.expected && !record.injected && phase_ == Phase::running && options_.report_exits_at_once;
      record.reported = report_now;
      exits_.push_back(record);
      exits_changed_.notify_all();
    }
    if (!report_now) return;
    try {
      report(describe_exit(record, "while the tests ran"));
    } catch (...) {
      // --gtest_throw_on_failure turns a failure into an exception; this is
      // the Manager's event thread, which must not end by one.
    }
  }

  const ExitRecord* find_exit(pid_t pid) const {
    for (const auto& record : exits_) {
      if (record.pid == pid) return &record;
    }
    return nullptr;
  }

  std::string describe_exit(const ExitRecord& record, const std::string& when) const {
    std::vector<std::string> lines;
    if (Manager* manager = live_manager_.load()) lines = manager->output_tail(record.index, options_.tail_lines);
    return unexpected_exit_message(names_.at(record.index), record, when, lines, outputs_.where(record.index));
  }

  /// A non-fatal test failure, located at the config ("cfg.json: Failure").
  void report(const std::string& message) {
    if (quiet_) {
      options_.log(message);
      return;
    }
    // ADD_FAILURE_AT without its "Failed" line: the message says it all.
    const std::string text = "pymanager: " + message;
    GTEST_MESSAGE_AT_(source_name().c_str(), -1, text.c_str(), ::testing::TestPartResult::kNonFatalFailure);
  }

  ConfigSource source_;
  Options options_;
  bool global_;
  std::shared_ptr<PortAllocator> ports_;
  std::vector<std::string> names_;
  std::vector<bool> has_verifier_;
  ProcessOutputs outputs_;
  ProcessLogFiles log_files_;
  bool own_log_ = false;  ///< the user gave Options::log
  std::atomic<bool> quiet_{false};

  mutable std::mutex mutex_;
  std::condition_variable exits_changed_;
  Phase phase_ = Phase::down;
  std::vector<ExitRecord> exits_;
  std::set<pid_t> injected_;

  // Declared last: destroyed first, while everything the callbacks use lives.
  std::atomic<Manager*> live_manager_{nullptr};
  std::unique_ptr<Manager> manager_;
  std::unique_ptr<HttpApi> api_;
};

// ---------------------------------------------------------- ServiceControl

ServiceControl::ServiceControl() = default;
ServiceControl::~ServiceControl() = default;

bool ServiceControl::up() const { return session_ && session_->is_up(); }

std::vector<ProcessInfo> ServiceControl::processes() const { return session_->manager().processes(); }

ProcessInfo ServiceControl::process(const std::string& name) const {
  return session_->manager().process(session_->index(name));
}

bool ServiceControl::running(const std::string& name) const { return process(name).running; }

int ServiceControl::pid(const std::string& name) const {
  ProcessInfo info = process(name);
  if (!info.running) {
    throw Error(ErrorKind::not_found, "process '" + name + "' is not running" +
                                          (info.exit ? " (it exited with " + info.exit->describe() + ")" : std::string()));
  }
  return info.pid;
}

int ServiceControl::port(const std::string& name) const { return session_->ports().port(name); }

std::string ServiceControl::url(const std::string& name, const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(port(name)) + path;
}

std::vector<std::pair<std::string, int>> ServiceControl::ports() const { return session_->ports().ports(); }

std::optional<std::string> ServiceControl::api_url() const { return session_->api_url(); }

std::vector<std::string> ServiceControl::output_tail(const std::string& name, std::size_t lines) const {
  return session_->manager().output_tail(session_->index(name), lines);
}

std::string ServiceControl::output_file(const std::string& name) const {
  return session_->output_file(session_->index(name));
}

ProcessInfo ServiceControl::restart(const std::string& name) {
  std::size_t i = session_->index(name);
  return session_->manager().restart(i, session_->restart_grace(i));
}

void ServiceControl::stop(const std::string& name) {
  std::size_t i = session_->index(name);
  session_->manager().stop_process(i, session_->restart_grace(i));
}

ProcessInfo ServiceControl::start(const std::string& name) {
  std::size_t i = session_->index(name);
  return session_->manager().start_process(i);
}

void ServiceControl::kill(const std::string& name) {
  std::size_t i = session_->index(name);
  Manager& manager = session_->manager();
  ProcessInfo info = manager.process(i);
  if (!info.group_alive && info.daemons.empty()) return;
  session_->mark_injected(info.pid);
  // SIGKILL to its group and its daemons; returns once they are gone.
  manager.kill_process(i);
}

void ServiceControl::signal(const std::string& name, int sig) {
  std::size_t i = session_->index(name);
  Manager& manager = session_->manager();
  ProcessInfo info = manager.process(i);
  if (!info.group_alive) throw Error(ErrorKind::not_found, "process '" + name + "' is not running");
  session_->mark_injected(info.pid);
  manager.signal_process(i, sig);
}

Manager& ServiceControl::manager() const { return session_->manager(); }

// ------------------------------------------------------------- Environment

namespace {

// Never destroyed: ~Environment may run from GoogleTest's own static
// destructor (exit() during the tests), after this file's statics are gone.
std::mutex& current_mutex() {
  static std::mutex* mutex = new std::mutex;
  return *mutex;
}

Environment*& current_environment() {
  static Environment* current = nullptr;
  return current;
}

}  // namespace

Environment::Environment(ConfigSource source, Options options) {
  session_ = std::make_unique<Session>(std::move(source), std::move(options), true);
  std::lock_guard<std::mutex> lock(current_mutex());
  current_environment() = this;
}

Environment::~Environment() {
  // Normally TearDown has run. Without it (exit() during the tests, which
  // runs GoogleTest's static destructors), shut down without GoogleTest.
  session_->down(true);
  std::lock_guard<std::mutex> lock(current_mutex());
  if (current_environment() == this) current_environment() = nullptr;
}

void Environment::SetUp() {
  std::string failure;
  try {
    session_->up();
    return;
  } catch (const std::exception& e) {
    failure = e.what();
  } catch (...) {
    failure = "unknown exception";
  }
  const std::string text =
      "pymanager: the services could not be set up, so the tests are skipped (nothing launched is left running):\n" +
      failure;
  // GTEST_FAIL_AT without its "Failed" line. A fatal failure: GoogleTest
  // then skips every test.
  GTEST_MESSAGE_AT_(session_->source_name().c_str(), -1, text.c_str(), ::testing::TestPartResult::kFatalFailure);
}

void Environment::TearDown() { session_->down(false); }

Environment& environment() {
  std::lock_guard<std::mutex> lock(current_mutex());
  if (current_environment() == nullptr) {
    throw Error(ErrorKind::not_found,
                "no pymanager::testing::Environment exists: link //gtest_env:main, or call "
                "pymanager::testing::register_environment() from your main()");
  }
  return *current_environment();
}

Environment* register_environment(int* argc, char** argv, Options options) {
  std::optional<std::string> path;
  const std::string flag = "--pymanager_config";
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string arg = argv[i];
    if (starts_with(arg, flag + "=")) {
      path = arg.substr(flag.size() + 1);
      continue;
    }
    if (arg == flag && i + 1 < *argc) {
      path = argv[++i];
      continue;
    }
    argv[out++] = argv[i];
  }
  *argc = out;
  argv[out] = nullptr;
  if (!path) path = getenv_string("PYMANAGER_CONFIG");
  auto* env = new Environment(ConfigSource(*path), std::move(options));
  ::testing::AddGlobalTestEnvironment(env);  // GoogleTest owns it from here
  return env;
}

// ---------------------------------------------------------------- Services

Services::Services(ConfigSource source, Options options) {
  session_ = std::make_unique<Session>(std::move(source), std::move(options), false);
  try {
    session_->up();
  } catch (const Error& e) {
    throw Error(e.kind(), "pymanager: the services of " + session_->source_name() +
                              " could not be set up (nothing launched is left running):\n" + e.what());
  }
}

Services::~Services() {
  // A report may throw (--gtest_throw_on_failure); a destructor must not.
  try {
    session_->down(false);
  } catch (...) {
  }
}

}  // namespace testing
}  // namespace v1
}  // namespace pymanager
