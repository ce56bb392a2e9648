// `pymanager ctl`: talks to a running pymanager through its HTTP API, and
// the state file by which it finds one without flags.
//
// A running pymanager (foreground or daemon) writes `<config>.pymanager-state`
// next to its config file: {"pid", "url", "token", "config"}, where "token"
// says where the token is ("config", "environment" or null), never the token
// itself. It removes the file on exit; a file whose pid is dead is stale.
#ifndef PYMANAGER_TOOLS_CTL_HPP
#define PYMANAGER_TOOLS_CTL_HPP

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "pymanager/pymanager.hpp"

namespace pymanager_tool {

inline std::string state_file_for(const std::string& config_path) { return config_path + ".pymanager-state"; }

inline std::string absolute_path(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  return pymanager::detail::join_dir(pymanager::detail::current_directory(), path);
}

/// Written when a manager starts, removed when it exits (if it is still ours).
class StateFile {
 public:
  StateFile(const std::string& config_path, const std::optional<std::string>& url, const char* token_source)
      : path_(state_file_for(config_path)), pid_(::getpid()) {
    nlohmann::json state = {{"pid", pid_},
                            {"url", url ? nlohmann::json(*url) : nlohmann::json(nullptr)},
                            {"token", token_source ? nlohmann::json(token_source) : nlohmann::json(nullptr)},
                            {"config", absolute_path(config_path)},
                            {"version", pymanager::version()}};
    std::string tmp = path_ + "." + std::to_string(pid_) + ".tmp";
    FILE* out = std::fopen(tmp.c_str(), "we");
    if (out == nullptr) {
      error_ = pymanager::errno_message("cannot write state file " + path_, errno);
      return;
    }
    std::string text = state.dump(2) + "\n";
    bool ok = std::fwrite(text.data(), 1, text.size(), out) == text.size();
    ok = std::fclose(out) == 0 && ok;
    if (!ok || std::rename(tmp.c_str(), path_.c_str()) != 0) {
      error_ = pymanager::errno_message("cannot write state file " + path_, errno);
      std::remove(tmp.c_str());
      return;
    }
    written_ = true;
  }
  StateFile(const StateFile&) = delete;
  StateFile& operator=(const StateFile&) = delete;
  ~StateFile() {
    if (!written_) return;
    // Only our own: another manager may have started on the same config since.
    try {
      std::ifstream in(path_);
      auto state = nlohmann::json::parse(in);
      if (state.value("pid", 0) == pid_) std::remove(path_.c_str());
    } catch (...) {
    }
  }
  const std::string& error() const { return error_; }

 private:
  std::string path_;
  int pid_;
  bool written_ = false;
  std::string error_;
};

constexpr int kCtlServerError = 1;
constexpr int kCtlUsage = 2;
constexpr int kCtlUnreachable = 3;

const char kCtlUsageText[] =
    "usage: pymanager ctl [--url URL] [-f FILE] [--json] COMMAND [ID] [-n N]\n"
    "\n"
    "commands:\n"
    "  list           the processes: id, name, status, pid or exit code, command\n"
    "  status         the manager's state (booting ... running ... shutdown)\n"
    "  restart ID     stop (TERM, KILL after restart-graceful-time) and start again, verified\n"
    "  stop ID        stop one process without restarting it\n"
    "  start ID       start a stopped process (and run its verifier)\n"
    "  output ID      the last lines the process printed (-n N, default 100)\n"
    "  shutdown       shut everything down (asynchronously)\n"
    "\n"
    "ID is the process's number (1-based, in config order) or its name.\n"
    "The manager is found through the state file next to its config\n"
    "(-f, default pymanager.json); --url talks to an address directly.\n"
    "The token comes from where the manager took it (the config, or the\n"
    "environment variable PYMANAGER_TOKEN).\n"
    "exit codes: 0 ok, 1 the manager answered with an error, 2 usage,\n"
    "3 no running manager found (or a stale state file).\n";

struct CtlTarget {
  std::string url;
  std::optional<std::string> token;
};

class CtlFailure : public std::runtime_error {
 public:
  CtlFailure(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

inline bool process_alive(int pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

inline CtlTarget find_manager(const std::string& config_path, const std::optional<std::string>& url) {
  const char* env_token = std::getenv("PYMANAGER_TOKEN");
  if (url) return CtlTarget{*url, env_token && *env_token ? std::optional<std::string>(env_token) : std::nullopt};
  std::string path = state_file_for(config_path);
  std::ifstream in(path);
  if (!in) {
    throw CtlFailure(kCtlUnreachable, "no running pymanager found for " + config_path + " (no state file " + path +
                                          "); start one, or pass --url");
  }
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw CtlFailure(kCtlUnreachable, "state file " + path + " is not valid JSON: " + e.what());
  }
  int pid = state.value("pid", 0);
  if (!process_alive(pid)) {
    throw CtlFailure(kCtlUnreachable, "stale state file " + path + ": pid " + std::to_string(pid) +
                                          " is not running (pymanager was killed?); remove the file, or start pymanager");
  }
  if (!state.contains("url") || !state["url"].is_string()) {
    throw CtlFailure(kCtlUnreachable, "pymanager (pid " + std::to_string(pid) + ") runs without its HTTP API: set "
                                      "\"http\": {\"enabled\": true} in " + config_path);
  }
  CtlTarget target{state["url"].get<std::string>(), std::nullopt};
  std::string source = state.value("token", nlohmann::json(nullptr)).is_string() ? state["token"].get<std::string>() : "";
  if (source == "config") {
    std::string config_file = state.value("config", config_path);
    auto json = pymanager::read_config_json(config_file);
    if (json.contains("http") && json["http"].contains("token") && json["http"]["token"].is_string()) {
      target.token = json["http"]["token"].get<std::string>();
    }
  } else if (source == "environment") {
    if (env_token == nullptr || *env_token == '\0') {
      throw CtlFailure(kCtlUsage, "pymanager (pid " + std::to_string(pid) +
                                      ") takes its token from PYMANAGER_TOKEN: set it for ctl too");
    }
    target.token = env_token;
  }
  return target;
}

inline std::string describe_process(const nlohmann::json& p) {
  std::string state = p.value("status", "?");
  std::string detail;
  if (p.contains("pid")) detail = "pid " + std::to_string(p["pid"].get<int>());
  if (p.contains("code")) detail = p["code"].is_null() ? "never ran" : "code " + std::to_string(p["code"].get<int>());
  std::ostringstream line;
  line << std::left << std::setw(4) << p.value("id", 0) << std::setw(16) << p.value("name", "") << std::setw(12) << state
       << std::setw(14) << detail << p.value("command", "");
  return line.str();
}

inline std::string process_table(const nlohmann::json& processes) {
  std::ostringstream out;
  out << std::left << std::setw(4) << "ID" << std::setw(16) << "NAME" << std::setw(12) << "STATUS" << std::setw(14)
      << "PID/CODE" << "COMMAND\n";
  for (const auto& p : processes) out << describe_process(p) << "\n";
  return out.str();
}

inline int run_ctl(const std::vector<std::string>& args) {
  std::optional<std::string> url;
  std::string file = "pymanager.json";
  bool json_output = false;
  std::string lines = "100";
  std::vector<std::string> positional;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) {
        std::cerr << "pymanager ctl: " << arg << " needs a value\n" << kCtlUsageText;
        std::exit(kCtlUsage);
      }
      return args[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kCtlUsageText;
      return 0;
    } else if (arg == "--url") {
      url = value();
    } else if (arg == "-f" || arg == "--file") {
      file = value();
    } else if (arg == "--json") {
      json_output = true;
    } else if (arg == "-n" || arg == "--lines") {
      lines = value();
    } else if (!arg.empty() && arg[0] == '-') {
      std::cerr << "pymanager ctl: unrecognized argument: " << arg << "\n" << kCtlUsageText;
      return kCtlUsage;
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.empty()) {
    std::cerr << "pymanager ctl: a command is required\n" << kCtlUsageText;
    return kCtlUsage;
  }
  const std::string command = positional[0];
  const bool needs_id = command == "restart" || command == "stop" || command == "start" || command == "output";
  const bool known = needs_id || command == "list" || command == "status" || command == "shutdown";
  if (!known || positional.size() != (needs_id ? 2u : 1u)) {
    std::cerr << "pymanager ctl: " << (known ? "wrong arguments for " + command : "unknown command '" + command + "'")
              << "\n" << kCtlUsageText;
    return kCtlUsage;
  }
  try {
    CtlTarget target = find_manager(file, url);
    httplib::Client client(target.url);
    client.set_connection_timeout(std::chrono::seconds(5));
    // A restart waits for the verifier, which may take long.
    client.set_read_timeout(std::chrono::seconds(600));
    httplib::Headers headers;
    if (target.token) headers.emplace("Authorization", "Bearer " + *target.token);
    std::string id = needs_id ? httplib::detail::encode_query_param(positional[1]) : "";
    httplib::Result result = [&] {
      if (command == "list") return client.Get("/", headers);
      if (command == "status") return client.Get("/status", headers);
      if (command == "shutdown") return client.Delete("/", headers);
      if (command == "output") return client.Get(("/processes/" + id + "/output?lines=" + lines).c_str(), headers);
      return client.Post(("/" + command + "/" + id).c_str(), headers, "", "application/json");
    }();
    if (!result) {
      throw CtlFailure(kCtlUnreachable, "cannot reach pymanager at " + target.url + ": " +
                                            pymanager::detail::describe_http_error(result.error()));
    }
    nlohmann::json body;
    try {
      body = nlohmann::json::parse(result->body);
    } catch (const std::exception&) {
      throw CtlFailure(kCtlServerError, "unexpected answer from " + target.url + " (status " +
                                            std::to_string(result->status) + "): " + result->body);
    }
    bool ok = result->status >= 200 && result->status < 300;
    if (json_output) {
      std::cout << body.dump(2) << "\n";
      return ok ? 0 : kCtlServerError;
    }
    if (!ok) {
      std::string message = body.contains("error") ? body["error"].value("message", result->body) : result->body;
      std::cerr << "pymanager ctl: " << message << " (HTTP " << result->status << ")\n";
      if (body.contains("process")) std::cerr << process_table(nlohmann::json::array({body["process"]}));
      return kCtlServerError;
    }
    if (command == "list") {
      std::cout << process_table(body["processes"]);
    } else if (command == "status") {
      std::cout << body.value("status", "") << "\n";
    } else if (command == "shutdown") {
      std::cout << "shutdown requested\n";
    } else if (command == "output") {
      for (const auto& line : body["lines"]) std::cout << line.get<std::string>() << "\n";
    } else {
      std::cout << process_table(nlohmann::json::array({body["process"]}));
    }
    return 0;
  } catch (const CtlFailure& e) {
    std::cerr << "pymanager ctl: " << e.what() << "\n";
    return e.code();
  } catch (const pymanager::Error& e) {
    std::cerr << "pymanager ctl: " << e.what() << "\n";
    return kCtlUnreachable;
  }
}

}  // namespace pymanager_tool

#endif  // PYMANAGER_TOOLS_CTL_HPP
