// `pymanager ctl`: talks to a running pymanager through its HTTP API, and
// the state file by which it finds one without flags.
//
// A running pymanager (foreground or daemon) writes `<config>.pymanager-state`
// next to its config file: {"pid", "url", "token", "config"}, where "token"
// says where the token is ("config", "environment" or null), never the token
// itself. It removes the file on exit; a file whose pid is dead is stale.
#ifndef PYMANAGER_TOOLS_CTL_HPP
#define PYMANAGER_TOOLS_CTL_HPP

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "pymanager/pymanager.hpp"
#include "tools/posix_io.hpp"

namespace pymanager_tool {

inline std::string state_file_for(const std::string& config_path) { return config_path + ".pymanager-state"; }

/// Written when a manager starts, removed when it exits (if it is still ours).
class StateFile {
 public:
  StateFile(const std::string& config_path, const std::optional<std::string>& url, const char* token_source)
      : path_(state_file_for(config_path)), pid_(::getpid()) {
    nlohmann::json state = {{"pid", pid_},
                            {"url", url ? nlohmann::json(*url) : nlohmann::json(nullptr)},
                            {"token", token_source ? nlohmann::json(token_source) : nlohmann::json(nullptr)},
                            {"config", pymanager::absolute_path(config_path)},
                            {"version", pymanager::version()}};
    // A fresh temporary file (O_EXCL: never an existing file or a link that
    // another user planted in the folder), then an atomic rename, which
    // replaces a link at path_ rather than writing through it.
    std::string tmp = path_ + ".XXXXXX";
    int fd = ::mkostemp(&tmp[0], O_CLOEXEC);
    if (fd < 0) {
      error_ = pymanager::errno_message("cannot write state file " + path_, errno);
      return;
    }
    std::string text = state.dump(2) + "\n";
    bool ok = ::fchmod(fd, 0644) == 0 && write_all(fd, text);
    ok = ::close(fd) == 0 && ok;
    if (!ok || std::rename(tmp.c_str(), path_.c_str()) != 0) {
      error_ = pymanager::errno_message("cannot write state file " + path_, errno);
      ::unlink(tmp.c_str());
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
    "  list           the processes: id, name, status, state, pid or exit code, command,\n"
    "                 and the daemons each one left or what it waits for; then the\n"
    "                 ports that ${port:NAME} became\n"
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

/// Reads a state file only if it can be trusted: a regular file (not a
/// link), owned by the user running ctl (or root), writable by nobody else,
/// at most 64 KiB of JSON. Another user who can write the config's folder
/// could otherwise point ctl, and the token, at an address of theirs.
inline nlohmann::json read_trusted_state(const std::string& path, const std::string& config_path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY));
  if (!fd) {
    if (errno == ENOENT) {
      throw CtlFailure(kCtlUnreachable, "no running pymanager found for " + config_path + " (no state file " + path +
                                            "); start one, or pass --url");
    }
    if (errno == ELOOP) throw CtlFailure(kCtlUnreachable, "state file " + path + " is a symbolic link: not trusted");
    throw CtlFailure(kCtlUnreachable, pymanager::errno_message("cannot read state file " + path, errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw CtlFailure(kCtlUnreachable, "state file " + path + " is not a regular file: not trusted");
  }
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    throw CtlFailure(kCtlUnreachable, "state file " + path + " belongs to uid " + std::to_string(st.st_uid) +
                                          ", not to you: not trusted (pass --url to talk to that manager)");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw CtlFailure(kCtlUnreachable, "state file " + path + " is writable by others (mode " + mode + "): not trusted");
  }
  std::string text(64 * 1024 + 1, '\0');
  ssize_t n = read_some(fd.get(), &text[0], text.size());
  if (n < 0) throw CtlFailure(kCtlUnreachable, pymanager::errno_message("cannot read state file " + path, errno));
  if (static_cast<std::size_t>(n) == text.size()) throw CtlFailure(kCtlUnreachable, "state file " + path + " is too large");
  text.resize(static_cast<std::size_t>(n));
  nlohmann::json state = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!state.is_object()) throw CtlFailure(kCtlUnreachable, "state file " + path + " is not a JSON object");
  return state;
}

/// The host and port of an http:// URL (`http://127.0.0.1:5001`,
/// `http://[::1]:5001/`); nullopt for anything else.
inline std::optional<std::pair<std::string, int>> http_host_port(const std::string& url) {
  const std::string scheme = "http://";
  if (url.compare(0, scheme.size(), scheme) != 0) return std::nullopt;
  std::string rest = url.substr(scheme.size());
  rest = rest.substr(0, rest.find('/'));
  std::string host;
  std::string port;
  if (!rest.empty() && rest[0] == '[') {
    auto close = rest.find(']');
    if (close == std::string::npos || close + 1 >= rest.size() || rest[close + 1] != ':') return std::nullopt;
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    auto colon = rest.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty() || port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  int number = std::stoi(port);
  if (number < 1 || number > 65535) return std::nullopt;
  return std::make_pair(host, number);
}

/// The inodes of the TCP sockets that listen on `port` (IPv4 and IPv6),
/// from /proc/net/tcp{,6}. Each table is taken in large reads: the kernel
/// resumes a table between reads by position, and sockets opened or closed
/// meanwhile can make it skip a line (the caller looks twice).
inline std::vector<std::string> listening_socket_inodes(int port) {
  std::vector<std::string> inodes;
  char wanted[8];
  std::snprintf(wanted, sizeof wanted, "%04X", static_cast<unsigned>(port));
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    ScopedFd fd(::open(table, O_RDONLY | O_CLOEXEC));
    if (!fd) continue;
    std::string text;
    std::vector<char> chunk(1 << 20);
    for (int reads = 0; reads < 64; ++reads) {
      ssize_t n = read_some(fd.get(), chunk.data(), chunk.size());
      if (n <= 0) break;
      text.append(chunk.data(), static_cast<std::size_t>(n));
    }
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout, inode;
      if (!(fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >> inode)) continue;
      auto colon = local.rfind(':');
      if (state == "0A" && colon != std::string::npos && local.substr(colon + 1) == wanted) inodes.push_back(inode);
    }
  }
  return inodes;
}

/// True when process `pid` holds one of `inodes` (its /proc/PID/fd links
/// read `socket:[INODE]`). False when its descriptors cannot be read.
inline bool process_holds_socket(int pid, const std::vector<std::string>& inodes) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* fds = ::opendir(dir.c_str());
  if (fds == nullptr) return false;
  bool found = false;
  while (struct dirent* entry = ::readdir(fds)) {
    char target[128];
    ssize_t n = ::readlink((dir + "/" + entry->d_name).c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    std::string link(target, static_cast<std::size_t>(n));
    for (const auto& inode : inodes) {
      if (link == "socket:[" + inode + "]") found = true;
    }
  }
  ::closedir(fds);
  return found;
}

/// `text` with every byte but letters, digits and -_.!~*'() as %XX, so that
/// an id such as "my web" or "a/b" stays one path segment of the request.
inline std::string percent_encode(const std::string& text) {
  const char* const hex = "0123456789ABCDEF";
  std::string out;
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    const bool kept = (byte >= 'a' && byte <= 'z') || (byte >= 'A' && byte <= 'Z') || (byte >= '0' && byte <= '9') ||
                      std::string("-_.!~*'()").find(c) != std::string::npos;
    if (kept) {
      out += c;
    } else {
      out += '%';
      out += hex[byte >> 4];
      out += hex[byte & 0xF];
    }
  }
  return out;
}

inline CtlTarget find_manager(const std::string& config_path, const std::optional<std::string>& url) {
  const char* env_token = std::getenv("PYMANAGER_TOKEN");
  // An address the user typed is theirs to choose.
  if (url) return CtlTarget{*url, env_token && *env_token ? std::optional<std::string>(env_token) : std::nullopt};
  std::string path = state_file_for(config_path);
  nlohmann::json state = read_trusted_state(path, config_path);
  const nlohmann::json pid_value = state.value("pid", nlohmann::json());
  int pid = pid_value.is_number_integer() ? pid_value.get<int>() : 0;
  if (!process_alive(pid)) {
    throw CtlFailure(kCtlUnreachable, "stale state file " + path + ": pid " + std::to_string(pid) +
                                          " is not running (pymanager was killed?); remove the file, or start pymanager");
  }
  const nlohmann::json url_value = state.value("url", nlohmann::json());
  if (!url_value.is_string()) {
    throw CtlFailure(kCtlUnreachable, "pymanager (pid " + std::to_string(pid) + ") runs without its HTTP API: set "
                                      "\"http\": {\"enabled\": true} in " + config_path);
  }
  CtlTarget target{url_value.get<std::string>(), std::nullopt};
  // The token goes only to a loopback address on which that very pid listens.
  auto host_port = http_host_port(target.url);
  if (!host_port || !pymanager::is_loopback_host(host_port->first)) {
    throw CtlFailure(kCtlUnreachable, "state file " + path + " names " + target.url +
                                          ", which is not a loopback address: not trusted (pass --url)");
  }
  bool listens = false;
  for (int attempt = 0; attempt < 5 && !listens; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    listens = process_holds_socket(pid, listening_socket_inodes(host_port->second));
  }
  if (!listens) {
    throw CtlFailure(kCtlUnreachable, "state file " + path + ": pid " + std::to_string(pid) + " does not listen on " +
                                          target.url + ": not trusted (a stale file whose pid was reused?)");
  }
  const nlohmann::json source_value = state.value("token", nlohmann::json());
  std::string source = source_value.is_string() ? source_value.get<std::string>() : "";
  if (source == "config") {
    const nlohmann::json config_value = state.value("config", nlohmann::json(config_path));
    auto json = pymanager::read_config_json(config_value.is_string() ? config_value.get<std::string>() : config_path);
    auto token = json.contains("http") && json["http"].is_object() ? json["http"].value("token", nlohmann::ordered_json())
                                                                   : nlohmann::ordered_json();
    if (token.is_string()) target.token = token.get<std::string>();
  } else if (source == "environment") {
    if (env_token == nullptr || *env_token == '\0') {
      throw CtlFailure(kCtlUsage, "pymanager (pid " + std::to_string(pid) +
                                      ") takes its token from PYMANAGER_TOKEN: set it for ctl too");
    }
    target.token = env_token;
  }
  return target;
}

/// The answer did not have the shape the API gives: said, never aborted on.
inline CtlFailure unexpected_answer(const std::string& url, int status, const std::string& body) {
  return CtlFailure(kCtlServerError, "unexpected answer from " + url + " (HTTP " + std::to_string(status) + "): " +
                                         body.substr(0, 500) + (body.size() > 500 ? "..." : ""));
}

/// A member as text: a string as it is, a number as digits, else "".
inline std::string text_of(const nlohmann::json& object, const char* key) {
  if (!object.is_object() || !object.contains(key)) return "";
  const nlohmann::json& value = object[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_number_integer()) return std::to_string(value.get<long long>());
  return "";
}

/// The pids or names of a list member, comma separated ("" when absent).
inline std::string list_of(const nlohmann::json& object, const char* key) {
  if (!object.is_object() || !object.contains(key) || !object[key].is_array()) return "";
  std::string out;
  for (const auto& item : object[key]) {
    std::string text = item.is_string() ? item.get<std::string>() : item.is_number_integer() ? std::to_string(item.get<long long>()) : "";
    if (!text.empty()) out += (out.empty() ? "" : ", ") + text;
  }
  return out;
}

inline std::string describe_process(const nlohmann::json& p) {
  std::string status = text_of(p, "status");
  std::string state = text_of(p, "state");
  std::string detail;
  if (p.contains("pid")) detail = "pid " + text_of(p, "pid");
  if (p.contains("code")) detail = p["code"].is_null() ? "never ran" : "code " + text_of(p, "code");
  std::ostringstream line;
  line << std::left << std::setw(4) << text_of(p, "id") << std::setw(16) << text_of(p, "name") << std::setw(12)
       << (status.empty() ? "?" : status) << std::setw(12) << (state.empty() ? "?" : state) << std::setw(14) << detail
       << text_of(p, "command");
  // What the columns cannot hold: the daemons it left, what it waits for.
  if (std::string daemons = list_of(p, "daemons"); !daemons.empty()) line << "  [daemons: " << daemons << "]";
  if (std::string waits = list_of(p, "waiting_for"); !waits.empty()) line << "  [waiting for: " << waits << "]";
  return line.str();
}

/// "redis=11990 web=15389": named ports, by name.
inline std::string describe_ports(std::vector<std::pair<std::string, int>> ports) {
  std::sort(ports.begin(), ports.end());
  std::string out;
  for (const auto& [name, port] : ports) out += (out.empty() ? "" : " ") + name + "=" + std::to_string(port);
  return out;
}

/// The same from GET /'s "ports" object; "" when absent or of another shape.
inline std::string describe_ports(const nlohmann::json& ports) {
  if (!ports.is_object()) return "";
  std::vector<std::pair<std::string, int>> list;
  for (const auto& [name, port] : ports.items()) {
    if (port.is_number_integer()) list.emplace_back(name, port.get<int>());
  }
  return describe_ports(std::move(list));
}

/// `processes`: an array of process objects (checked by the caller).
inline std::string process_table(const nlohmann::json& processes) {
  std::ostringstream out;
  out << std::left << std::setw(4) << "ID" << std::setw(16) << "NAME" << std::setw(12) << "STATUS" << std::setw(12)
      << "STATE" << std::setw(14) << "PID/CODE" << "COMMAND\n";
  for (const auto& p : processes) out << describe_process(p) << "\n";
  return out.str();
}

/// True when `value` is an array of objects.
inline bool is_process_list(const nlohmann::json& value) {
  if (!value.is_array()) return false;
  for (const auto& p : value) {
    if (!p.is_object()) return false;
  }
  return true;
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
    std::string id = needs_id ? percent_encode(positional[1]) : "";
    httplib::Result result = [&] {
      if (command == "list") return client.Get("/", headers);
      if (command == "status") return client.Get("/status", headers);
      if (command == "shutdown") return client.Delete("/", headers);
      if (command == "output") return client.Get(("/processes/" + id + "/output?lines=" + lines).c_str(), headers);
      return client.Post(("/" + command + "/" + id).c_str(), headers, "", "application/json");
    }();
    if (!result) {
      throw CtlFailure(kCtlUnreachable, "cannot reach pymanager at " + target.url + ": " +
                                            pymanager::describe_http_error(result.error()));
    }
    nlohmann::json body = nlohmann::json::parse(result->body, nullptr, /*allow_exceptions=*/false);
    const auto unexpected = [&] { return unexpected_answer(target.url, result->status, result->body); };
    if (!body.is_object()) throw unexpected();
    bool ok = result->status >= 200 && result->status < 300;
    if (json_output) {
      std::cout << body.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      return ok ? 0 : kCtlServerError;
    }
    if (!ok) {
      std::string message = body.contains("error") ? text_of(body["error"], "message") : "";
      std::cerr << "pymanager ctl: " << (message.empty() ? result->body.substr(0, 500) : message) << " (HTTP "
                << result->status << ")\n";
      if (body.contains("process") && body["process"].is_object()) {
        std::cerr << process_table(nlohmann::json::array({body["process"]}));
      }
      return kCtlServerError;
    }
    if (command == "list") {
      if (!body.contains("processes") || !is_process_list(body["processes"])) throw unexpected();
      std::cout << process_table(body["processes"]);
      if (body.contains("ports")) {
        if (std::string ports = describe_ports(body["ports"]); !ports.empty()) std::cout << "ports: " << ports << "\n";
      }
    } else if (command == "status") {
      if (text_of(body, "status").empty()) throw unexpected();
      std::cout << text_of(body, "status") << "\n";
    } else if (command == "shutdown") {
      std::cout << "shutdown requested\n";
    } else if (command == "output") {
      if (!body.contains("lines") || !body["lines"].is_array()) throw unexpected();
      for (const auto& line : body["lines"]) std::cout << (line.is_string() ? line.get<std::string>() : line.dump()) << "\n";
    } else {
      if (!body.contains("process") || !body["process"].is_object()) throw unexpected();
      std::cout << process_table(nlohmann::json::array({body["process"]}));
    }
    return 0;
  } catch (const CtlFailure& e) {
    std::cerr << "pymanager ctl: " << e.what() << "\n";
    return e.code();
  } catch (const pymanager::Error& e) {
    std::cerr << "pymanager ctl: " << e.what() << "\n";
    return kCtlUnreachable;
  } catch (const std::exception& e) {
    // Whatever else an answer or a file could do to the JSON library.
    std::cerr << "pymanager ctl: " << e.what() << "\n";
    return kCtlServerError;
  }
}

}  // namespace pymanager_tool

#endif  // PYMANAGER_TOOLS_CTL_HPP
