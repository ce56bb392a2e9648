// pymanager: the config model and its parser.
//
// The parser accepts every file the original (Python) tool accepted and
// checks it completely before anything is launched: each error is one
// message naming the JSON path, e.g.
//   processes.web.options.redirect_ouput: unknown key (did you mean redirect_output?)
#ifndef PYMANAGER_CONFIG_HPP
#define PYMANAGER_CONFIG_HPP

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/json_check.hpp"
#include "pymanager/detail/json_reader.hpp"
#include "pymanager/error.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

struct VerifierSpec {
  std::string type;                          ///< `module.Class`, e.g. pymutils.http_verifier.HttpOkVerifier
  nlohmann::json arguments = nlohmann::json::object();
  std::shared_ptr<const Verifier> verifier;  ///< made by the registry's factory from `arguments`
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
  std::optional<VerifierSpec> verifier;
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
  HttpSpec http;
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
};

namespace detail {

using OJson = nlohmann::ordered_json;

inline void parse_modules(const OJson& value, const std::string& path, Config& config) {
  if (!value.is_object()) throw_config_error(path, "expected an object, got " + describe_json_type(value));
  for (auto it = value.begin(); it != value.end(); ++it) {
    ObjectReader<OJson> module(*it, join_path(path, it.key()));
    auto classes = module.string_list("verifiers");
    module.finish();
    config.modules[it.key()] = classes.value_or(std::vector<std::string>{});
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
  }
  if (const OJson* verifier = reader.member("verifier")) {
    spec.verifier = parse_verifier(*verifier, reader.path_of("verifier"), config, registry);
  }
  reader.finish();
  return spec;
}

}  // namespace detail

/// Checks and converts a parsed config. `json` must be an ordered_json so
/// that processes keep the order they are written in. Throws Error with
/// kind config_invalid (or config_no_processes) naming the JSON path.
inline Config parse_config(const nlohmann::ordered_json& json, const VerifierRegistry& registry) {
  using detail::OJson;
  detail::check_nesting(json);
  detail::ObjectReader<OJson> root(json, "");
  Config config;

  // Read in dependency order: modules and default_shell before processes.
  if (const OJson* modules = root.member("modules")) detail::parse_modules(*modules, "modules", config);
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

/// Reads, parses and checks a config file. Error kinds map to the original's
/// exit codes: config_not_found (1), config_unreadable (2), config_not_json (3),
/// config_no_processes (4), config_invalid (5).
inline Config load_config_file(const std::string& path, const VerifierRegistry& registry) {
  nlohmann::ordered_json json = read_config_json(path);
  try {
    return parse_config(json, registry);
  } catch (const Error& e) {
    throw Error(e.kind(), path + ": " + e.what());
  }
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_CONFIG_HPP
