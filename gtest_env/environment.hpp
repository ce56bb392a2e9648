// pymanager for GoogleTest: the services of a pymanager config up before the
// tests, gone after them, even when the test binary crashes.
//
//   - pymanager::testing::Environment: a global ::testing::Environment.
//     //gtest_env:main registers one from --pymanager_config=PATH or
//     PYMANAGER_CONFIG; your own main() calls register_environment().
//   - pymanager::testing::Services: the same as an RAII handle, for one test
//     suite (SetUpTestSuite) or one test.
//   - both give the tests the processes, their ports, their output, and
//     restart / stop / start / kill / signal for fault injection.
//
// User documentation: gtest_env/README.md.
//
// This header is all a test file includes: the Manager, the verifiers and
// cpp-httplib live in environment.cc, compiled once.
#ifndef PYMANAGER_GTEST_ENV_ENVIRONMENT_HPP
#define PYMANAGER_GTEST_ENV_ENVIRONMENT_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pymanager/config.hpp"
#include "pymanager/error.hpp"
#include "pymanager/ports.hpp"
#include "pymanager/process.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

class Manager;

namespace testing {

/// How the services are run for the tests. Every field has a default.
struct Options {
  /// The verifiers a config may name. Default: the built-in ones
  /// (HttpOkVerifier, ExitedVerifier); add yours to builtin_verifiers().
  std::optional<VerifierRegistry> verifiers;
  /// Echo each line the processes print to standard output, prefixed with
  /// the process name ("web | ..."). Default true. Either way the lines go
  /// to the output files and to output_tail().
  bool echo_output = true;
  /// Also log launches, verifications and signals sent.
  bool verbose = false;
  /// How many of a process's last lines a failure message shows. Default 20.
  std::size_t tail_lines = 20;
  /// The folder that receives `pymanager/<scope>/<process>.log`, each
  /// process's full output. Default (nullopt): TEST_UNDECLARED_OUTPUTS_DIR
  /// when Bazel provides it, else no files. "": no files.
  std::optional<std::string> outputs_dir;
  /// A process that had to be killed with SIGKILL at shutdown (it ignored
  /// SIGTERM for graceful-time) is always reported in the log; true: it is
  /// also a test failure. Default false.
  bool fail_on_kill = false;
  /// An unexpected exit is reported as a test failure as soon as it happens
  /// (default: attributed to the running test), or, false, once, when the
  /// services are shut down.
  bool report_exits_at_once = true;
  /// Where the ports of `${port:NAME}` come from (see pymanager/ports.hpp).
  PortOptions ports;
  /// Receives pymanager's own messages, one line each. Default:
  /// "pymanager: <message>" on standard error. It is called from the
  /// manager's threads, sometimes with the manager's lock held: it must be
  /// thread-safe and must not call back into the environment or the Manager.
  std::function<void(const std::string&)> log;
};

/// Which config to run: a file (the usual case), JSON, or a parsed Config.
class ConfigSource {
 public:
  /// A config file. A relative path is looked up as resolve_path() does.
  ConfigSource(std::string path) : path_(std::move(path)) {}  // NOLINT: implicit on purpose
  ConfigSource(const char* path) : path_(path) {}            // NOLINT

  /// A config already read; `${port:NAME}` placeholders are expanded.
  /// `name` stands for the file in messages.
  static ConfigSource json(nlohmann::ordered_json config, std::string name = "(inline config)");

  /// A config already parsed: it is run as it is. If it uses ports from your
  /// own PortAllocator (expand_ports before parse_config), pass it here so
  /// that port() and the children's PYMANAGER_PORT_* variables know them.
  static ConfigSource config(Config config, std::shared_ptr<PortAllocator> ports = nullptr,
                             std::string name = "(parsed config)");

  /// The path or name, for messages.
  const std::string& name() const { return json_ || config_ ? name_ : path_; }

 private:
  friend class Session;
  ConfigSource() = default;
  std::string path_;
  std::string name_;
  std::optional<nlohmann::ordered_json> json_;
  std::optional<Config> config_;
  std::shared_ptr<PortAllocator> ports_;
};

class Session;

/// What the tests can do with running services. Processes are named as in
/// the config; ports by their `${port:NAME}` names. Every call throws
/// pymanager::Error when the services are not up, or no such process exists.
class ServiceControl {
 public:
  ServiceControl(const ServiceControl&) = delete;
  ServiceControl& operator=(const ServiceControl&) = delete;

  /// True between a successful start and the shutdown.
  bool up() const;

  /// Every process, in config order: pid, running, exit status, restarts.
  std::vector<ProcessInfo> processes() const;
  ProcessInfo process(const std::string& name) const;
  bool running(const std::string& name) const;
  /// The pid of the process's main process (also its process group id).
  /// Throws when it is not running, so that a stale pid is never signalled.
  int pid(const std::string& name) const;

  /// The port named `name` (`${port:NAME}` in the config). A name the
  /// config does not use is reserved now (the children do not see it).
  int port(const std::string& name) const;
  /// "http://127.0.0.1:<port(name)>" followed by `path` (e.g. "/health").
  std::string url(const std::string& name, const std::string& path = "") const;
  /// Every named port, in the order of first use.
  std::vector<std::pair<std::string, int>> ports() const;
  /// The HTTP API's address when the config enables it ("http": {"enabled":
  /// true, "port": 0}), else nullopt.
  std::optional<std::string> api_url() const;

  /// The last `lines` lines the process printed (stdout and stderr).
  std::vector<std::string> output_tail(const std::string& name, std::size_t lines = 20) const;
  /// The file that receives the process's full output, or "" when there is none.
  std::string output_file(const std::string& name) const;

  /// Stops the process (SIGTERM, SIGKILL after restart-graceful-time), starts
  /// it again and waits for its verifier. Throws pymanager::Error when the
  /// new process cannot be started or verified.
  ProcessInfo restart(const std::string& name);
  /// Stops the process and waits until its whole process group is gone.
  void stop(const std::string& name);
  /// Starts a stopped process and waits for its verifier.
  ProcessInfo start(const std::string& name);
  /// SIGKILL to the process group, then waits until the group is gone. Not
  /// reported as an unexpected exit: the test asked for it.
  void kill(const std::string& name);
  /// Sends `sig` to the process group and returns at once. If the process
  /// exits after this, that exit is not reported as unexpected.
  void signal(const std::string& name, int sig);

  /// The Manager itself, for anything else.
  Manager& manager() const;

 protected:
  ServiceControl();
  ~ServiceControl();
  std::unique_ptr<Session> session_;
};

/// A global GoogleTest environment: SetUp launches and verifies every
/// process; if that fails, it is a fatal failure naming the process and what
/// its verifier saw last, GoogleTest skips the tests, and nothing launched
/// stays alive. TearDown shuts everything down gracefully. A process that
/// exits unexpectedly while the tests run is a test failure.
class Environment : public ::testing::Environment, public ServiceControl {
 public:
  explicit Environment(ConfigSource source, Options options = {});
  ~Environment() override;

  void SetUp() override;
  void TearDown() override;
};

/// The same as an RAII handle: the constructor launches and verifies every
/// process and throws pymanager::Error (with the same message as the
/// Environment's) when that fails, leaving nothing running; the destructor
/// shuts everything down and reports as TearDown does.
class Services : public ServiceControl {
 public:
  explicit Services(ConfigSource source, Options options = {});
  ~Services();
};

/// The Environment registered last (by register_environment() or by
/// constructing one). Throws pymanager::Error when there is none.
Environment& environment();

/// For your own main(): takes `--pymanager_config=PATH` (or
/// `--pymanager_config PATH`) out of argv, else reads the environment
/// variable PYMANAGER_CONFIG, and registers an Environment for that config
/// with ::testing::AddGlobalTestEnvironment. Call it after
/// ::testing::InitGoogleTest. Without a config, the Environment's SetUp
/// fails with a message saying so.
Environment* register_environment(int* argc, char** argv, Options options = {});

/// Finds a file named on the command line or in a config: an absolute path
/// as it is; a relative one in the current folder, then in the Bazel
/// runfiles tree (RUNFILES_DIR, TEST_SRCDIR, <binary>.runfiles, the
/// runfiles manifest; with or without the workspace name in front), then
/// under BUILD_WORKING_DIRECTORY (`bazel run`). Throws pymanager::Error
/// (config_not_found) listing where it looked.
std::string resolve_path(const std::string& path);

}  // namespace testing
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_GTEST_ENV_ENVIRONMENT_HPP
