// pymanager: the config model and its parser.
//
// The parser accepts every file the original (Python) tool accepted and
// checks it completely before anything is launched: each error is one
// message naming the JSON path, e.g.
//   processes.web.options.redirect_ouput: unknown key (did you mean redirect_output?)
#ifndef PYMANAGER_CONFIG_HPP
#define PYMANAGER_CONFIG_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/json_check.hpp"
#include "pymanager/detail/json_reader.hpp"
#include "pymanager/error.hpp"
#include "pymanager/plugin_loader.hpp"
#include "pymanager/signals.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

struct VerifierSpec {
  std::string type;                          ///< `module.Class`, e.g. pymutils.http_verifier.HttpOkVerifier
  nlohmann::json arguments = nlohmann::json::object();
  std::shared_ptr<const Verifier> verifier;  ///< made by the registry's factory from `arguments`
  /// Where it is written: `verifier`, or `verifiers[1]` (relative to its process).
  std::string key = "verifier";
};

/// `"started"`: the dependency was spawned; `"verified"`: its verifier passed (or, without a verifier, it was spawned).
enum class DependencyCondition { started, verified };

/// "started" / "verified", as a config writes them.
inline const char* to_string(DependencyCondition condition) {
  return condition == DependencyCondition::started ? "started" : "verified";
}

/// One entry of a process's `depends_on`.
struct Dependency {
  std::string name;            ///< the other process's key under `processes`
  std::size_t index = 0;       ///< its 0-based index in Config::processes
  DependencyCondition condition = DependencyCondition::verified;
};

struct ProcessSpec {
  std::string name;                    ///< its key under `processes`
  std::string executable;              ///< searched in PATH, or relative to the manager's directory
  std::vector<std::string> arguments;  ///< required, may be empty
  bool suppress_output = false;        ///< `options.suppress_output`: discard the output
  std::optional<std::string> redirect_output;    ///< `options.redirect_output`: write it raw to this file
  std::optional<std::string> working_directory;  ///< `options.working_directory`
  std::optional<std::string> environment_file;   ///< `options.environment_file`: sourced by the shell
  /// `options.shell`: run `<shell> -c <executable> <arguments...>`, as Python's
  /// Popen(shell=True) did (the arguments become $0, $1, ...). Empty: no shell.
  std::string shell;
  /// `verifier` (the seed's one check) or `verifiers` (a list): all must
  /// pass, in order. Empty: the process is ready once it was spawned.
  std::vector<VerifierSpec> verifiers;
  /// True when a verifier succeeds by the process's exit (ExitedVerifier).
  bool expects_exit() const {
    return std::any_of(verifiers.begin(), verifiers.end(), [](const VerifierSpec& v) { return v.verifier->expects_exit(); });
  }
  /// True when a verifier reads the process's output (OutputVerifier).
  bool reads_output() const {
    return std::any_of(verifiers.begin(), verifiers.end(), [](const VerifierSpec& v) { return v.verifier->reads_output(); });
  }
  /// `depends_on`: the processes that must be started or verified before this
  /// one starts, in the order written. nullopt: the key is absent; an empty
  /// list counts as present (see Config::uses_dependencies).
  std::optional<std::vector<Dependency>> depends_on;
  int stop_signal = SIGTERM;  ///< `options.stop_signal`: sent first when the process is stopped
  /// `options.graceful_time` (seconds from the stop signal to SIGKILL);
  /// nullopt: the top-level `graceful_time`.
  std::optional<double> graceful_time;
  /// `options.environment`, in file order: added to the child's environment
  /// last, over the inherited variables, the manager's extra environment and
  /// what `environment_file` sets.
  std::vector<std::pair<std::string, std::string>> environment;
};

struct HttpSpec {
  bool enabled = false;
  int port = 5001;                ///< 0: any free port (the address is printed at start-up)
  std::string host = "127.0.0.1"; ///< the address to bind; a warning is printed when it is not loopback
  /// When set (here, or by the environment variable PYMANAGER_TOKEN), every
  /// request must carry `Authorization: Bearer <token>`.
  std::optional<std::string> token;
};

struct MessageSpec {
  bool process_exit = false;      ///< "process.exit"
  bool verifier_fail = false;     ///< "verifier.fail"
  bool verifier_verbose = false;  ///< "verifier.verbose" (implies verifier.fail)
};

struct Config {
  /// `modules`: module name -> the verifier classes it provides.
  std::map<std::string, std::vector<std::string>> modules;
  /// `modules.<name>.library`: module name -> the plugin's path (relative
  /// paths resolved against the config file's folder), for the modules that
  /// name one.
  std::map<std::string, std::string> module_libraries;
  /// The plugins loaded for module_libraries. Their verifiers keep them
  /// loaded by themselves; these are kept for what a front-end reports.
  std::vector<LoadedPlugin> plugins;
  HttpSpec http;
  /// The ports the file's `${port:NAME}` placeholders became, in the order
  /// of first use (set by load_config_json; empty for a config parsed
  /// without it). For what front-ends report: the start-up line, GET /,
  /// `ctl list`.
  std::vector<std::pair<std::string, int>> ports;
  bool keep_alive = false;       ///< `keep-alive` / `keep_alive`
  double graceful_time = 10.0;   ///< `graceful-time` / `graceful_time`, seconds
  /// `restart-graceful-time` / `restart_graceful_time`: seconds a process gets
  /// to stop before SIGKILL when it is restarted or stopped through the API
  /// (the original's "few seconds").
  double restart_graceful_time = 5.0;
  MessageSpec messages;
  std::string default_shell = "/bin/sh";
  std::vector<ProcessSpec> processes;  ///< in the order written in the file
  /// What the parser accepted but a user should hear about (for example
  /// `keep-alive` and `keep_alive` given with different values). The
  /// binary and the GoogleTest environment print each one as a warning.
  std::vector<std::string> warnings;
  /// The folder relative paths (executable, working_directory, ...) are
  /// resolved against: where pymanager was started. Empty: the current directory.
  std::string base_directory;

  /// 0-based index of the process named `name`, or -1.
  int index_of(const std::string& name) const {
    for (std::size_t i = 0; i < processes.size(); ++i) {
      if (processes[i].name == name) return static_cast<int>(i);
    }
    return -1;
  }

  /// True when any process has a `depends_on` key (then start-up runs as a
  /// graph; otherwise in file order, as the original).
  bool uses_dependencies() const {
    return std::any_of(processes.begin(), processes.end(),
                       [](const ProcessSpec& process) { return process.depends_on.has_value(); });
  }
};

namespace detail {

using OJson = nlohmann::ordered_json;

inline void parse_modules(const OJson& value, const std::string& path, Config& config,
                          const std::string& config_directory = "") {
  if (!value.is_object()) throw_config_error(path, "expected an object, got " + describe_json_type(value));
  for (auto it = value.begin(); it != value.end(); ++it) {
    ObjectReader<OJson> module(*it, join_path(path, it.key()));
    auto classes = module.string_list("verifiers");
    auto library = module.string("library");
    module.finish();
    config.modules[it.key()] = classes.value_or(std::vector<std::string>{});
    if (library) {
      if (library->empty()) throw_config_error(module.path_of("library"), "must not be empty");
      std::string resolved = *library;
      if (resolved[0] != '/' && !config_directory.empty()) {
        resolved = (config_directory.back() == '/' ? config_directory : config_directory + "/") + resolved;
      }
      config.module_libraries[it.key()] = resolved;
    }
  }
}

/// Loads the plugin of every module that names a library, registering its
/// classes in `registry`.
inline void load_module_plugins(Config& config, VerifierRegistry& registry) {
  for (const auto& module : config.module_libraries) {
    config.plugins.push_back(load_plugin(module.first, module.second, config.modules[module.first],
                                         join_path(join_path("modules", module.first), "library"), registry));
  }
}

inline void parse_messages(const OJson& value, const std::string& path, Config& config) {
  if (!value.is_array()) throw_config_error(path, "expected a list of strings, got " + describe_json_type(value));
  const char* const kKnown[] = {"process.exit", "verifier.fail", "verifier.verbose"};
  for (std::size_t i = 0; i < value.size(); ++i) {
    std::string item_path = path + "[" + std::to_string(i) + "]";
    if (!value[i].is_string()) throw_config_error(item_path, "expected a string, got " + describe_json_type(value[i]));
    std::string name = value[i].get<std::string>();
    if (name == "process.exit") {
      config.messages.process_exit = true;
    } else if (name == "verifier.fail") {
      config.messages.verifier_fail = true;
    } else if (name == "verifier.verbose") {
      config.messages.verifier_verbose = true;
      config.messages.verifier_fail = true;
    } else {
      std::string suggestion = closest_match(name, {std::begin(kKnown), std::end(kKnown)});
      throw_config_error(item_path, "unknown message type '" + name + "'" +
                                        (suggestion.empty() ? std::string(" (known: process.exit, verifier.fail, verifier.verbose)")
                                                            : " (did you mean " + suggestion + "?)"));
    }
  }
}

inline std::string loaded_verifier_names(const Config& config) {
  std::string out;
  for (const auto& module : config.modules) {
    for (const auto& cls : module.second) out += (out.empty() ? "" : ", ") + module.first + "." + cls;
  }
  return out.empty() ? "none" : out;
}

inline VerifierSpec parse_verifier(const OJson& value, const std::string& path, const Config& config,
                                   const VerifierRegistry& registry) {
  ObjectReader<OJson> reader(value, path);
  VerifierSpec spec;
  spec.type = reader.required_string("type");
  const OJson* arguments = reader.member("arguments");
  reader.finish();

  // A type must be listed under `modules` (as the original required) and be
  // known to this build.
  bool listed = false;
  std::vector<std::string> listed_names;
  for (const auto& module : config.modules) {
    for (const auto& cls : module.second) {
      listed_names.push_back(module.first + "." + cls);
      if (module.first + "." + cls == spec.type) listed = true;
    }
  }
  std::string type_path = join_path(path, "type");
  if (!listed) {
    std::string suggestion = closest_match(spec.type, listed_names);
    throw_config_error(type_path, "verifier '" + spec.type + "' is not loaded under modules" +
                                      (suggestion.empty() ? " (loaded: " + loaded_verifier_names(config) + ")"
                                                          : " (did you mean " + suggestion + "?)"));
  }
  const VerifierFactory* factory = registry.find(spec.type);
  if (factory == nullptr) {
    std::string known;
    for (const auto& name : registry.names()) known += (known.empty() ? "" : ", ") + name;
    throw_config_error(type_path, "unknown verifier '" + spec.type + "' (known: " + known + ")");
  }
  std::string arguments_path = join_path(path, "arguments");
  if (arguments != nullptr && !arguments->is_object()) {
    throw_config_error(arguments_path, "expected an object, got " + describe_json_type(*arguments));
  }
  // Factories take plain json; the order of arguments does not matter.
  spec.arguments = arguments ? nlohmann::json::parse(arguments->dump()) : nlohmann::json::object();
  spec.verifier = (*factory)(spec.arguments, arguments_path);
  return spec;
}

/// True for a name a POSIX shell can assign: letters, digits and '_', not
/// starting with a digit.
inline bool is_shell_variable_name(const std::string& name) {
  if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

/// What to say after "unknown signal 'X'": the name meant, or how to write one.
inline std::string signal_suggestion(const std::string& name) {
  if (!name.empty() && std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return " (a number is written without quotes: " + name + ")";
  }
  std::string upper = name;
  for (char& c : upper) c = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  if (upper != name && signal_from_name(upper)) return " (did you mean " + upper + "? signal names are upper case)";
  std::string near = closest_match(name, signal_names(upper.compare(0, 3, "SIG") == 0));
  if (!near.empty()) return " (did you mean " + near + "?)";
  return " (give a name such as SIGTERM or TERM, or a number from 1 to " + std::to_string(max_signal_number()) + ")";
}

/// `options.stop_signal`: "SIGINT", "INT", or a number from 1 to SIGRTMAX.
inline int parse_any_signal(const OJson& value, const std::string& path);

/// Why signal `number` cannot be a stop signal ("" when it can): it is
/// ignored by default, stops the process, or is the C library's own.
inline std::string stop_signal_problem(int number) {
  switch (number) {
    case SIGSTOP: case SIGTSTP: case SIGTTIN: case SIGTTOU:
      return signal_name(number) + " suspends a process instead of ending it";
    case SIGCONT: case SIGCHLD: case SIGURG: case SIGWINCH:
      return signal_name(number) + " is ignored by default and cannot stop a process";
    default:
      break;
  }
  if (number >= 32 && number < SIGRTMIN) return "signal " + std::to_string(number) + " is reserved by the C library";
  return "";
}

inline int refuse_useless_stop_signal(int number, const std::string& path) {
  if (std::string problem = stop_signal_problem(number); !problem.empty()) throw_config_error(path, problem);
  return number;
}

inline int parse_stop_signal(const OJson& value, const std::string& path) {
  return refuse_useless_stop_signal(parse_any_signal(value, path), path);
}

inline int parse_any_signal(const OJson& value, const std::string& path) {
  const int max = max_signal_number();
  if (value.is_number_integer()) {  // signed or unsigned
    // An unsigned value may not fit a long long: anything above max is out of range.
    const bool too_large =
        value.is_number_unsigned() && value.get<unsigned long long>() > static_cast<unsigned long long>(max);
    const long long number = too_large ? max + 1LL : value.get<long long>();
    if (number < 1 || number > max) {
      throw_config_error(path,
                         "a signal number must be between 1 and " + std::to_string(max) + ", got " + value.dump());
    }
    return static_cast<int>(number);
  }
  if (value.is_string()) {
    const std::string& name = value.get_ref<const std::string&>();
    check_no_nul(name, path);
    if (auto number = signal_from_name(name)) return *number;
    throw_config_error(path, "unknown signal '" + name + "'" + signal_suggestion(name));
  }
  throw_config_error(path, "expected a signal name such as \"SIGTERM\" or a number from 1 to " + std::to_string(max) +
                               ", got " + describe_json_type(value));
}

/// `options.environment`: an object of NAME: "value", in file order.
inline std::vector<std::pair<std::string, std::string>> parse_environment(const OJson& value, const std::string& path) {
  if (!value.is_object()) {
    throw_config_error(path, "expected an object of NAME: \"value\" strings, got " + describe_json_type(value));
  }
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(value.size());
  for (auto it = value.begin(); it != value.end(); ++it) {
    const std::string& name = it.key();
    const std::string item_path = join_path(path, name);
    if (name.empty()) throw_config_error(path, "a variable name must not be empty");
    check_no_nul(name, item_path);
    if (name.find('=') != std::string::npos) {
      throw_config_error(item_path, "a variable name must not contain '=' (write \"NAME\": \"value\")");
    }
    if (!it->is_string()) {
      throw_config_error(item_path, "expected a string, got " + describe_json_type(*it) +
                                        (it->is_number() ? " (numbers are not converted: write it in quotes)" : ""));
    }
    check_no_nul(it->get_ref<const std::string&>(), item_path);
    out.emplace_back(name, it->get<std::string>());
  }
  return out;
}

/// With `environment_file`, the shell that sources the file sets
/// `options.environment` after it, and a shell can only set (and dash only
/// passes on) names of letters, digits and '_'.
inline void check_environment_names_with_environment_file(const ProcessSpec& spec, const std::string& path) {
  if (!spec.environment_file) return;
  for (const auto& variable : spec.environment) {
    if (is_shell_variable_name(variable.first)) continue;
    throw_config_error(join_path(path, variable.first),
                       "not a shell variable name (letters, digits and '_', not starting with a digit), which "
                       "the shell that sources environment_file cannot set");
  }
}

/// One `depends_on` condition: "started" or "verified".
inline DependencyCondition parse_dependency_condition(const OJson& value, const std::string& path) {
  if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    if (text == "started") return DependencyCondition::started;
    if (text == "verified") return DependencyCondition::verified;
  }
  // A string is shown as written ("ready"), anything else by its type.
  std::string problem =
      "expected \"started\" or \"verified\", got " + (value.is_string() ? value.dump() : describe_json_type(value));
  if (value.is_string()) {
    std::string near = closest_match(value.get<std::string>(), {"started", "verified"});
    if (!near.empty()) problem += " (did you mean " + near + "?)";
  }
  throw_config_error(path, problem);
}

/// `depends_on` as written: a list of names (each "verified") or an object
/// name -> condition. Checks what one process can: the shape, duplicates and
/// the process itself. The indices are set by resolve_dependencies, once
/// every process is known (a name may refer to a process written later).
inline std::vector<Dependency> parse_depends_on(const OJson& value, const std::string& path, const std::string& self) {
  std::vector<Dependency> out;
  std::unordered_set<std::string> seen;
  auto add = [&](const std::string& name, DependencyCondition condition, const std::string& item_path) {
    check_no_nul(name, item_path);
    if (name == self) throw_config_error(item_path, "process '" + self + "' depends on itself");
    if (!seen.insert(name).second) throw_config_error(item_path, "'" + name + "' is listed twice");
    out.push_back(Dependency{name, 0, condition});
  };
  if (value.is_array()) {
    out.reserve(value.size());
    for (std::size_t i = 0; i < value.size(); ++i) {
      std::string item_path = path + "[" + std::to_string(i) + "]";
      if (!value[i].is_string()) {
        throw_config_error(item_path, "expected a process name (a string), got " + describe_json_type(value[i]));
      }
      add(value[i].get<std::string>(), DependencyCondition::verified, item_path);
    }
  } else if (value.is_object()) {
    out.reserve(value.size());
    for (auto it = value.begin(); it != value.end(); ++it) {
      std::string item_path = join_path(path, it.key());
      add(it.key(), parse_dependency_condition(*it, item_path), item_path);
    }
  } else {
    throw_config_error(path, "expected a list of process names or an object (name: \"started\" or \"verified\"), got " +
                                 describe_json_type(value));
  }
  return out;
}

/// "unknown process 'dbb' (did you mean db?)", or with the known names.
[[noreturn]] inline void throw_unknown_process(const Config& config, const std::string& name, const std::string& path) {
  std::vector<std::string> names;
  names.reserve(config.processes.size());
  for (const auto& process : config.processes) names.push_back(process.name);
  std::string near = closest_match(name, names);
  if (!near.empty()) throw_config_error(path, "unknown process '" + name + "' (did you mean " + near + "?)");
  constexpr std::size_t kShown = 10;
  std::string known;
  for (std::size_t i = 0; i < names.size() && i < kShown; ++i) known += (i ? ", " : "") + names[i];
  if (names.size() > kShown) known += ", and " + std::to_string(names.size() - kShown) + " more";
  throw_config_error(path, "unknown process '" + name + "' (known: " + known + ")");
}

/// Sets each Dependency::index, once every process is parsed; an unknown
/// name is an error naming its path. `processes` is the config's
/// `processes` object, in the same order as config.processes.
inline void resolve_dependencies(Config& config, const OJson& processes) {
  std::unordered_map<std::string, std::size_t> index_by_name;
  index_by_name.reserve(config.processes.size());
  for (std::size_t i = 0; i < config.processes.size(); ++i) index_by_name.emplace(config.processes[i].name, i);
  auto json = processes.begin();
  for (auto& spec : config.processes) {
    const OJson& process_json = *json++;
    if (!spec.depends_on) continue;
    const std::string path = join_path(join_path("processes", spec.name), "depends_on");
    const bool listed = process_json.find("depends_on")->is_array();
    for (std::size_t k = 0; k < spec.depends_on->size(); ++k) {
      Dependency& dependency = (*spec.depends_on)[k];
      auto found = index_by_name.find(dependency.name);
      if (found == index_by_name.end()) {
        throw_unknown_process(config, dependency.name,
                              listed ? path + "[" + std::to_string(k) + "]" : join_path(path, dependency.name));
      }
      dependency.index = found->second;
    }
  }
}

/// "a -> b -> c -> a"; a long cycle is shortened in the middle.
inline std::string describe_cycle(const Config& config, const std::vector<std::size_t>& cycle) {
  constexpr std::size_t kHead = 10, kTail = 5;
  std::string out;
  for (std::size_t i = 0; i < cycle.size(); ++i) {
    if (cycle.size() > kHead + kTail && i == kHead) {
      out += " -> ...";
      i = cycle.size() - kTail;
    }
    out += (out.empty() ? "" : " -> ") + config.processes[cycle[i]].name;
  }
  out += " -> " + config.processes[cycle.front()].name;
  if (cycle.size() > kHead + kTail) out += " (" + std::to_string(cycle.size()) + " processes)";
  return out;
}

/// Throws config_invalid when the dependencies form a cycle, at the
/// `depends_on` of the cycle's first process in file order:
/// `processes.api.depends_on: cycle api -> db -> api`. An iterative
/// depth-first search, linear in processes and dependencies: any length of
/// chain is safe. Needs resolve_dependencies first.
inline void check_dependency_cycles(const Config& config) {
  enum : unsigned char { unvisited, on_path, finished };
  const std::size_t n = config.processes.size();
  std::vector<unsigned char> state(n, unvisited);
  // The search path: each process with the position of the next dependency to follow.
  std::vector<std::pair<std::size_t, std::size_t>> path;
  for (std::size_t root = 0; root < n; ++root) {
    if (state[root] != unvisited) continue;
    state[root] = on_path;
    path.emplace_back(root, 0);
    while (!path.empty()) {
      const std::size_t node = path.back().first;
      const auto& dependencies = config.processes[node].depends_on;
      if (!dependencies || path.back().second == dependencies->size()) {
        state[node] = finished;
        path.pop_back();
        continue;
      }
      const std::size_t next = (*dependencies)[path.back().second++].index;
      if (state[next] == unvisited) {
        state[next] = on_path;
        path.emplace_back(next, 0);
      } else if (state[next] == on_path) {
        // The cycle is the path from `next` to here; write it from its first process in file order.
        std::size_t start = path.size() - 1;
        while (path[start].first != next) --start;
        std::vector<std::size_t> cycle;
        for (std::size_t i = start; i < path.size(); ++i) cycle.push_back(path[i].first);
        std::rotate(cycle.begin(), std::min_element(cycle.begin(), cycle.end()), cycle.end());
        throw_config_error(join_path(join_path("processes", config.processes[cycle.front()].name), "depends_on"),
                           "cycle " + describe_cycle(config, cycle));
      }
    }
  }
}

inline ProcessSpec parse_process(const std::string& name, const OJson& value, const std::string& path,
                                 const Config& config, const VerifierRegistry& registry) {
  ObjectReader<OJson> reader(value, path);
  ProcessSpec spec;
  spec.name = name;
  spec.executable = reader.required_string("executable");
  if (spec.executable.empty()) throw_config_error(reader.path_of("executable"), "must not be empty");
  auto arguments = reader.string_list("arguments");
  if (!arguments) {
    reader.missing("arguments", "required key is missing (use [] for a process without arguments)");
  }
  spec.arguments = *arguments;

  if (const OJson* options = reader.member("options")) {
    ObjectReader<OJson> opt(*options, reader.path_of("options"));
    spec.suppress_output = opt.boolean("suppress_output").value_or(false);
    spec.redirect_output = opt.string("redirect_output");
    spec.working_directory = opt.string("working_directory");
    spec.environment_file = opt.string("environment_file");
    if (const OJson* stop_signal = opt.member("stop_signal")) {
      spec.stop_signal = parse_stop_signal(*stop_signal, opt.path_of("stop_signal"));
    }
    spec.graceful_time = opt.seconds("graceful_time");
    if (const OJson* environment = opt.member("environment")) {
      spec.environment = parse_environment(*environment, opt.path_of("environment"));
    }
    if (const OJson* shell = opt.member("shell")) {
      if (shell->is_boolean()) {
        spec.shell = shell->get<bool>() ? config.default_shell : "";
      } else if (shell->is_string() && !shell->get<std::string>().empty()) {
        spec.shell = shell->get<std::string>();
      } else {
        opt.expected("shell", "true, false or the path of a shell", *shell);
      }
    }
    opt.finish();
    if (spec.suppress_output && spec.redirect_output) {
      throw_config_error(opt.path_of("redirect_output"), "cannot be used together with suppress_output");
    }
    if (spec.redirect_output && spec.redirect_output->empty()) {
      throw_config_error(opt.path_of("redirect_output"), "must not be empty");
    }
    if (spec.working_directory && spec.working_directory->empty()) {
      throw_config_error(opt.path_of("working_directory"), "must not be empty");
    }
    if (spec.environment_file && spec.environment_file->empty()) {
      throw_config_error(opt.path_of("environment_file"), "must not be empty");
    }
    check_environment_names_with_environment_file(spec, opt.path_of("environment"));
  }
  if (const OJson* depends_on = reader.member("depends_on")) {
    spec.depends_on = parse_depends_on(*depends_on, reader.path_of("depends_on"), name);
  }
  const OJson* verifier = reader.member("verifier");
  const OJson* verifiers = reader.member("verifiers");
  if (verifier != nullptr && verifiers != nullptr) {
    throw_config_error(reader.path_of("verifiers"), "give either verifier (one check) or verifiers (a list), not both");
  }
  if (verifier != nullptr) spec.verifiers.push_back(parse_verifier(*verifier, reader.path_of("verifier"), config, registry));
  if (verifiers != nullptr) {
    const std::string list_path = reader.path_of("verifiers");
    if (!verifiers->is_array()) throw_config_error(list_path, "expected a list of verifiers, got " + describe_json_type(*verifiers));
    for (std::size_t k = 0; k < verifiers->size(); ++k) {
      const std::string key = "verifiers[" + std::to_string(k) + "]";
      spec.verifiers.push_back(parse_verifier((*verifiers)[k], list_path + "[" + std::to_string(k) + "]", config, registry));
      spec.verifiers.back().key = key;
    }
  }
  reader.finish();
  return spec;
}

}  // namespace detail

/// Checks and converts a parsed config. `json` must be an ordered_json so
/// that processes keep the order they are written in. Throws Error with
/// kind config_invalid (or config_no_processes) naming the JSON path.
///
/// Modules with a `library` have it loaded (plugin_loader.hpp) before any
/// verifier is made; a relative library path is taken relative to
/// `config_directory` (the config file's folder; empty: the current
/// directory).
inline Config parse_config(const nlohmann::ordered_json& json, const VerifierRegistry& base_registry,
                           const std::string& config_directory = "") {
  using detail::OJson;
  detail::check_nesting(json);
  detail::ObjectReader<OJson> root(json, "");
  Config config;

  // For editors (config_schema.hpp): accepted, and ignored.
  root.string("$schema");
  // Read in dependency order: modules and default_shell before processes.
  if (const OJson* modules = root.member("modules")) detail::parse_modules(*modules, "modules", config, config_directory);
  if (auto shell = root.string("default_shell")) {
    if (shell->empty()) detail::throw_config_error("default_shell", "must not be empty");
    config.default_shell = *shell;
  }
  if (const OJson* http = root.member("http")) {
    detail::ObjectReader<OJson> reader(*http, "http");
    config.http.enabled = reader.boolean("enabled").value_or(false);
    config.http.port = static_cast<int>(reader.integer("port", 0, 65535).value_or(5001));
    if (auto host = reader.string("host")) {
      if (host->empty()) detail::throw_config_error("http.host", "must not be empty");
      config.http.host = *host;
    }
    config.http.token = reader.string("token");
    if (config.http.token && config.http.token->empty()) detail::throw_config_error("http.token", "must not be empty");
    reader.finish();
  }
  // Both spellings may be given: the original's README documents the
  // hyphen, the original reads the underscore.
  auto& warnings = config.warnings;
  auto flag = [&](const std::string& key) { return root.boolean(key); };
  auto seconds = [&](const std::string& key) { return root.seconds(key); };
  config.keep_alive = root.either_spelling<bool>("keep-alive", "keep_alive", flag, warnings).value_or(false);
  config.graceful_time = root.either_spelling<double>("graceful-time", "graceful_time", seconds, warnings).value_or(10.0);
  config.restart_graceful_time =
      root.either_spelling<double>("restart-graceful-time", "restart_graceful_time", seconds, warnings).value_or(5.0);
  if (const OJson* messages = root.member("messages")) detail::parse_messages(*messages, "messages", config);

  const OJson* processes = root.member("processes");
  root.finish();
  // Plugins are loaded once the file's top level is known to be valid, and
  // before any verifier is made.
  VerifierRegistry with_plugins;
  if (!config.module_libraries.empty()) {
    with_plugins = base_registry;
    detail::load_module_plugins(config, with_plugins);
  }
  const VerifierRegistry& registry = config.module_libraries.empty() ? base_registry : with_plugins;
  if (processes == nullptr || (processes->is_object() && processes->empty())) {
    throw Error(ErrorKind::config_no_processes, "processes: no processes are configured");
  }
  if (!processes->is_object()) {
    detail::throw_config_error("processes", "expected an object (process name -> process), got " +
                                                detail::describe_json_type(*processes));
  }
  config.processes.reserve(processes->size());
  for (auto it = processes->begin(); it != processes->end(); ++it) {
    if (it.key().empty()) detail::throw_config_error("processes", "a process name must not be empty");
    detail::check_no_nul(it.key(), detail::join_path("processes", it.key()));
    config.processes.push_back(
        detail::parse_process(it.key(), *it, detail::join_path("processes", it.key()), config, registry));
  }
  // Names may refer to processes written later: checked once all are known.
  detail::resolve_dependencies(config, *processes);
  detail::check_dependency_cycles(config);
  return config;
}

/// The largest config file read (a file of 100,000 processes is about 17 MiB).
constexpr std::size_t kMaxConfigFileBytes = std::size_t{64} * 1024 * 1024;

/// Reads a config file as JSON, keeping the order of its keys. Only a
/// regular file of at most kMaxConfigFileBytes is read (never a FIFO, a
/// device or /dev/zero). Throws config_not_found, config_unreadable,
/// config_not_json, or config_invalid for a duplicate key, a NUL byte in a
/// string or a nesting deeper than detail::kMaxJsonDepth (each with its
/// JSON path).
inline nlohmann::ordered_json read_config_json(const std::string& path) {
  auto unreadable = [&](const std::string& why) {
    return Error(ErrorKind::config_unreadable, "cannot read config file " + path + ": " + why);
  };
  // O_NONBLOCK: opening a FIFO that nobody writes must not wait.
  detail::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) {
    if (errno == ENOENT) throw Error(ErrorKind::config_not_found, "config file not found: " + path);
    throw unreadable(std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw unreadable(std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw unreadable("is a directory");
  if (!S_ISREG(st.st_mode)) throw unreadable("not a regular file");
  const std::string limit = std::to_string(kMaxConfigFileBytes / (std::size_t{1024} * 1024)) + " MiB";
  if (static_cast<unsigned long long>(st.st_size) > kMaxConfigFileBytes) {
    throw unreadable("larger than " + limit + " (" + std::to_string(st.st_size) + " bytes)");
  }
  std::string text;
  text.resize(static_cast<std::size_t>(st.st_size));
  std::size_t used = 0;
  for (;;) {
    // One byte more than the limit, in case the file grows while we read.
    if (text.size() - used < 4096) text.resize(std::min(text.size() + 65536, kMaxConfigFileBytes + 1));
    if (used == text.size()) throw unreadable("larger than " + limit);
    ssize_t n = detail::retry_eintr([&] { return ::read(fd.get(), &text[used], text.size() - used); });
    if (n < 0) throw unreadable(std::strerror(errno));
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  text.resize(used);
  try {
    return detail::parse_json_text(text);
  } catch (const Error& e) {
    throw Error(e.kind(), path + ": " + e.what());
  }
}

/// The folder of the config file at `path`, against which its relative
/// library paths are resolved: "" for a bare file name (the current directory).
inline std::string config_directory_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return "";
  return slash == 0 ? "/" : path.substr(0, slash);
}

/// Reads, parses and checks a config file. Error kinds map to the original's
/// exit codes: config_not_found (1), config_unreadable (2), config_not_json (3),
/// config_no_processes (4), config_invalid (5).
inline Config load_config_file(const std::string& path, const VerifierRegistry& registry) {
  nlohmann::ordered_json json = read_config_json(path);
  try {
    return parse_config(json, registry, config_directory_of(path));
  } catch (const Error& e) {
    throw Error(e.kind(), path + ": " + e.what());
  }
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_CONFIG_HPP
