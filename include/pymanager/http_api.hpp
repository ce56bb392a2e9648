// pymanager: the HTTP API over a Manager, compatible with the original's
// endpoints and JSON shapes, and beyond them (names as ids, one process,
// stop/start, the output tail, a bearer token).
//
//   GET    /                          {"count": N, "processes": [...]}       403 in shutdown
//   GET    /status                    {"status": "running"}
//   POST   /restart/<id>              {"success": true, "process": {...}}     after the verifier passed
//   DELETE /                          {"success": true}                       shutdown runs asynchronously
//   GET    /processes/<id>            {"success": true, "process": {...}}
//   POST   /stop/<id>, /start/<id>    {"success": true, "process": {...}}
//   GET    /processes/<id>/output?lines=N   {"success": true, "process": {...}, "lines": [...]}
//
// <id> is the 1-based internal id or the process's name. Errors are
// {"success": false, "error": {"message": M}} with 400 (malformed id), 401
// (token), 403 (shutdown has begun), 404 (no such process or endpoint), 405
// (wrong method), 500 (a start or its verifier failed).
#ifndef PYMANAGER_HTTP_API_HPP
#define PYMANAGER_HTTP_API_HPP

#include <sys/socket.h>

#include <cctype>
#include <cerrno>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "pymanager/error.hpp"
#include "pymanager/manager.hpp"
#include "pymanager/process.hpp"

namespace pymanager {
inline namespace v1 {

/// A process as the API shows it: the original's fields ("id", "command",
/// "status", and "pid" while running or "code" once terminated), plus "name".
inline nlohmann::json process_to_json(const ProcessInfo& info) {
  nlohmann::json out = {{"id", info.id}, {"name", info.name}, {"command", info.command}};
  if (info.running) {
    out["status"] = "running";
    out["pid"] = info.pid;
  } else {
    out["status"] = "terminated";
    out["code"] = info.exit ? nlohmann::json(info.exit->code()) : nlohmann::json(nullptr);
  }
  return out;
}

inline bool is_loopback_host(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

struct HttpApiOptions {
  std::string host = "127.0.0.1";
  int port = 5001;  ///< 0: any free port
  std::optional<std::string> token;
  /// Receives the API's messages (the address it serves, warnings).
  std::function<void(const std::string&)> log;
};

/// Serves the API for one Manager on its own threads (cpp-httplib's pool).
class HttpApi {
 public:
  HttpApi(Manager& manager, HttpApiOptions options) : manager_(manager), options_(std::move(options)) {
    if (!options_.log) options_.log = [](const std::string&) {};
  }
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;
  ~HttpApi() { stop(); }

  /// Binds and starts serving. Throws ErrorKind::system naming the address
  /// when it cannot bind (e.g. the port is in use).
  void start() {
    server_ = std::make_unique<httplib::Server>();
    if (options_.host.find(':') != std::string::npos) server_->set_address_family(AF_INET6);
    // httplib 0.11's default sets SO_REUSEPORT, with which a second manager
    // on the same port binds silently and the two share the traffic: a port
    // in use must be an error. SO_REUSEADDR alone still allows a quick restart.
    server_->set_socket_options([](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    // Every request is answered here, before httplib reads a body: the API
    // takes none, and a bare `curl -X POST` (no Content-Length) is valid.
    // One handler for all routes also gives unknown paths 404 and wrong
    // methods 405 in the API's error shape.
    server_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      handle(req, res);
      return httplib::Server::HandlerResponse::Handled;
    });
    // Malformed requests that never reach a route get a JSON body too.
    server_->set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (res.body.empty()) {
        set_error(res, res.status,
                  res.status == 404 ? "no such endpoint"
                                    : "malformed request (HTTP " + std::to_string(res.status) + ")");
      }
    });
    server_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
      set_error(res, 500, "internal error");
    });
    errno = 0;
    int port = options_.port == 0 ? server_->bind_to_any_port(options_.host.c_str())
                                  : (server_->bind_to_port(options_.host.c_str(), options_.port) ? options_.port : -1);
    if (port <= 0) {
      int err = errno;
      throw Error(ErrorKind::system, "HTTP API: cannot listen on " + options_.host + ":" + std::to_string(options_.port) +
                                         (err != 0 ? std::string(": ") + std::strerror(err) : std::string()) +
                                         (err == EADDRINUSE || err == 0 ? " (is the port in use?)" : ""));
    }
    port_ = port;
    if (!is_loopback_host(options_.host)) {
      options_.log("warning: the HTTP API listens on " + options_.host +
                   ", which is not a loopback address: anyone who can reach it can stop your processes" +
                   (options_.token ? "" : " (and no token is set)"));
    }
    options_.log("HTTP API on " + url());
    thread_ = std::thread([this] { server_->listen_after_bind(); });
  }

  /// Stops serving; requests in progress finish first.
  void stop() {
    if (!server_) return;
    server_->stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  }

  int port() const { return port_; }
  std::string url() const {
    std::string host = options_.host.find(':') != std::string::npos ? "[" + options_.host + "]" : options_.host;
    return "http://" + host + ":" + std::to_string(port_);
  }

 private:
  static void set_json(httplib::Response& res, int status, const nlohmann::json& body) {
    res.status = status;
    res.set_content(body.dump(), "application/json");
  }

  static void set_error(httplib::Response& res, int status, const std::string& message,
                        const std::optional<nlohmann::json>& process = std::nullopt) {
    nlohmann::json body = {{"success", false}, {"error", {{"message", message}}}};
    if (process) body["process"] = *process;
    set_json(res, status, body);
  }

  static int status_for(ErrorKind kind) {
    switch (kind) {
      case ErrorKind::invalid_argument: return 400;
      case ErrorKind::shutting_down: return 403;
      case ErrorKind::conflict: return 409;
      case ErrorKind::not_found: return 404;
      default: return 500;
    }
  }

  /// Compares in time independent of where the strings differ.
  static bool same_secret(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
    return diff == 0 && !b.empty();
  }

  static std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    std::size_t start = 1;
    while (start <= path.size()) {
      std::size_t slash = path.find('/', start);
      std::string part = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
      if (!part.empty()) parts.push_back(part);
      if (slash == std::string::npos) break;
      start = slash + 1;
    }
    return parts;
  }

  /// The 0-based index for an <id>: a 1-based number or a process name.
  std::size_t resolve(const std::string& id) const {
    bool digits = !id.empty() && id.size() <= 9 && id.find_first_not_of("0123456789") == std::string::npos;
    if (digits) {
      std::size_t n = std::stoul(id);
      if (n == 0 || n > manager_.size()) throw Error(ErrorKind::not_found, "no process with id " + id);
      return n - 1;
    }
    if (auto index = manager_.index_of(id)) return *index;
    throw Error(ErrorKind::invalid_argument,
                "invalid process id '" + id + "': not a number, and no process has that name");
  }

  /// `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235).
  static bool authorized(const std::string& header, const std::string& token) {
    const std::string scheme = "bearer";
    if (header.size() <= scheme.size() || header[scheme.size()] != ' ') return false;
    for (std::size_t i = 0; i < scheme.size(); ++i) {
      if (std::tolower(static_cast<unsigned char>(header[i])) != scheme[i]) return false;
    }
    std::size_t start = header.find_first_not_of(' ', scheme.size());
    return start != std::string::npos && same_secret(header.substr(start), token);
  }

  void handle(const httplib::Request& req, httplib::Response& res) {
    if (options_.token) {
      if (!authorized(req.get_header_value("Authorization"), *options_.token)) {
        res.set_header("WWW-Authenticate", "Bearer");
        return set_error(res, 401, "missing or wrong token: send Authorization: Bearer <token>");
      }
    }
    auto parts = split_path(req.path);
    const std::string& method = req.method;
    auto allow = [&](const char* methods) {
      res.set_header("Allow", methods);
      set_error(res, 405, "method " + method + " not allowed on " + req.path + " (allowed: " + methods + ")");
    };
    try {
      if (parts.empty()) {
        if (method == "GET") return list(res);
        if (method == "DELETE") return shutdown(res);
        return allow("GET, DELETE");
      }
      const std::string& head = parts[0];
      if (head == "status" && parts.size() == 1) {
        if (method != "GET") return allow("GET");
        return set_json(res, 200, {{"status", to_string(manager_.state())}});
      }
      if ((head == "restart" || head == "stop" || head == "start") && parts.size() == 2) {
        if (method != "POST") return allow("POST");
        return act(head, resolve(parts[1]), res);
      }
      if (head == "processes" && (parts.size() == 2 || (parts.size() == 3 && parts[2] == "output"))) {
        if (method != "GET") return allow("GET");
        std::size_t index = resolve(parts[1]);
        nlohmann::json body = {{"success", true}, {"process", process_to_json(manager_.process(index))}};
        if (parts.size() == 3) body["lines"] = manager_.output_tail(index, lines_param(req));
        return set_json(res, 200, body);
      }
      set_error(res, 404, "no such endpoint: " + method + " " + req.path);
    } catch (const Error& e) {
      set_error(res, status_for(e.kind()), e.what());
    }
  }

  static std::size_t lines_param(const httplib::Request& req) {
    if (!req.has_param("lines")) return 100;
    std::string text = req.get_param_value("lines");
    if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos) {
      throw Error(ErrorKind::invalid_argument, "lines must be a non-negative integer, got '" + text + "'");
    }
    return std::stoul(text);
  }

  void list(httplib::Response& res) {
    if (manager_.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    nlohmann::json processes = nlohmann::json::array();
    for (const auto& info : manager_.processes()) processes.push_back(process_to_json(info));
    set_json(res, 200, {{"count", processes.size()}, {"processes", processes}});
  }

  void shutdown(httplib::Response& res) {
    if (manager_.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun already");
    options_.log("shutdown requested through the HTTP API");
    manager_.shutdown();
    set_json(res, 200, {{"success", true}});
  }

  void act(const std::string& action, std::size_t index, httplib::Response& res) {
    if (manager_.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    const double grace = manager_.config().restart_graceful_time;
    try {
      ProcessInfo info;
      if (action == "restart") {
        options_.log("restart of process '" + manager_.process(index).name + "' requested through the HTTP API");
        info = manager_.restart(index, grace);
      } else if (action == "start") {
        info = manager_.start_process(index);
      } else {
        manager_.stop_process(index, grace);
        info = manager_.process(index);
      }
      set_json(res, 200, {{"success", true}, {"process", process_to_json(info)}});
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::spawn_failed || e.kind() == ErrorKind::verify_failed) {
        // The process as it really is now: running (verifier failed) or terminated.
        return set_error(res, 500, e.what(), process_to_json(manager_.process(index)));
      }
      throw;
    }
  }

  Manager& manager_;
  HttpApiOptions options_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_HTTP_API_HPP
