// pymanager: the HTTP API over a Manager, compatible with the original's
// endpoints and JSON shapes, and beyond them (names as ids, one process,
// stop/start, the output tail, a bearer token).
//
//   GET    /                          {"count": N, "processes": [...],       403 in shutdown
//                                      "ports": {"web": 20417}}
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
// (wrong method), 500 (a start or its verifier failed); and, from the server
// itself, 408, 413, 414 and 431 for requests over its bounds
// (detail/http_server.hpp).
//
// Only requests addressed to this API are served: a Host other than the
// bound address or localhost (DNS rebinding), or an Origin other than those
// (any web page's "simple" POST), is refused with 403.
#ifndef PYMANAGER_HTTP_API_HPP
#define PYMANAGER_HTTP_API_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cerrno>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pymanager/detail/http_server.hpp"
#include "pymanager/error.hpp"
#include "pymanager/manager.hpp"
#include "pymanager/process.hpp"

namespace pymanager {
inline namespace v1 {

/// A process as the API shows it: the original's fields ("id", "command",
/// "status", and "pid" while running or "code" once terminated), plus
/// "name", "state", "daemons" and, while it waits, "waiting_for".
inline nlohmann::json process_to_json(const ProcessInfo& info) {
  nlohmann::json out = {{"id", info.id}, {"name", info.name}, {"command", info.command}};
  if (info.running) {
    out["status"] = "running";
    out["pid"] = info.pid;
  } else {
    out["status"] = "terminated";
    out["code"] = info.exit ? nlohmann::json(info.exit->code()) : nlohmann::json(nullptr);
  }
  // Ours, beside the original's: where it is in its life, its daemons, and
  // while it waits to start, what for.
  out["state"] = to_string(info.state);
  out["daemons"] = info.daemons;
  if (info.state == ProcessState::waiting) out["waiting_for"] = info.waiting_for;
  return out;
}

/// `localhost`, an IPv4 address in 127.0.0.0/8, or ::1 (never a name that
/// merely starts with "127.").
inline bool is_loopback_host(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return ::inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

/// An IPv4 or IPv6 address literal (no DNS name can be rebound to it).
inline bool is_ip_literal(const std::string& host) {
  in_addr v4{};
  in6_addr v6{};
  return ::inet_pton(AF_INET, host.c_str(), &v4) == 1 || ::inet_pton(AF_INET6, host.c_str(), &v6) == 1;
}

struct HttpApiOptions {
  std::string host = "127.0.0.1";
  int port = 5001;  ///< 0: any free port
  std::optional<std::string> token;
  /// Receives the API's messages (the address it serves, warnings).
  std::function<void(const std::string&)> log;
  /// Bounds on requests, connections and time (see detail/http_message.hpp).
  detail::HttpLimits limits;
};

/// Serves the API for one Manager on its own threads.
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
    server_ = std::make_unique<detail::HttpServer>(
        options_.limits, [this](const detail::HttpRequest& request) { return handle(request); });
    server_->listen(options_.host, options_.port);
    port_ = server_->port();
    if (!is_loopback_host(options_.host)) {
      options_.log("warning: the HTTP API listens on " + options_.host +
                   ", which is not a loopback address: anyone who can reach it can stop your processes" +
                   (options_.token ? "" : " (and no token is set)"));
    }
    options_.log("HTTP API on " + url());
    server_->start();
  }

  /// Stops serving; requests in progress finish first.
  void stop() {
    if (!server_) return;
    server_->stop();
    server_.reset();
  }

  int port() const { return port_; }
  std::string url() const { return "http://" + host_for_url() + ":" + std::to_string(port_); }

 private:
  using Response = detail::HttpResponse;

  std::string host_for_url() const {
    return options_.host.find(':') != std::string::npos ? "[" + options_.host + "]" : options_.host;
  }

  /// JSON with every string made valid UTF-8 (bytes that are not become
  /// U+FFFD): ids and output lines may hold any bytes.
  static Response json_response(int status, const nlohmann::json& body) {
    Response response;
    response.status = status;
    response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return response;
  }

  static Response error_response(int status, const std::string& message,
                                 const std::optional<nlohmann::json>& process = std::nullopt) {
    nlohmann::json body = {{"success", false}, {"error", {{"message", message}}}};
    if (process) body["process"] = *process;
    return json_response(status, body);
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

  static std::string lower(std::string text) {
    for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return text;
  }

  /// Splits `name:port`, `name`, `[v6]:port` or `[v6]` (as in Host and
  /// Origin) into the name, lower-cased, and the port ("" when left out);
  /// false when malformed.
  static bool split_host_port(const std::string& host_port, std::string& name, std::string& port) {
    name = lower(host_port);
    port.clear();
    if (!name.empty() && name[0] == '[') {
      auto close = name.find(']');
      if (close == std::string::npos || (close + 1 < name.size() && name[close + 1] != ':')) return false;
      port = close + 1 < name.size() ? name.substr(close + 2) : "";
      name = name.substr(1, close - 1);
    } else if (auto colon = name.find(':'); colon != std::string::npos) {
      port = name.substr(colon + 1);
      name = name.substr(0, colon);
    }
    return !name.empty();
  }

  /// True when `name` is this API's bound address, or a loopback name when
  /// it is bound to loopback.
  bool names_this_api(const std::string& name) const {
    if (name == lower(options_.host)) return true;
    return is_loopback_host(options_.host) && (name == "localhost" || name == "127.0.0.1" || name == "::1");
  }

  /// Host must name this API: DNS rebinding sends the attacker's name. A
  /// port may be left out (tools do); given, it must be ours. Bound to an
  /// address that is not loopback (the user chose to expose the API, and was
  /// warned), the names others use for this machine are not known, so any
  /// IP address literal is served, but no DNS name. A browser's Origin, if
  /// any, must be this API itself, port included (a page on
  /// http://localhost, port 80, is another origin): any web page can
  /// otherwise send a "simple" POST. Tools such as curl send no Origin.
  std::optional<std::string> refuse_foreign(const detail::HttpRequest& request) const {
    const bool loopback = is_loopback_host(options_.host);
    const std::string ours = std::to_string(port_);
    if (request.minor_version >= 1 || request.has_header("host")) {
      const std::string host = request.header("host");
      std::string name, port;
      const bool ok = split_host_port(host, name, port) && (port.empty() || port == ours) &&
                      (loopback ? names_this_api(name) : is_ip_literal(name));
      if (!ok) return "Host '" + host + "' is not this API's address (" + url() + ")";
    }
    if (request.has_header("origin")) {
      const std::string origin = request.header("origin");
      const std::string prefix = "http://";
      std::string name, port;
      const bool same = lower(origin).compare(0, prefix.size(), prefix) == 0 &&
                        split_host_port(origin.substr(prefix.size()), name, port) && port == ours &&
                        (loopback ? names_this_api(name) : is_ip_literal(name));
      if (!same) return "requests from the web page at '" + origin + "' are not accepted";
    }
    return std::nullopt;
  }

  /// The segments of the raw path, each percent-decoded (so that a name
  /// with a '/' in it, sent as %2F, stays one segment).
  static std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    std::size_t start = 1;
    while (start <= path.size()) {
      std::size_t slash = path.find('/', start);
      std::string part = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
      if (!part.empty()) parts.push_back(detail::percent_decode(part));
      if (slash == std::string::npos) break;
      start = slash + 1;
    }
    return parts;
  }

  /// The 0-based index for an <id>: a 1-based number or a process name. A
  /// number in range is that process (as in the seed: "007" is 7); any other
  /// id is looked up as a name, so a process named "123" is reached by it.
  std::size_t resolve(const std::string& id) const {
    bool digits = !id.empty() && id.size() <= 9 && id.find_first_not_of("0123456789") == std::string::npos;
    if (digits) {
      std::size_t n = std::stoul(id);
      if (n >= 1 && n <= manager_.size()) return n - 1;
      if (auto index = manager_.index_of(id)) return *index;
      throw Error(ErrorKind::not_found, "no process with id " + id);
    }
    if (auto index = manager_.index_of(id)) return *index;
    if (malformed_id(id)) {
      throw Error(ErrorKind::invalid_argument,
                  "invalid process id '" + printable(id) + "': not a number from 1 to " + std::to_string(manager_.size()) +
                      ", and not a process name");
    }
    throw Error(ErrorKind::not_found, "no process named '" + id + "'");
  }

  /// `text` with control characters written as \xNN, for a message (a NUL
  /// would end it).
  static std::string printable(const std::string& text) {
    static const char* const kHex = "0123456789abcdef";
    std::string out;
    for (char c : text) {
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x20 || u == 0x7f) {
        out += "\\x";
        out += kHex[u >> 4];
        out += kHex[u & 15];
      } else {
        out += c;
      }
    }
    return out;
  }

  /// True when `text` is well-formed UTF-8 (no overlong forms, no surrogates).
  static bool valid_utf8(const std::string& text) {
    for (std::size_t i = 0; i < text.size();) {
      const auto c = static_cast<unsigned char>(text[i]);
      std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
      if (n == 0 || i + n > text.size()) return false;
      std::uint32_t code = n == 1 ? c : n == 2 ? (c & 0x1Fu) : n == 3 ? (c & 0x0Fu) : (c & 0x07u);
      for (std::size_t k = 1; k < n; ++k) {
        const auto next = static_cast<unsigned char>(text[i + k]);
        if ((next >> 6) != 0x2) return false;
        code = (code << 6) | (next & 0x3Fu);
      }
      static constexpr std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
      if (code < kMin[n] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
      i += n;
    }
    return true;
  }

  /// An <id> that can be neither a process number nor a name (400, as the
  /// seed's non-numbers): a signed or over-long number, a control character,
  /// bytes that are not UTF-8. Any other is a name, and
  /// an unknown one is 404.
  static bool malformed_id(const std::string& id) {
    if (id.empty() || id.size() > 4096) return true;
    if (id.find_first_not_of("0123456789") == std::string::npos) return true;  // digits: too many of them
    if ((id[0] == '-' || id[0] == '+') && id.size() > 1 && id.find_first_not_of("0123456789", 1) == std::string::npos) {
      return true;
    }
    if (!valid_utf8(id)) return true;
    return std::any_of(id.begin(), id.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
  }

  Response handle(const detail::HttpRequest& req) {
    if (auto why = refuse_foreign(req)) return error_response(403, *why);
    if (options_.token && !authorized(req.header("authorization"), *options_.token)) {
      Response denied = error_response(401, "missing or wrong token: send Authorization: Bearer <token>");
      denied.headers.emplace_back("WWW-Authenticate", "Bearer");
      return denied;
    }
    auto parts = split_path(req.raw_path);
    const std::string& method = req.method;
    auto allow = [&](const char* methods) {
      Response wrong = error_response(405, "method " + method + " not allowed on " + req.path + " (allowed: " + methods + ")");
      wrong.headers.emplace_back("Allow", methods);
      return wrong;
    };
    try {
      if (parts.empty()) {
        if (method == "GET") return list();
        if (method == "DELETE") return shutdown();
        return allow("GET, DELETE");
      }
      const std::string& head = parts[0];
      if (head == "status" && parts.size() == 1) {
        if (method != "GET") return allow("GET");
        return json_response(200, {{"status", to_string(manager_.state())}});
      }
      if ((head == "restart" || head == "stop" || head == "start") && parts.size() == 2) {
        if (method != "POST") return allow("POST");
        return act(head, resolve(parts[1]));
      }
      if (head == "processes" && (parts.size() == 2 || (parts.size() == 3 && parts[2] == "output"))) {
        if (method != "GET") return allow("GET");
        std::size_t index = resolve(parts[1]);
        nlohmann::json body = {{"success", true}, {"process", process_to_json(manager_.process(index))}};
        if (parts.size() == 3) body["lines"] = manager_.output_tail(index, lines_param(req));
        return json_response(200, body);
      }
      return error_response(404, "no such endpoint: " + method + " " + req.path);
    } catch (const Error& e) {
      return error_response(status_for(e.kind()), e.what());
    }
  }

  static std::size_t lines_param(const detail::HttpRequest& req) {
    auto text = req.query_param("lines");
    if (!text) return 100;
    if (text->empty() || text->size() > 9 || text->find_first_not_of("0123456789") != std::string::npos) {
      throw Error(ErrorKind::invalid_argument, "lines must be a non-negative integer, got '" + *text + "'");
    }
    return std::stoul(*text);
  }

  Response list() {
    if (manager_.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    nlohmann::json processes = nlohmann::json::array();
    for (const auto& info : manager_.processes()) processes.push_back(process_to_json(info));
    nlohmann::json ports = nlohmann::json::object();
    for (const auto& [name, port] : manager_.config().ports) ports[name] = port;
    return json_response(200, {{"count", processes.size()}, {"processes", processes}, {"ports", ports}});
  }

  Response shutdown() {
    if (manager_.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun already");
    options_.log("shutdown requested through the HTTP API");
    manager_.shutdown();
    return json_response(200, {{"success", true}});
  }

  Response act(const std::string& action, std::size_t index) {
    if (manager_.shutdown_begun()) throw Error(ErrorKind::shutting_down, "shutdown has begun");
    const double grace = manager_.restart_grace(index);
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
      return json_response(200, {{"success", true}, {"process", process_to_json(info)}});
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::spawn_failed || e.kind() == ErrorKind::verify_failed) {
        // The process as it really is now: running (verifier failed) or terminated.
        return error_response(500, e.what(), process_to_json(manager_.process(index)));
      }
      throw;
    }
  }

  Manager& manager_;
  HttpApiOptions options_;
  std::unique_ptr<detail::HttpServer> server_;
  int port_ = 0;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_HTTP_API_HPP
