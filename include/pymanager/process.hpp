// pymanager: one managed process as the outside world sees it, and how its
// command line is built from the config.
#ifndef PYMANAGER_PROCESS_HPP
#define PYMANAGER_PROCESS_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "pymanager/config.hpp"
#include "pymanager/error.hpp"
#include "pymanager/process_state.hpp"
#include "pymanager/verifier.hpp"

extern char** environ;

namespace pymanager {
inline namespace v1 {

/// A snapshot of one managed process.
struct ProcessInfo {
  int id = 0;                 ///< internal id: 1-based, in declaration order
  std::string name;           ///< its key under `processes`
  std::string command;        ///< executable and arguments, space separated (as the original showed)
  bool running = false;       ///< its main process is alive
  int pid = 0;                ///< the pid of its main process (also its process group id), 0 if never started
  std::optional<ExitStatus> exit;  ///< how it ended, once it has
  bool group_alive = false;   ///< something is still running in its process group
  int restarts = 0;           ///< how many times it was started after the first launch
  bool killed = false;        ///< its last stop needed SIGKILL (it ignored its stop signal for the graceful time)
  ProcessState state = ProcessState::waiting;  ///< where it is in its life (see process_state.hpp)
  std::vector<int> daemons;   ///< pids of the daemons it left (descendants that the keeper adopted)
  /// While it waits to be launched: the processes it waits for.
  std::vector<std::string> waiting_for;
};

/// What exactly is executed for a process: resolved before any fork.
struct LaunchPlan {
  std::string path;               ///< absolute path given to execve
  std::vector<std::string> argv;  ///< argv[0] included
  std::vector<std::string> envp;  ///< NAME=value entries
  std::string working_directory;  ///< absolute: working_directory, or the base directory
};

namespace detail {

inline std::string join_dir(const std::string& dir, const std::string& path) {
  if (path.empty() || path[0] == '/' || dir.empty()) return path;
  return dir.back() == '/' ? dir + path : dir + "/" + path;
}

inline std::string current_directory() {
  std::vector<char> buffer(4096);
  while (::getcwd(buffer.data(), buffer.size()) == nullptr) {
    if (errno != ERANGE) throw_system_error("getcwd");
    buffer.resize(buffer.size() * 2);
  }
  return buffer.data();
}

inline bool is_executable_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

/// Sets `entry` (NAME=value) in `envp`, replacing every entry of that name.
inline void set_env_entry(std::vector<std::string>& envp, const std::string& entry) {
  const std::string prefix = entry.substr(0, entry.find('=') + 1);
  envp.erase(std::remove_if(envp.begin(), envp.end(),
                            [&](const std::string& e) { return e.compare(0, prefix.size(), prefix) == 0; }),
             envp.end());
  envp.push_back(entry);
}

/// The `environment_file` wrapper's script, run as `<default_shell> -c SCRIPT
/// FILE NAME=value... -- COMMAND ARGS...`: it sources FILE with every
/// variable exported, then exports each NAME=value given (so that
/// `options.environment` wins over the file), then execs the command (the
/// pid stays the process's own). The assignments are arguments, never part
/// of the script: their values reach the child byte for byte.
inline constexpr const char* kEnvironmentFileScript =
    "set -a && . \"$0\" && set +a && "
    "while [ \"$1\" != -- ]; do export \"$1\" && shift || exit 126; done && shift && exec \"$@\"";

inline std::string env_value(const std::vector<std::string>& envp, const std::string& name) {
  for (const auto& entry : envp) {
    if (entry.size() > name.size() && entry.compare(0, name.size(), name) == 0 && entry[name.size()] == '=') {
      return entry.substr(name.size() + 1);
    }
  }
  return {};
}

/// Finds `program` as a shell would: a name with a slash is a path
/// (relative to `base`), any other name is looked up in PATH. Throws a
/// spawn error that names the process.
inline std::string resolve_executable(const std::string& process, const std::string& program, const std::string& base,
                                      const std::string& path_variable) {
  auto fail = [&](const std::string& why) -> std::string {
    throw Error(ErrorKind::spawn_failed, "cannot start process '" + process + "' (" + program + "): " + why);
  };
  if (program.find('/') != std::string::npos) {
    std::string full = join_dir(base, program);
    struct stat st {};
    if (::stat(full.c_str(), &st) != 0) return fail(std::strerror(errno));
    if (S_ISDIR(st.st_mode)) return fail("is a directory");
    if (::access(full.c_str(), X_OK) != 0) return fail(std::strerror(errno));
    return full;
  }
  std::string search = path_variable.empty() ? "/usr/local/bin:/usr/bin:/bin" : path_variable;
  bool found_not_executable = false;
  std::size_t start = 0;
  while (start <= search.size()) {
    std::size_t colon = search.find(':', start);
    std::string dir = search.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    // An empty PATH entry means the current directory.
    std::string candidate = join_dir(join_dir(base, dir.empty() ? "." : dir), program);
    if (is_executable_file(candidate)) return candidate;
    if (::access(candidate.c_str(), F_OK) == 0) found_not_executable = true;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return fail(found_not_executable ? "Permission denied" : "executable not found in PATH");
}

}  // namespace detail

/// Builds what to execute for `spec`:
/// - `shell`: `<shell> -c <executable> <arguments...>` (Python's shell=True);
/// - `environment_file`: the command runs under `<default_shell> -c 'set -a; . FILE; exec "$@"'`,
///   so the file is sourced by the shell and its variables are exported into
///   the process's environment (the pid stays the process's own: exec);
/// - the environment: the manager's own (without PYMANAGER_TOKEN), then
///   `extra_env`, then `options.environment`, each replacing a variable of
///   the same name; with `environment_file`, the shell sets
///   `options.environment` again after sourcing the file, so it wins there too;
/// - paths are relative to `config.base_directory` (where pymanager was
///   started), the working directory included.
inline LaunchPlan make_launch_plan(const ProcessSpec& spec, const Config& config,
                                   const std::vector<std::string>& extra_env = {}) {
  const std::string base = config.base_directory.empty() ? detail::current_directory() : config.base_directory;
  LaunchPlan plan;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    // The API's token is for whoever drives pymanager, not for every child.
    if (std::strncmp(*e, "PYMANAGER_TOKEN=", 16) == 0) continue;
    plan.envp.emplace_back(*e);
  }
  // Later entries replace earlier ones of the same name; linear, whatever
  // the number of variables (an index by name, not a search per variable).
  {
    std::vector<std::string> additions(extra_env.begin(), extra_env.end());
    for (const auto& variable : spec.environment) additions.push_back(variable.first + "=" + variable.second);
    std::unordered_map<std::string, std::size_t> last;  // name -> index in additions
    for (std::size_t k = 0; k < additions.size(); ++k) last[additions[k].substr(0, additions[k].find('='))] = k;
    if (!additions.empty()) {
      plan.envp.erase(std::remove_if(plan.envp.begin(), plan.envp.end(),
                                     [&](const std::string& e) { return last.count(e.substr(0, e.find('='))) != 0; }),
                      plan.envp.end());
      for (std::size_t k = 0; k < additions.size(); ++k) {
        if (last[additions[k].substr(0, additions[k].find('='))] == k) plan.envp.push_back(std::move(additions[k]));
      }
    }
  }
  // The child's PATH finds its program (as `PATH=... prog` in a shell, and
  // Python's Popen(env=...), do).
  const std::string path_variable = detail::env_value(plan.envp, "PATH");

  // Without working_directory, a process runs where pymanager was started.
  plan.working_directory = base;
  if (spec.working_directory) {
    plan.working_directory = detail::join_dir(base, *spec.working_directory);
    struct stat st {};
    std::string problem;
    if (::stat(plan.working_directory.c_str(), &st) != 0) {
      problem = std::strerror(errno);
    } else if (!S_ISDIR(st.st_mode)) {
      problem = "not a directory";
    }
    if (!problem.empty()) {
      throw Error(ErrorKind::spawn_failed, "cannot start process '" + spec.name + "': working_directory " +
                                               plan.working_directory + ": " + problem);
    }
  }

  std::vector<std::string> command;
  if (!spec.shell.empty()) {
    command = {detail::resolve_executable(spec.name, spec.shell, base, path_variable), "-c", spec.executable};
  } else {
    command = {detail::resolve_executable(spec.name, spec.executable, base, path_variable)};
  }
  command.insert(command.end(), spec.arguments.begin(), spec.arguments.end());

  if (spec.environment_file) {
    std::string file = detail::join_dir(base, *spec.environment_file);
    if (::access(file.c_str(), R_OK) != 0) {
      throw Error(ErrorKind::spawn_failed, "cannot start process '" + spec.name + "': environment_file " + file + ": " +
                                               std::strerror(errno));
    }
    // `.` with a name without a slash would search PATH: the path is absolute here.
    std::vector<std::string> wrapper = {
        detail::resolve_executable(spec.name, config.default_shell, base, path_variable), "-c",
        detail::kEnvironmentFileScript, file};
    // The parser allows only shell variable names here (check_environment_names_with_environment_file).
    for (const auto& variable : spec.environment) wrapper.push_back(variable.first + "=" + variable.second);
    wrapper.emplace_back("--");
    command.insert(command.begin(), wrapper.begin(), wrapper.end());
  }
  plan.path = command.front();
  plan.argv = std::move(command);
  if (spec.shell.empty() && !spec.environment_file) plan.argv[0] = spec.executable;
  return plan;
}

/// The command as the original's `GET /` showed it: executable and arguments.
inline std::string describe_command(const ProcessSpec& spec) {
  std::string out = spec.executable;
  for (const auto& arg : spec.arguments) out += " " + arg;
  return out;
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_PROCESS_HPP
