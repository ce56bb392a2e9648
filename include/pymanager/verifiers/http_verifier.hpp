// pymanager: pymutils.http_verifier.HttpOkVerifier — passes when a GET of the
// URL answers 2xx (redirects followed, as the original's requests.get did).
#ifndef PYMANAGER_VERIFIERS_HTTP_VERIFIER_HPP
#define PYMANAGER_VERIFIERS_HTTP_VERIFIER_HPP

#include <sys/socket.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <httplib.h>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

namespace detail {

struct ParsedUrl {
  bool https = false;
  std::string host;       ///< without brackets for IPv6 literals
  int port = 80;
  std::string authority;  ///< "host:port" as written, for the Host header
  std::string path;       ///< "/..." including the query
};

/// Splits an http(s) URL; nullopt when it is not one.
inline std::optional<ParsedUrl> parse_http_url(const std::string& url) {
  ParsedUrl parsed;
  std::string rest;
  if (url.rfind("http://", 0) == 0) {
    rest = url.substr(7);
  } else if (url.rfind("https://", 0) == 0) {
    rest = url.substr(8);
    parsed.https = true;
    parsed.port = 443;
  } else {
    return std::nullopt;
  }
  auto slash = rest.find_first_of("/?#");
  std::string authority = rest.substr(0, slash);
  std::string path = slash == std::string::npos ? "/" : rest.substr(slash);
  if (path[0] != '/') path = "/" + path;
  auto hash = path.find('#');
  if (hash != std::string::npos) path.erase(hash);
  if (authority.empty() || authority.find('@') != std::string::npos) return std::nullopt;
  std::string port_text;
  if (authority[0] == '[') {
    auto close = authority.find(']');
    if (close == std::string::npos) return std::nullopt;
    parsed.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return std::nullopt;
      port_text = authority.substr(close + 2);
    }
  } else {
    auto colon = authority.find(':');
    parsed.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_text = authority.substr(colon + 1);
  }
  if (parsed.host.empty()) return std::nullopt;
  if (!port_text.empty()) {
    if (port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    parsed.port = std::stoi(port_text);
    if (parsed.port < 1 || parsed.port > 65535) return std::nullopt;
  }
  parsed.authority = authority;
  parsed.path = path;
  return parsed;
}

/// A readable cause for an httplib client error.
inline std::string describe_http_error(httplib::Error error) {
  switch (error) {
    case httplib::Error::Connection: return "connection refused";
    case httplib::Error::ConnectionTimeout: return "connection timed out";
    case httplib::Error::Read: return "connection closed while reading the response";
    case httplib::Error::Write: return "connection closed while sending the request";
    case httplib::Error::ExceedRedirectCount: return "too many redirects";
    case httplib::Error::SSLConnection: return "TLS handshake failed";
    case httplib::Error::SSLServerVerification: return "TLS certificate not trusted";
    default: return "request failed (" + httplib::to_string(error) + ")";
  }
}

}  // namespace detail

/// What a failed cpp-httplib request means, in the words of pymanager's own
/// messages ("connection refused", "connection timed out", ...): for a
/// verifier or a client of your own that reports like the built-in ones.
inline std::string describe_http_error(httplib::Error error) { return detail::describe_http_error(error); }

class HttpOkVerifier : public Verifier {
 public:
  static constexpr const char* kName = "pymutils.http_verifier.HttpOkVerifier";

  /// `url` (required), `timeout` seconds in all (default 30), `interval`:
  /// the longest pause between attempts (default 1; the first retries come
  /// within milliseconds), `headers`: extra request headers.
  HttpOkVerifier(std::string url, double timeout, double interval, std::vector<std::pair<std::string, std::string>> headers)
      : url_(std::move(url)), timeout_(timeout), interval_(interval), headers_(std::move(headers)) {
    parsed_ = *detail::parse_http_url(url_);
  }

  static std::shared_ptr<const Verifier> from_arguments(const nlohmann::json& arguments, const std::string& path) {
    detail::ObjectReader<nlohmann::json> reader(arguments, path);
    std::string url = reader.required_string("url");
    double timeout = reader.seconds("timeout").value_or(30.0);
    double interval = reader.seconds("interval").value_or(1.0);
    auto headers = reader.string_map("headers").value_or(std::vector<std::pair<std::string, std::string>>{});
    reader.finish();
    if (!detail::parse_http_url(url)) {
      detail::throw_config_error(reader.path_of("url"), "expected an http:// or https:// URL, got '" + url + "'");
    }
    return std::make_shared<HttpOkVerifier>(url, timeout, interval, std::move(headers));
  }

  VerifyResult verify(VerifyContext& context) const override {
    context.log(MessageCategory::verifier_verbose, "polling " + url_);
    const auto deadline =
        Clock::now() + seconds_to_duration(timeout_);
    return retry_until(context, timeout_, interval_, [&] { return attempt(context, deadline); });
  }

  const std::string& url() const { return url_; }

 private:
  VerifyResult attempt(VerifyContext& context, Clock::time_point deadline) const {
    // "localhost" may resolve to 127.0.0.1 only (or ::1 first) while the
    // service listens on the other one: try both addresses explicitly.
    if (parsed_.host == "localhost") {
      VerifyResult v4 = attempt_at(context, "127.0.0.1", deadline);
      if (v4.passed || context.cancelled()) return v4;
      VerifyResult v6 = attempt_at(context, "::1", deadline);
      if (v6.passed) return v6;
      return VerifyResult::failure("127.0.0.1: " + v4.message + "; ::1: " + v6.message);
    }
    return attempt_at(context, parsed_.host, deadline);
  }

  /// One GET, connecting to `address` (the URL's host, or a literal for it).
  /// Its timeouts never reach past the verifier's deadline.
  VerifyResult attempt_at(VerifyContext& context, const std::string& address, Clock::time_point deadline) const {
    // At least 100 ms, so that an attempt started just before the deadline
    // still sees an answer on loopback rather than its own timeout.
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    left = std::max(left, std::chrono::milliseconds(100));
    std::unique_ptr<httplib::ClientImpl> client;
    if (parsed_.https) {
      client = std::make_unique<httplib::SSLClient>(address, parsed_.port);
    } else {
      client = std::make_unique<httplib::ClientImpl>(address, parsed_.port);
    }
    if (address.find(':') != std::string::npos) client->set_address_family(AF_INET6);
    client->set_follow_location(true);
    client->set_connection_timeout(std::min(left, std::chrono::milliseconds(2000)));
    client->set_read_timeout(std::min(left, std::chrono::milliseconds(5000)));
    client->set_write_timeout(std::min(left, std::chrono::milliseconds(5000)));
    httplib::Headers headers(headers_.begin(), headers_.end());
    // The Host header the URL implies, whatever address we connect to.
    if (headers.find("Host") == headers.end()) headers.emplace("Host", parsed_.authority);
    auto result = client->Get(parsed_.path.c_str(), headers);
    if (!result) return VerifyResult::failure(detail::describe_http_error(result.error()));
    int status = result->status;
    context.log(MessageCategory::verifier_verbose, "GET " + url_ + " -> status " + std::to_string(status));
    if (status >= 200 && status < 300) return VerifyResult::ok("status " + std::to_string(status));
    return VerifyResult::failure("status " + std::to_string(status));
  }

  std::string url_;
  double timeout_;
  double interval_;
  std::vector<std::pair<std::string, std::string>> headers_;
  detail::ParsedUrl parsed_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_HTTP_VERIFIER_HPP
