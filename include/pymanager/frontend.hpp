// pymanager: the steps every front-end takes before and around a Manager, so
// that the binary, the GoogleTest environment and a program of your own read
// a config, reserve its ports, print its warnings and serve its API alike.
//
//   pymanager::LoadedConfig loaded = pymanager::load_config("cfg.json", pymanager::builtin_verifiers());
//   for (const auto& warning : loaded.warnings()) pymanager::log_to_stderr(warning);
//   pymanager::ManagerOptions options;
//   options.extra_environment = loaded.ports->environment();   // PYMANAGER_PORT_WEB=20417
//   pymanager::Manager manager(std::move(loaded.config), options);
//   auto api = pymanager::start_http_api(manager, manager.config().http, pymanager::log_to_stderr);
//   manager.start();
//
// load_config_file (config.hpp) is load_config without `${port:NAME}`: a
// config that uses ports needs load_config.
#ifndef PYMANAGER_FRONTEND_HPP
#define PYMANAGER_FRONTEND_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pymanager/config.hpp"
#include "pymanager/detail/fd.hpp"
#include "pymanager/error.hpp"
#include "pymanager/http_api.hpp"
#include "pymanager/manager.hpp"
#include "pymanager/ports.hpp"
#include "pymanager/process.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

// ------------------------------------------------------------ the config

/// A config ready for a Manager, with what came with it.
struct LoadedConfig {
  Config config;
  /// Holds the port of every `${port:NAME}` in the file until it is destroyed
  /// (never null after load_config). Give its environment() to
  /// ManagerOptions::extra_environment, and keep it as long as the Manager.
  std::shared_ptr<PortAllocator> ports;
  /// The file's path, or the name that stands for it: the prefix of the
  /// messages about this config.
  std::string source_name;

  /// config.warnings as a front-end prints them: "<source_name>: warning: <warning>".
  std::vector<std::string> warnings() const {
    std::vector<std::string> out;
    out.reserve(config.warnings.size());
    for (const auto& warning : config.warnings) out.push_back(source_name + ": warning: " + warning);
    return out;
  }
};

/// Expands the `${port:NAME}` placeholders of `json` (each name gets a port
/// from a new PortAllocator made with `port_options`), then parses and checks
/// it. Throws Error with the kind of the failure and the message prefixed by
/// `source_name`, e.g. `cfg.json: processes.web.arguments: expected an array`;
/// the ports reserved so far are given back.
///
/// `config_directory` is the folder relative library paths of `modules` are
/// resolved against (the config file's; empty: the current directory).
inline LoadedConfig load_config_json(nlohmann::ordered_json json, std::string source_name,
                                     const VerifierRegistry& registry, const PortOptions& port_options = {},
                                     const std::string& config_directory = "") {
  LoadedConfig loaded;
  loaded.source_name = std::move(source_name);
  loaded.ports = std::make_shared<PortAllocator>(port_options);
  try {
    expand_ports(json, *loaded.ports);
    loaded.config = parse_config(json, registry, config_directory);
    loaded.config.ports = loaded.ports->ports();
  } catch (const Error& e) {
    throw Error(e.kind(), loaded.source_name + ": " + e.what());
  }
  return loaded;
}

/// Reads the config file at `path` (read_config_json: its errors name the
/// file already), then load_config_json with `path` as the source name. The
/// error kinds map to the binary's exit codes (exit_code_for).
inline LoadedConfig load_config(const std::string& path, const VerifierRegistry& registry,
                                const PortOptions& port_options = {}) {
  return load_config_json(read_config_json(path), path, registry, port_options, config_directory_of(path));
}

// --------------------------------------------------------------- the API

/// Where the API's token comes from: `http.token` in the config first, else
/// the environment variable PYMANAGER_TOKEN when it is set and not empty.
struct ApiToken {
  std::optional<std::string> value;
  /// "config", "environment", or "" when there is no token.
  std::string source;
};

inline ApiToken api_token(const HttpSpec& http) {
  if (http.token) return ApiToken{http.token, "config"};
  const char* env = std::getenv("PYMANAGER_TOKEN");
  if (env != nullptr && *env != '\0') return ApiToken{std::string(env), "environment"};
  return ApiToken{};
}

/// The HttpApi's options for the config's `http` section: its host and port,
/// the token of api_token(), and `log` for the API's messages.
inline HttpApiOptions http_api_options(const HttpSpec& http, std::function<void(const std::string&)> log) {
  HttpApiOptions options;
  options.host = http.host;
  options.port = http.port;
  options.token = api_token(http).value;
  options.log = std::move(log);
  return options;
}

/// Serves the API over `manager` when the config enables it (`http.enabled`),
/// else returns null. Call it before Manager::start(): the port is bound
/// here, so a port in use is an Error (ErrorKind::system, naming the address)
/// before anything is launched.
inline std::unique_ptr<HttpApi> start_http_api(Manager& manager, const HttpSpec& http,
                                               std::function<void(const std::string&)> log) {
  if (!http.enabled) return nullptr;
  auto api = std::make_unique<HttpApi>(manager, http_api_options(http, std::move(log)));
  api->start();
  return api;
}

// ------------------------------------------------------------ the rest

/// The default log of a front-end: "pymanager: <message>" and a newline on
/// standard error, written at once so that lines logged from several threads
/// stay whole. A failed write is ignored (a closed stderr must not stop
/// anything).
inline void log_to_stderr(const std::string& message) {
  detail::write_all(STDERR_FILENO, "pymanager: " + message + "\n");
}

/// The current working directory. Throws Error (ErrorKind::system) when it
/// cannot be read.
inline std::string current_directory() { return detail::current_directory(); }

/// `path` as it is when it is absolute, else taken relative to `base`
/// (default: the current directory), as the Manager resolves the relative
/// paths of a config against Config::base_directory.
inline std::string absolute_path(const std::string& path, const std::string& base = "") {
  if (!path.empty() && path[0] == '/') return path;
  return detail::join_dir(base.empty() ? current_directory() : base, path);
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_FRONTEND_HPP
