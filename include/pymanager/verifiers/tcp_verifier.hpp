// pymanager: pymanager.verifiers.TcpVerifier — passes when a TCP connection
// to host:port is accepted (the connection is closed at once).
#ifndef PYMANAGER_VERIFIERS_TCP_VERIFIER_HPP
#define PYMANAGER_VERIFIERS_TCP_VERIFIER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <arpa/inet.h>

#include <memory>
#include <string>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/verifier.hpp"
#include "pymanager/verifiers/connect.hpp"

namespace pymanager {
inline namespace v1 {

namespace detail {

/// A port argument: a number 1-65535, or a string of digits (what
/// "${port:NAME}" expands to).
inline int read_port(ObjectReader<nlohmann::json>& reader, const std::string& key) {
  const nlohmann::json* m = reader.member(key);
  if (m == nullptr) reader.missing(key, "required key is missing (a port number 1-65535)");
  const std::string expected = "expected a port number 1-65535 or a string of digits, got ";
  long long value = -1;
  if (m->is_number_integer() || m->is_number_unsigned()) {
    if (m->is_number_unsigned() && m->get<unsigned long long>() > 65535) value = -1;
    else value = m->get<long long>();
  } else if (m->is_string()) {
    const std::string& text = m->get_ref<const std::string&>();
    if (!text.empty() && text.size() <= 5 && text.find_first_not_of("0123456789") == std::string::npos) {
      value = std::stoll(text);
    }
  } else {
    throw_config_error(reader.path_of(key), expected + describe_json_type(*m));
  }
  if (value < 1 || value > 65535) throw_config_error(reader.path_of(key), expected + m->dump());
  return static_cast<int>(value);
}

/// A host argument: a name, an IPv4 literal or an IPv6 literal (with or
/// without brackets).
inline std::string read_host(ObjectReader<nlohmann::json>& reader, const std::string& key, const std::string& fallback) {
  auto host = reader.string(key);
  if (!host) return fallback;
  std::string bare = strip_brackets(*host);
  bool ok = !bare.empty() && bare.size() <= 253;
  if (ok && bare.find(':') != std::string::npos) {
    in6_addr ignored{};
    ok = ::inet_pton(AF_INET6, bare.c_str(), &ignored) == 1;
  } else if (ok) {
    ok = bare.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") == std::string::npos;
  }
  if (!ok) throw_config_error(reader.path_of(key), "expected a host name or an IP address, got " + nlohmann::json(*host).dump());
  return bare;
}

}  // namespace detail

class TcpVerifier : public Verifier {
 public:
  static constexpr const char* kName = "pymanager.verifiers.TcpVerifier";

  /// `port` (required: 1-65535, or a string of digits such as "${port:db}"),
  /// `host` (default 127.0.0.1; "localhost" tries 127.0.0.1 and ::1; an IPv6
  /// literal works), `timeout` seconds (default 30), `interval`: the longest
  /// pause between attempts (default 1; 1 ms during the first 10 s).
  TcpVerifier(std::string host, int port, double timeout, double interval)
      : host_(std::move(host)), port_(port), timeout_(timeout), interval_(interval) {}

  static std::shared_ptr<const Verifier> from_arguments(const nlohmann::json& arguments, const std::string& path) {
    detail::ObjectReader<nlohmann::json> reader(arguments, path);
    int port = detail::read_port(reader, "port");
    std::string host = detail::read_host(reader, "host", "127.0.0.1");
    double timeout = reader.seconds("timeout").value_or(30.0);
    double interval = reader.seconds("interval").value_or(1.0);
    reader.finish();
    return std::make_shared<TcpVerifier>(std::move(host), port, timeout, interval);
  }

  VerifyResult verify(VerifyContext& context) const override {
    const std::string where = (host_.find(':') != std::string::npos ? "[" + host_ + "]" : host_) + ":" + std::to_string(port_);
    context.log(MessageCategory::verifier_verbose, "connecting to " + where);
    const auto deadline = Clock::now() + seconds_to_duration(timeout_);
    detail::TcpProbe probe(host_, port_);
    return poll_until(context, timeout_, PollSchedule::with_interval(interval_), [&](Clock::duration) {
      detail::ConnectResult r = probe.attempt(deadline);
      if (r.accepted) return VerifyResult::ok("connected to " + where);
      return VerifyResult::failure(where + ": " + r.message);
    });
  }

  const std::string& host() const { return host_; }
  int port() const { return port_; }

 private:
  std::string host_;
  int port_;
  double timeout_;
  double interval_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_TCP_VERIFIER_HPP
