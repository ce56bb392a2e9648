// pymanager: the HTTP verifiers. pymanager.verifiers.HttpVerifier passes when
// a request to a URL answers an expected status (and, if asked, a body that
// matches a regular expression); pymutils.http_verifier.HttpOkVerifier, the
// original's, is the same check with a GET and any 2xx (redirects followed,
// as the original's requests.get did).
#ifndef PYMANAGER_VERIFIERS_HTTP_VERIFIER_HPP
#define PYMANAGER_VERIFIERS_HTTP_VERIFIER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <httplib.h>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/verifier.hpp"
#include "pymanager/verifiers/connect.hpp"

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

/// A range of HTTP statuses, both ends included.
struct StatusRange {
  int low = 200;
  int high = 299;
  bool contains(int status) const { return status >= low && status <= high; }
  std::string text() const { return low == high ? std::to_string(low) : std::to_string(low) + "-" + std::to_string(high); }
};

/// What an HTTP readiness check asks and expects (HttpVerifier's arguments).
struct HttpCheck {
  std::string url;                        ///< http:// or https://
  std::string method = "GET";             ///< GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS
  std::vector<StatusRange> statuses = {StatusRange{}};  ///< any of these passes (default 200-299)
  std::shared_ptr<const std::regex> body;  ///< the body must match it (std::regex_search), if set
  std::string body_source;                ///< the regular expression as written
  std::vector<std::pair<std::string, std::string>> headers;
  bool insecure = false;                  ///< https: skip certificate verification
  std::string ca_file;                    ///< https: trust this PEM bundle (relative: to the process's working directory)
  double timeout = 30;                    ///< seconds in all
  double interval = 1;                    ///< the longest pause between attempts, seconds
};

namespace detail {

/// At most this much of a body is read and matched; the rest is not read.
constexpr std::size_t kHttpBodyLimit = std::size_t{16} * 1024;

/// libstdc++'s std::regex in its default (backtracking) mode recurses once
/// or more per character of the text: `(a|b)*c` on 16 KiB of body overflows
/// an 8 MiB stack. Body patterns are therefore compiled with libstdc++'s
/// __polynomial flag (its Thompson-NFA executor: recursion bounded by the
/// pattern, not the text; back-references are refused), and matched on a
/// thread of their own with this much stack.
constexpr std::size_t kRegexStack = std::size_t{16} * 1024 * 1024;

/// The flags body patterns are compiled with.
constexpr std::regex::flag_type kBodyRegexFlags = std::regex::ECMAScript | std::regex_constants::__polynomial;

/// And a search is still quadratic: `(a|b)*c` takes seconds on 16 KiB of "a". A match is
/// waited for at most this long (and not past the verifier's deadline);
/// then the attempt fails and the matcher is left to finish on its own
/// (it owns what it reads); no other match starts until it has.
constexpr std::chrono::milliseconds kRegexWait{1000};

/// One match on its own thread.
struct RegexJob {
  std::string text;
  std::shared_ptr<const std::regex> regex;
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  bool matched = false;
  std::string error;
};

/// std::regex_search(job->text, *job->regex) on a thread with kRegexStack of
/// stack, waited for until `until`; nullopt (and `error`) when it could not
/// run, threw, or is still running at `until` (then `job` is left running).
inline std::optional<bool> regex_search_bounded(VerifyContext& context, const std::shared_ptr<RegexJob>& job,
                                                Clock::time_point until, std::string& error) {
  pthread_attr_t attributes;
  ::pthread_attr_init(&attributes);
  ::pthread_attr_setstacksize(&attributes, kRegexStack);
  pthread_t thread;
  void* (*run)(void*) = [](void* argument) -> void* {
    std::unique_ptr<std::shared_ptr<RegexJob>> owned(static_cast<std::shared_ptr<RegexJob>*>(argument));
    RegexJob& j = **owned;
    bool matched = false;
    std::string failure;
    try {
      matched = std::regex_search(j.text, *j.regex);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    std::lock_guard<std::mutex> lock(j.mutex);
    j.matched = matched;
    j.error = failure.empty() ? failure : "body could not be matched: " + failure;
    j.done = true;
    j.done_cv.notify_all();
    return nullptr;
  };
  auto* argument = new std::shared_ptr<RegexJob>(job);
  int rc = ::pthread_create(&thread, &attributes, run, argument);
  ::pthread_attr_destroy(&attributes);
  if (rc != 0) {
    delete argument;
    error = std::string("cannot start the body matcher: ") + std::strerror(rc);
    return std::nullopt;
  }
  const auto started = Clock::now();
  std::unique_lock<std::mutex> lock(job->mutex);
  // In slices, so that a shutdown or the process's exit is seen meanwhile.
  bool stopped = false;
  while (!job->done && Clock::now() < until && !stopped) {
    job->done_cv.wait_until(lock, std::min(until, Clock::now() + std::chrono::milliseconds(10)));
    if (job->done) break;
    lock.unlock();
    stopped = context.cancelled() || context.exit_status().has_value();
    lock.lock();
  }
  if (!job->done) {
    lock.unlock();
    ::pthread_detach(thread);
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
    error = stopped ? std::string("stopped matching the body")
                    : "matching the body took longer than " + std::to_string(waited) +
                          " ms (the regular expression is too slow for this body)";
    return std::nullopt;
  }
  lock.unlock();
  ::pthread_join(thread, nullptr);
  if (!job->error.empty()) {
    error = job->error;
    return std::nullopt;
  }
  return job->matched;
}

/// After a service answered "not yet" (a wrong status or body, or a TLS or
/// read failure), the next attempt waits 5 ms, then 10, 20, 40, 50 ms (never
/// more than 50 ms, nor more than `interval`): asking a service that answers
/// every millisecond would load it and us. A refusal costs microseconds and
/// is retried on the schedule (every 1 ms for the first 10 s).
constexpr std::chrono::milliseconds kAnsweredFirstPause{5};
constexpr std::chrono::milliseconds kAnsweredMaxPause{50};

/// What the attempts of one verify() call share.
struct HttpPollState {
  std::shared_ptr<RegexJob> slow_match;  ///< a match left running by an earlier attempt
};

inline std::string describe_statuses(const std::vector<StatusRange>& statuses) {
  std::string out;
  for (const auto& range : statuses) out += (out.empty() ? "" : ", ") + range.text();
  return out;
}

/// A `status` argument: a number, a range string "200-299", or a non-empty
/// list of them.
inline std::vector<StatusRange> read_statuses(ObjectReader<nlohmann::json>& reader, const std::string& key) {
  const nlohmann::json* m = reader.member(key);
  if (m == nullptr) return {StatusRange{}};
  const std::string expected =
      "expected a status (a number 100-599 or a range such as \"200-299\") or a list of them, got ";
  auto one = [&](const nlohmann::json& item, const std::string& path) {
    StatusRange range{-1, -1};
    if (item.is_number_integer() || item.is_number_unsigned()) {
      if (!(item.is_number_unsigned() && item.get<unsigned long long>() > 599)) {
        long long v = item.get<long long>();
        if (v >= 100 && v <= 599) range = {static_cast<int>(v), static_cast<int>(v)};
      }
    } else if (item.is_string()) {
      const std::string& text = item.get_ref<const std::string&>();
      auto dash = text.find('-');
      std::string a = text.substr(0, dash);
      std::string b = dash == std::string::npos ? a : text.substr(dash + 1);
      auto digits = [](const std::string& t) {
        return t.size() == 3 && t.find_first_not_of("0123456789") == std::string::npos;
      };
      if (digits(a) && digits(b)) {
        int low = std::stoi(a), high = std::stoi(b);
        if (low >= 100 && high <= 599 && low <= high) range = {low, high};
      }
    } else {
      throw_config_error(path, expected + describe_json_type(item));
    }
    if (range.low < 0) throw_config_error(path, expected + item.dump());
    return range;
  };
  std::vector<StatusRange> out;
  if (m->is_array()) {
    if (m->empty()) throw_config_error(reader.path_of(key), expected + "an empty list");
    if (m->size() > 100) throw_config_error(reader.path_of(key), "at most 100 statuses or ranges");
    for (std::size_t i = 0; i < m->size(); ++i) {
      out.push_back(one((*m)[i], reader.path_of(key) + "[" + std::to_string(i) + "]"));
    }
  } else {
    out.push_back(one(*m, reader.path_of(key)));
  }
  return out;
}

/// Headers a request can carry: token names, values without CR, LF or NUL.
inline void check_headers(const std::vector<std::pair<std::string, std::string>>& headers, const std::string& path) {
  static const char* const kToken = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  for (const auto& header : headers) {
    if (header.first.empty() || header.first.find_first_not_of(kToken) != std::string::npos) {
      throw_config_error(join_path(path, header.first), "not a valid header name");
    }
    if (header.second.find_first_of(std::string("\r\n\0", 3)) != std::string::npos) {
      throw_config_error(join_path(path, header.first), "a header value cannot hold CR or LF");
    }
  }
}

/// The first bytes of a body, quoted, for a failure message.
inline std::string body_excerpt(const std::string& body) {
  constexpr std::size_t kShown = 100;
  std::string shown = nlohmann::json(body.substr(0, kShown)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (body.size() > kShown) shown += "...";
  return shown;
}

/// The outcome of one request.
struct HttpAnswer {
  VerifyResult result;
  bool no_connection = false;  ///< nothing accepted the connection: cheap to retry
};

/// One request to the URL, connecting to `address` when it is not empty (a
/// literal for the URL's host). Its timeouts never reach past `deadline` by
/// more than 0.1 s, so that an attempt just before the deadline still sees an
/// answer on loopback rather than its own timeout.
inline HttpAnswer http_request_once(VerifyContext& context, const HttpCheck& check, const ParsedUrl& url,
                                    const std::string& address, Clock::time_point deadline, HttpPollState& state) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  left = std::max(left, std::chrono::milliseconds(100));
  std::unique_ptr<httplib::ClientImpl> client;
  if (url.https) {
    auto tls = std::make_unique<httplib::SSLClient>(url.host, url.port);
    if (check.insecure) tls->enable_server_certificate_verification(false);
    if (!check.ca_file.empty()) {
      std::string file = check.ca_file;
      std::string dir = context.working_directory();
      if (file[0] != '/' && !dir.empty()) file = dir + "/" + file;
      if (::access(file.c_str(), R_OK) != 0) return {VerifyResult::failure("cannot read ca_file " + file), false};
      tls->set_ca_cert_path(file.c_str());
    }
    client = std::move(tls);
  } else {
    client = std::make_unique<httplib::ClientImpl>(url.host, url.port);
  }
  if (!address.empty()) client->set_hostname_addr_map({{url.host, address}});
  if ((address.empty() ? url.host : address).find(':') != std::string::npos) client->set_address_family(AF_INET6);
  client->set_follow_location(true);
  client->set_keep_alive(false);
  client->set_connection_timeout(std::min(left, std::chrono::milliseconds(2000)));
  client->set_read_timeout(std::min(left, std::chrono::milliseconds(5000)));
  client->set_write_timeout(std::min(left, std::chrono::milliseconds(5000)));

  httplib::Request request;
  request.method = check.method;
  request.path = url.path;
  request.headers = httplib::Headers(check.headers.begin(), check.headers.end());
  // The Host header the URL implies, whatever address we connect to.
  if (request.headers.find("Host") == request.headers.end()) request.headers.emplace("Host", url.authority);
  std::string body;
  bool truncated = false;
  request.content_receiver = [&](const char* data, std::size_t length, std::uint64_t, std::uint64_t) {
    body.append(data, std::min(length, kHttpBodyLimit - body.size()));
    if (body.size() < kHttpBodyLimit) return true;
    truncated = true;  // enough to match: stop reading
    return false;
  };
  httplib::Response response;
  httplib::Error error = httplib::Error::Success;
  bool sent = client->send(request, response, error);
  if (!sent && !(truncated && response.status > 0)) {
    return {VerifyResult::failure(describe_http_error(error)), error == httplib::Error::Connection};
  }
  const int status = response.status;
  context.log(MessageCategory::verifier_verbose,
              check.method + " " + check.url + " -> status " + std::to_string(status));
  const std::string seen = "status " + std::to_string(status);
  bool status_ok = std::any_of(check.statuses.begin(), check.statuses.end(),
                               [&](const StatusRange& r) { return r.contains(status); });
  if (!status_ok) {
    // The default (2xx) says only the status, as the original's messages did.
    bool default_statuses = check.statuses.size() == 1 && check.statuses[0].low == 200 && check.statuses[0].high == 299;
    return {VerifyResult::failure(default_statuses ? seen
                                                   : seen + " (expected " + describe_statuses(check.statuses) + ")"),
            false};
  }
  if (check.body) {
    auto job = std::make_shared<RegexJob>();
    job->text = body;
    job->regex = check.body;
    std::string error;
    auto now = Clock::now();
    std::optional<bool> matched =
        regex_search_bounded(context, job, std::min(now + kRegexWait, std::max(deadline, now + std::chrono::milliseconds(10))), error);
    if (!matched) {
      std::lock_guard<std::mutex> lock(job->mutex);
      if (!job->done) state.slow_match = job;
      return {VerifyResult::failure(seen + ", " + error), false};
    }
    if (!*matched) {
      return {VerifyResult::failure(seen + ", body did not match /" + check.body_source + "/ (body: " +
                                    body_excerpt(body) + (truncated ? ", first 16 KiB read" : "") + ")"),
              false};
    }
    return {VerifyResult::ok(seen + ", body matched /" + check.body_source + "/"), false};
  }
  return {VerifyResult::ok(seen), false};
}

/// One attempt: for "localhost", 127.0.0.1 and then ::1 (it may resolve to
/// one only while the service listens on the other).
inline HttpAnswer http_attempt(VerifyContext& context, const HttpCheck& check, const ParsedUrl& url,
                               Clock::time_point deadline, HttpPollState& state) {
  if (state.slow_match) {
    std::lock_guard<std::mutex> lock(state.slow_match->mutex);
    if (!state.slow_match->done) {
      return {VerifyResult::failure("the body match of an earlier attempt is still running (the regular expression "
                                    "is too slow for this body)"),
              false};
    }
  }
  state.slow_match.reset();
  if (url.host != "localhost") return http_request_once(context, check, url, "", deadline, state);
  HttpAnswer v4 = http_request_once(context, check, url, "127.0.0.1", deadline, state);
  if (v4.result.passed || context.cancelled()) return v4;
  HttpAnswer v6 = http_request_once(context, check, url, "::1", deadline, state);
  if (v6.result.passed) return v6;
  return {VerifyResult::failure("127.0.0.1: " + v4.result.message + "; ::1: " + v6.result.message),
          v4.no_connection && v6.no_connection};
}

/// Polls `check` on poll_until's schedule. Until something accepts the
/// connection, each attempt is one non-blocking connect (microseconds, no
/// HTTP client built); then each is a request, paced as kAnsweredFirstPause
/// says after an answer that did not pass.
inline VerifyResult http_poll(VerifyContext& context, const HttpCheck& check) {
  const ParsedUrl url = *parse_http_url(check.url);
  context.log(MessageCategory::verifier_verbose, "polling " + check.url);
  const PollSchedule schedule = PollSchedule::with_interval(check.interval);
  const auto deadline = Clock::now() + seconds_to_duration(check.timeout);
  const Clock::duration max_answered_pause =
      std::max<Clock::duration>(std::min<Clock::duration>(kAnsweredMaxPause, schedule.interval), schedule.fast_pause);
  TcpProbe probe(url.host, url.port);
  HttpPollState state;
  bool connect_first = true;
  Clock::duration answered_pause = kAnsweredFirstPause;
  return poll_until(context, check.timeout, schedule, [&](Clock::duration pause) {
    if (connect_first) {
      ConnectResult connected = probe.attempt(deadline);
      if (!connected.accepted) return VerifyResult::failure(connected.message);
      connect_first = false;
    }
    HttpAnswer answer = http_attempt(context, check, url, deadline, state);
    if (answer.result.passed) return answer.result;
    if (answer.no_connection) {
      connect_first = true;
      answered_pause = kAnsweredFirstPause;
      return answer.result;
    }
    // The service answered (or got as far as TLS): wait longer by ourselves;
    // poll_until then pauses `pause` more.
    const auto wait = std::min(answered_pause, max_answered_pause);
    answered_pause = std::min<Clock::duration>(answered_pause * 2, max_answered_pause);
    if (wait > pause) context.sleep_until(std::min(Clock::now() + (wait - pause), deadline));
    return answer.result;
  });
}

}  // namespace detail

/// pymanager.verifiers.HttpVerifier: passes when a request to `url` answers
/// one of the expected statuses (and a body that matches, if asked).
class HttpVerifier : public Verifier {
 public:
  static constexpr const char* kName = "pymanager.verifiers.HttpVerifier";

  explicit HttpVerifier(HttpCheck check) : check_(std::move(check)) {
    if (!detail::parse_http_url(check_.url)) throw Error(ErrorKind::config_invalid, "not an http(s) URL: " + check_.url);
  }

  /// `url` (required), `method` GET, `status` "200-299" (a number, a range
  /// string, or a list of them), `body` (an ECMAScript regular expression the
  /// body must match), `headers` {}, `insecure` false, `ca_file` (a PEM
  /// bundle to trust), `timeout` 30, `interval` 1.
  static std::shared_ptr<const Verifier> from_arguments(const nlohmann::json& arguments, const std::string& path) {
    detail::ObjectReader<nlohmann::json> reader(arguments, path);
    HttpCheck check;
    check.url = reader.required_string("url");
    if (!detail::parse_http_url(check.url)) {
      detail::throw_config_error(reader.path_of("url"), "expected an http:// or https:// URL, got '" + check.url + "'");
    }
    if (auto method = reader.string("method")) {
      static const char* const kMethods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
      if (std::find(std::begin(kMethods), std::end(kMethods), *method) == std::end(kMethods)) {
        detail::throw_config_error(reader.path_of("method"),
                                   "expected one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, got " +
                                       nlohmann::json(*method).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      }
      check.method = *method;
    }
    check.statuses = detail::read_statuses(reader, "status");
    if (auto body = reader.string("body")) {
      if (body->size() > 4096) detail::throw_config_error(reader.path_of("body"), "a regular expression of at most 4096 bytes");
      try {
        check.body = std::make_shared<const std::regex>(*body, detail::kBodyRegexFlags);
      } catch (const std::regex_error& e) {
        detail::throw_config_error(reader.path_of("body"), "not a valid regular expression (ECMAScript): " + std::string(e.what()));
      }
      check.body_source = *body;
    }
    check.headers = reader.string_map("headers").value_or(std::vector<std::pair<std::string, std::string>>{});
    detail::check_headers(check.headers, reader.path_of("headers"));
    check.insecure = reader.boolean("insecure").value_or(false);
    if (auto ca_file = reader.string("ca_file")) {
      if (ca_file->empty()) detail::throw_config_error(reader.path_of("ca_file"), "expected a path, got \"\"");
      check.ca_file = *ca_file;
    }
    check.timeout = reader.seconds("timeout").value_or(30.0);
    check.interval = reader.seconds("interval").value_or(1.0);
    reader.finish();
    return std::make_shared<HttpVerifier>(std::move(check));
  }

  VerifyResult verify(VerifyContext& context) const override { return detail::http_poll(context, check_); }

  const HttpCheck& check() const { return check_; }

 private:
  HttpCheck check_;
};

/// pymutils.http_verifier.HttpOkVerifier: a GET that answers 2xx (redirects
/// followed); HttpVerifier's code and schedule.
class HttpOkVerifier : public Verifier {
 public:
  static constexpr const char* kName = "pymutils.http_verifier.HttpOkVerifier";

  /// `url` (required), `timeout` seconds in all (default 30), `interval`:
  /// the longest pause between attempts (default 1; the first retries come
  /// within milliseconds), `headers`: extra request headers.
  HttpOkVerifier(std::string url, double timeout, double interval, std::vector<std::pair<std::string, std::string>> headers) {
    if (!detail::parse_http_url(url)) throw Error(ErrorKind::config_invalid, "not an http(s) URL: " + url);
    check_.url = std::move(url);
    check_.timeout = timeout;
    check_.interval = interval;
    check_.headers = std::move(headers);
  }

  static std::shared_ptr<const Verifier> from_arguments(const nlohmann::json& arguments, const std::string& path) {
    detail::ObjectReader<nlohmann::json> reader(arguments, path);
    std::string url = reader.required_string("url");
    double timeout = reader.seconds("timeout").value_or(30.0);
    double interval = reader.seconds("interval").value_or(1.0);
    auto headers = reader.string_map("headers").value_or(std::vector<std::pair<std::string, std::string>>{});
    detail::check_headers(headers, reader.path_of("headers"));
    reader.finish();
    if (!detail::parse_http_url(url)) {
      detail::throw_config_error(reader.path_of("url"), "expected an http:// or https:// URL, got '" + url + "'");
    }
    return std::make_shared<HttpOkVerifier>(url, timeout, interval, std::move(headers));
  }

  VerifyResult verify(VerifyContext& context) const override { return detail::http_poll(context, check_); }

  const std::string& url() const { return check_.url; }

 private:
  HttpCheck check_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_HTTP_VERIFIER_HPP
