// The standalone pymanager binary: reads a config, launches and verifies its
// processes, and shuts them down on SIGINT, SIGTERM or SIGQUIT (a second
// SIGINT kills at once). Exit codes as the original's: 1 config file not
// found, 2 cannot read it, 3 not valid JSON, 4 no processes, 5 processes
// could not be set up (invalid config included); 0 after a shutdown; and
// ours: 6 when the keeper process was killed from outside.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "pymanager/pymanager.hpp"
#include "tools/check.hpp"
#include "tools/ctl.hpp"
#include "tools/posix_io.hpp"

namespace {

constexpr int kUsageError = 2;
/// The keeper process was killed from outside while pymanager ran.
constexpr int kKeeperLost = 6;

const char kUsage[] =
    "usage: pymanager [-h] [-f FILE] [-d] [-v] [-w] [-l LOGFILE] [-V]\n"
    "       pymanager ctl [--url URL] [-f FILE] [--json] COMMAND [ID] [-n N]   (pymanager ctl --help)\n"
    "       pymanager check [-f FILE] [--strict]   validate a config, print what would run\n"
    "       pymanager schema                       print the config's JSON Schema\n"
    "\n"
    "Launches the processes described in a JSON config, in order, waits until\n"
    "each one is verified, and shuts them all down on SIGINT/SIGTERM/SIGQUIT/SIGHUP.\n"
    "\n"
    "options:\n"
    "  -h, --help             show this help and exit\n"
    "  -f, --file FILE        the config file (default: pymanager.json)\n"
    "  -d, --daemon           run in the background; returns once every process is\n"
    "                         launched and verified (exit 0), or set-up failed (exit 5)\n"
    "  -v, --verbose          log launches, verifications and signals\n"
    "  -w, --debug            -v, and every process.exit / verifier message\n"
    "  -l, --logfile LOGFILE  write pymanager's own messages to LOGFILE (appended)\n"
    "  -V, --version          print the version and exit\n"
    "\n"
    "exit codes: 0 after a shutdown, 1 config file not found, 2 cannot read it,\n"
    "3 not valid JSON, 4 no processes, 5 processes could not be set up,\n"
    "6 the keeper process was killed from outside (what it held was killed).\n";

struct Options {
  std::string file = "pymanager.json";
  bool daemon = false;
  bool verbose = false;
  bool debug = false;
  std::optional<std::string> logfile;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "pymanager: " << message << "\n" << kUsage;
  std::exit(kUsageError);
}

Options parse_arguments(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos) {
      inline_value = arg.substr(arg.find('=') + 1);
      arg = arg.substr(0, arg.find('='));
    }
    auto value = [&](const char* name) -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) usage_error(std::string("option ") + name + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "-V" || arg == "--version") {
      std::cout << "pymanager " << pymanager::version() << "\n";
      std::exit(0);
    } else if (arg == "-f" || arg == "--file") {
      options.file = value("--file");
    } else if (arg == "-l" || arg == "--logfile") {
      options.logfile = value("--logfile");
    } else if (arg == "-d" || arg == "--daemon") {
      options.daemon = true;
    } else if (arg == "-v" || arg == "--verbose") {
      options.verbose = true;
    } else if (arg == "-w" || arg == "--debug") {
      options.debug = true;
      options.verbose = true;
    } else {
      usage_error("unrecognized argument: " + std::string(argv[i]));
    }
    if (inline_value && arg != "-f" && arg != "--file" && arg != "-l" && arg != "--logfile") {
      usage_error("option " + arg + " takes no value");
    }
  }
  return options;
}

/// Writes pymanager's own messages: to stderr, or appended to the log file
/// with a timestamp.
class Logger {
 public:
  explicit Logger(const std::optional<std::string>& file) {
    if (!file) return;
    path_ = *file;
    fd_ = ::open(file->c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      std::cerr << "pymanager: " << pymanager::errno_message("cannot open log file " + *file, errno) << "\n";
      std::exit(pymanager::exit_code_for(pymanager::ErrorKind::config_unreadable));
    }
  }
  void operator()(const std::string& message) const {
    if (fd_ < 0) {
      // Never blocks: a stderr nobody reads costs messages (counted), never
      // a stalled manager.
      stderr_->write("pymanager: " + message + "\n");
      return;
    }
    char stamp[32];
    std::time_t now = std::time(nullptr);
    struct tm local {};
    ::localtime_r(&now, &local);
    std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &local);
    if (!pymanager_tool::write_all(fd_, std::string(stamp) + " pymanager: " + message + "\n") &&
        !failure_reported_.exchange(true)) {
      // A full disk: said once on stderr, and pymanager goes on.
      pymanager::log_to_stderr("warning: " + pymanager::errno_message("cannot write log file " + path_, errno) +
                               " (messages are lost until writes succeed again)");
    }
  }
  int fd() const { return fd_; }
  /// At the end: what stderr has not taken yet, for at most a second.
  void flush() const { stderr_->flush(std::chrono::seconds(1)); }
  /// After daemonizing: standard error is another file now.
  void reopen_stderr() { stderr_ = std::make_unique<pymanager::StreamWriter>(STDERR_FILENO); }

 private:
  std::unique_ptr<pymanager::StreamWriter> stderr_ = std::make_unique<pymanager::StreamWriter>(STDERR_FILENO);
  int fd_ = -1;
  std::string path_;
  mutable std::atomic<bool> failure_reported_{false};
};

/// Daemon mode: forks before any thread exists. The parent waits for the
/// child's verdict on a pipe and exits with it; the child returns the pipe's
/// write end and carries on in its own session.
int daemonize_or_exit(Logger& logger) {
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) {
    std::cerr << "pymanager: " << pymanager::errno_message("pipe2", errno) << "\n";
    std::exit(5);
  }
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    std::cerr << "pymanager: " << pymanager::errno_message("fork", errno) << "\n";
    std::exit(5);
  }
  if (pid > 0) {
    ::close(status_pipe[1]);
    std::string verdict;
    char buffer[4096];
    for (;;) {
      ssize_t n = pymanager_tool::read_some(status_pipe[0], buffer, sizeof buffer);
      if (n <= 0) break;
      verdict.append(buffer, static_cast<std::size_t>(n));
    }
    if (verdict == "ok") {
      std::cerr << "pymanager: running in the background as pid " << pid << "\n";
      std::exit(0);
    }
    if (verdict.empty()) verdict = "the daemon exited during set-up";
    std::cerr << "pymanager: " << verdict << "\n";
    // Reap the daemon if it already exited; it is not ours to wait for otherwise.
    int status;
    ::waitpid(pid, &status, WNOHANG);
    std::exit(5);
  }
  ::close(status_pipe[0]);
  ::setsid();
  int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  ::dup2(null_fd, STDIN_FILENO);
  int out = logger.fd() >= 0 ? logger.fd() : null_fd;
  ::dup2(out, STDOUT_FILENO);
  ::dup2(out, STDERR_FILENO);
  if (null_fd > 2) ::close(null_fd);
  logger.reopen_stderr();
  return status_pipe[1];
}

/// Turns SIGINT/SIGTERM/SIGQUIT/SIGHUP into shutdown requests, on its own thread
/// (signalfd: no work is done inside a signal handler).
class SignalWatcher {
 public:
  explicit SignalWatcher(const sigset_t& signals) {
    signal_fd_ = ::signalfd(-1, &signals, SFD_CLOEXEC);
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
    if (signal_fd_ < 0 || stop_fd_ < 0) {
      std::cerr << "pymanager: " << pymanager::errno_message("signalfd", errno) << "\n";
      std::exit(5);
    }
  }
  ~SignalWatcher() {
    stop();
    ::close(signal_fd_);
    ::close(stop_fd_);
  }

  void watch(pymanager::Manager& manager, const Logger& log) {
    thread_ = std::thread([this, &manager, &log] {
      int interrupts = 0;
      for (;;) {
        struct pollfd fds[2] = {{signal_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (pymanager_tool::poll_forever(fds, 2) < 0) return;
        if (fds[1].revents & POLLIN) return;
        signalfd_siginfo info;
        if (::read(signal_fd_, &info, sizeof info) != static_cast<ssize_t>(sizeof info)) continue;
        int sig = static_cast<int>(info.ssi_signo);
        if (sig == SIGUSR1 || sig == SIGUSR2) {
          log(std::string("received ") + ::sigabbrev_np(sig) + ": ignored (it has no meaning to pymanager)");
        } else if (sig == SIGINT && ++interrupts >= 2) {
          log("second SIGINT: killing every process now");
          manager.shutdown(true);
        } else {
          log(std::string("received ") + ::sigabbrev_np(sig) + ": shutting down");
          manager.shutdown(false);
        }
      }
    });
  }

  void stop() {
    if (!thread_.joinable()) return;
    std::uint64_t one = 1;
    ssize_t ignored = ::write(stop_fd_, &one, sizeof one);
    (void)ignored;
    thread_.join();
  }

 private:
  int signal_fd_ = -1;
  int stop_fd_ = -1;
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  // Started with stdin, stdout or stderr closed (`pymanager >&-`), our own
  // descriptors would take their numbers, and the children's output or our
  // messages would go into a socket: /dev/null holds each closed one.
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
      int null_fd = ::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
      if (null_fd >= 0 && null_fd != fd) {
        ::dup2(null_fd, fd);
        ::close(null_fd);
      }
    }
  }
  // A closed stdout (`pymanager | head`) must not kill the manager before it
  // has stopped its processes: writes then fail with EPIPE instead.
  ::signal(SIGPIPE, SIG_IGN);
  // Under `bazel run`, the binary starts in its runfiles tree: relative paths
  // the user typed are relative to where they ran bazel.
  if (const char* dir = std::getenv("BUILD_WORKING_DIRECTORY")) {
    if (::chdir(dir) != 0) {
      std::cerr << "pymanager: " << pymanager::errno_message(std::string("cannot enter ") + dir, errno) << "\n";
      return 5;
    }
  }
  if (argc > 1 && std::string(argv[1]) == "ctl") {
    return pymanager_tool::run_ctl(std::vector<std::string>(argv + 2, argv + argc));
  }
  if (argc > 1 && std::string(argv[1]) == "check") {
    return pymanager_tool::run_check(std::vector<std::string>(argv + 2, argv + argc));
  }
  if (argc > 1 && std::string(argv[1]) == "schema") {
    return pymanager_tool::run_schema(std::vector<std::string>(argv + 2, argv + argc));
  }
  Options options = parse_arguments(argc, argv);
  Logger logger(options.logfile);

  // `${port:NAME}` placeholders get free ports, held by loaded.ports until
  // pymanager exits (the daemon keeps them after the fork: it inherits the
  // reservations' abstract sockets, which stay bound while any copy is open).
  pymanager::LoadedConfig loaded;
  try {
    loaded = pymanager::load_config(options.file, pymanager::builtin_verifiers());
  } catch (const pymanager::Error& e) {
    std::cerr << "pymanager: " << e.what() << "\n";
    return pymanager::exit_code_for(e.kind());
  }
  for (const auto& warning : loaded.warnings()) logger(warning);
  pymanager::Config& config = loaded.config;
  // What `${port:NAME}` became, where the user looks first.
  if (!config.ports.empty()) logger("ports: " + pymanager_tool::describe_ports(config.ports));
  if (options.verbose) {
    for (const auto& plugin : config.plugins) logger("loaded plugin " + plugin.path + " (module " + plugin.module + ")");
  }
  if (options.debug) {
    config.messages.process_exit = true;
    config.messages.verifier_fail = true;
    config.messages.verifier_verbose = true;
  }

  int status_fd = options.daemon ? daemonize_or_exit(logger) : -1;
  auto report = [&](const std::string& verdict) {
    if (status_fd < 0) return;
    pymanager_tool::write_all(status_fd, verdict);
    ::close(status_fd);
    status_fd = -1;
  };

  // Blocked before any thread starts, so that every thread inherits the mask
  // and the signals arrive only through the signalfd.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGQUIT);
  // The terminal closing (SIGHUP) is a shutdown like SIGTERM, so that the
  // children get their SIGTERM and graceful time instead of dying with us.
  sigaddset(&signals, SIGHUP);
  // SIGUSR1/SIGUSR2 mean nothing to pymanager: noted in the log, no harm done.
  sigaddset(&signals, SIGUSR1);
  sigaddset(&signals, SIGUSR2);
  ::pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Kept apart: the config moves into the Manager.
  const pymanager::HttpSpec http = config.http;
  // The state file says where the token comes from (never the token).
  const pymanager::ApiToken token = pymanager::api_token(http);

  auto log = [&logger](const std::string& message) { logger(message); };
  pymanager::ManagerOptions manager_options;
  manager_options.verbose = options.verbose;
  manager_options.extra_environment = loaded.ports->environment();
  manager_options.log = log;
  int exit_code = 0;
  {
    std::unique_ptr<pymanager::Manager> manager;
    try {
      manager = std::make_unique<pymanager::Manager>(std::move(config), manager_options);
    } catch (const pymanager::Error& e) {
      logger(e.what());
      report(e.what());
      return 5;
    }
    // The API binds before anything is launched: a port in use is an error
    // that leaves nothing behind.
    std::unique_ptr<pymanager::HttpApi> api;
    try {
      api = pymanager::start_http_api(*manager, http, log);
    } catch (const pymanager::Error& e) {
      logger(e.what());
      report(e.what());
      return 5;
    }
    pymanager_tool::StateFile state_file(options.file, api ? std::optional<std::string>(api->url()) : std::nullopt,
                                         api && token.value ? token.source.c_str() : nullptr);
    if (!state_file.error().empty()) logger("warning: " + state_file.error() + " (pymanager ctl will not find this manager)");
    SignalWatcher watcher(signals);
    watcher.watch(*manager, logger);
    try {
      manager->start();
      report("ok");
      manager->wait_finished();
    } catch (const pymanager::Error& e) {
      if (e.kind() == pymanager::ErrorKind::shutting_down) {
        report("shutdown requested during set-up");
        exit_code = 0;
      } else {
        // The Manager logged the failure already (it names the process).
        report(e.what());
        exit_code = pymanager::exit_code_for(e.kind());
      }
    }
    // Killed from outside, the keeper took nothing with it: the Manager
    // killed what it knew of and said what; this run did not end well.
    if (manager->keeper_lost()) exit_code = kKeeperLost;
    watcher.stop();
    if (api) api->stop();
  }
  logger.flush();
  return exit_code;
}
