// pymanager: the HTTP/1.1 messages of the API server (http_server.hpp): a
// request and an answer, the bounds on what a client may send, and the
// parser that checks each bound as soon as it can, so that a request's head
// and body are never kept past their limits. Only what the API needs:
// requests without chunked bodies.
#ifndef PYMANAGER_DETAIL_HTTP_MESSAGE_HPP
#define PYMANAGER_DETAIL_HTTP_MESSAGE_HPP

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace pymanager {
inline namespace v1 {
namespace detail {

// ----------------------------------------------------------------- declarations

/// Bounds on what a client may send and how long it may take.
struct HttpLimits {
  std::size_t max_request_line = std::size_t{8} * 1024; ///< longer: 414
  std::size_t max_header_bytes = std::size_t{16} * 1024;  ///< all header lines together; more: 431
  std::size_t max_headers = 64;              ///< more header lines: 431
  std::size_t max_body = std::size_t{64} * 1024;        ///< a larger Content-Length: 413
  std::size_t max_connections = 256;         ///< more wait in the kernel's backlog
  std::size_t max_workers = 32;              ///< threads that run handlers
  std::chrono::milliseconds idle_timeout{2000};     ///< an open connection with no request under way
  std::chrono::milliseconds request_timeout{5000};  ///< from a request's first byte to its last
  std::chrono::milliseconds write_timeout{5000};    ///< for the client to take an answer
};

struct HttpRequest {
  std::string method;
  std::string target;  ///< as sent: path and query
  std::string raw_path;  ///< as sent, before '?' (split it before decoding: %2F is not a separator)
  std::string path;      ///< percent-decoded (may hold any bytes)
  std::string query;   ///< raw, after '?'
  int minor_version = 1;
  std::vector<std::pair<std::string, std::string>> headers;  ///< names lower-cased
  std::string body;

  /// The first header of that name (lower case), or "".
  std::string header(const std::string& lower_name) const;
  bool has_header(const std::string& lower_name) const;
  /// A query parameter, percent-decoded; nullopt when absent.
  std::optional<std::string> query_param(const std::string& name) const;
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
};

/// What parse_http_request found at the start of a buffer.
struct HttpParse {
  enum Outcome { incomplete, complete, failed } outcome = incomplete;
  std::size_t consumed = 0;  ///< complete: the bytes of this request (head and body)
  int status = 0;            ///< failed: 400, 413, 414, 431, 501, 505
  std::string message;       ///< failed: why
};

/// Parses one request from the start of `data`. Incomplete input that is
/// already over a bound fails at once, so that nothing unbounded is kept.
inline HttpParse parse_http_request(const std::string& data, const HttpLimits& limits, HttpRequest& out);

/// Decodes %XX escapes (and nothing else); malformed escapes stay as they are.
inline std::string percent_decode(const std::string& text);

inline const char* http_reason(int status);

/// `{"success": false, "error": {"message": M}}`, with bytes that are not
/// UTF-8 replaced (a message may quote what the client sent).
inline HttpResponse error_response(int status, const std::string& message);

// ------------------------------------------------------------- implementation

inline std::string HttpRequest::header(const std::string& lower_name) const {
  for (const auto& h : headers) {
    if (h.first == lower_name) return h.second;
  }
  return "";
}

inline bool HttpRequest::has_header(const std::string& lower_name) const {
  for (const auto& h : headers) {
    if (h.first == lower_name) return true;
  }
  return false;
}

inline std::optional<std::string> HttpRequest::query_param(const std::string& name) const {
  std::size_t start = 0;
  while (start <= query.size()) {
    std::size_t amp = query.find('&', start);
    std::string pair = query.substr(start, amp == std::string::npos ? std::string::npos : amp - start);
    std::size_t eq = pair.find('=');
    if (percent_decode(pair.substr(0, eq)) == name) {
      return eq == std::string::npos ? std::string() : percent_decode(pair.substr(eq + 1));
    }
    if (amp == std::string::npos) break;
    start = amp + 1;
  }
  return std::nullopt;
}

inline std::string percent_decode(const std::string& text) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && hex(text[i + 1]) >= 0 && hex(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(text[i + 1]) * 16 + hex(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

inline HttpResponse error_response(int status, const std::string& message) {
  nlohmann::json body = {{"success", false}, {"error", {{"message", message}}}};
  HttpResponse response;
  response.status = status;
  response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return response;
}

inline const char* http_reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

inline HttpParse parse_http_request(const std::string& data, const HttpLimits& limits, HttpRequest& out) {
  HttpParse result;
  auto fail = [&](int status, std::string message) {
    result.outcome = HttpParse::failed;
    result.status = status;
    result.message = std::move(message);
    return result;
  };
  // Blank lines before a request are allowed (RFC 9112, 2.2).
  std::size_t start = 0;
  while (start + 1 < data.size() && data[start] == '\r' && data[start + 1] == '\n') start += 2;
  if (start > limits.max_request_line) return fail(400, "too many empty lines before the request line");
  std::size_t line_end = data.find("\r\n", start);
  if (line_end == std::string::npos) {
    if (data.size() - start > limits.max_request_line) {
      return fail(414, "request line longer than " + std::to_string(limits.max_request_line) + " bytes");
    }
    return result;
  }
  if (line_end - start > limits.max_request_line) {
    return fail(414, "request line longer than " + std::to_string(limits.max_request_line) + " bytes");
  }
  const std::string line = data.substr(start, line_end - start);
  std::size_t sp1 = line.find(' ');
  std::size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos || line.find(' ', sp2 + 1) != std::string::npos) {
    return fail(400, "malformed request line");
  }
  out = HttpRequest();
  out.method = line.substr(0, sp1);
  out.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string version = line.substr(sp2 + 1);
  if (out.method.empty() || out.target.empty() || out.target[0] != '/') return fail(400, "malformed request line");
  for (char c : out.method) {
    if (c < 'A' || c > 'Z') return fail(400, "malformed request method");
  }
  if (version == "HTTP/1.1") {
    out.minor_version = 1;
  } else if (version == "HTTP/1.0") {
    out.minor_version = 0;
  } else if (version.rfind("HTTP/", 0) == 0) {
    return fail(505, "unsupported HTTP version " + version);
  } else {
    return fail(400, "malformed request line");
  }
  std::size_t question = out.target.find('?');
  out.raw_path = out.target.substr(0, question);
  out.path = percent_decode(out.raw_path);
  if (question != std::string::npos) out.query = out.target.substr(question + 1);

  // Header lines, each checked as soon as it is whole; an unfinished one
  // counts against the bound too.
  std::size_t pos = line_end + 2;
  const std::size_t headers_start = pos;
  for (;;) {
    std::size_t end = data.find("\r\n", pos);
    if (end == std::string::npos) {
      if (data.size() - headers_start > limits.max_header_bytes) {
        return fail(431, "request headers larger than " + std::to_string(limits.max_header_bytes) + " bytes");
      }
      return result;
    }
    if (end + 2 - headers_start > limits.max_header_bytes) {
      return fail(431, "request headers larger than " + std::to_string(limits.max_header_bytes) + " bytes");
    }
    if (end == pos) {
      pos += 2;
      break;
    }
    if (out.headers.size() >= limits.max_headers) {
      return fail(431, "more than " + std::to_string(limits.max_headers) + " request headers");
    }
    const std::string header = data.substr(pos, end - pos);
    std::size_t colon = header.find(':');
    if (colon == std::string::npos || colon == 0 || header[0] == ' ' || header[0] == '\t') {
      return fail(400, "malformed header line");
    }
    std::string name = header.substr(0, colon);
    for (char& c : name) {
      if (c == ' ' || c == '\t') return fail(400, "malformed header name");
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    std::size_t value_start = header.find_first_not_of(" \t", colon + 1);
    std::size_t value_end = header.find_last_not_of(" \t");
    std::string value = value_start == std::string::npos ? "" : header.substr(value_start, value_end - value_start + 1);
    out.headers.emplace_back(std::move(name), std::move(value));
    pos = end + 2;
  }
  if (out.has_header("transfer-encoding")) return fail(501, "request bodies with Transfer-Encoding are not accepted");
  std::size_t body_size = 0;
  if (out.has_header("content-length")) {
    const std::string text = out.header("content-length");
    if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string::npos) {
      return fail(400, "malformed Content-Length");
    }
    body_size = static_cast<std::size_t>(std::stoull(text));
    if (body_size > limits.max_body) {
      return fail(413, "request body larger than " + std::to_string(limits.max_body) + " bytes");
    }
  }
  if (data.size() - pos < body_size) return result;
  out.body = data.substr(pos, body_size);
  result.outcome = HttpParse::complete;
  result.consumed = pos + body_size;
  return result;
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_HTTP_MESSAGE_HPP
