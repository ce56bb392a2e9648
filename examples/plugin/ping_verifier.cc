// A verifier plugin: example.ping.PingVerifier connects to `port` on
// 127.0.0.1, sends "PING\n" and passes when the answer starts with "PONG".
// Built as libping_verifier.so (see BUILD.bazel and README.md).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "pymanager/plugin.hpp"
#include "pymanager/verifier.hpp"

namespace {

/// A port argument: a number, or the string of digits `${port:NAME}` becomes.
int read_port(pymanager::ArgumentReader& reader) {
  const std::string path = reader.path_of("port");
  const nlohmann::json* port = reader.member("port");
  if (port == nullptr) throw pymanager::Error(pymanager::ErrorKind::config_invalid, path + ": required key is missing");
  long value = -1;
  if (port->is_number_integer()) {
    value = port->get<long>();
  } else if (port->is_string()) {
    const std::string& text = port->get_ref<const std::string&>();
    if (!text.empty() && text.size() <= 5 && text.find_first_not_of("0123456789") == std::string::npos) {
      value = std::stol(text);
    }
  }
  if (value < 1 || value > 65535) {
    throw pymanager::Error(pymanager::ErrorKind::config_invalid, path + ": expected a port number 1-65535, got " + port->dump());
  }
  return static_cast<int>(value);
}

class PingVerifier : public pymanager::Verifier {
 public:
  PingVerifier(int port, double timeout) : port_(port), timeout_(timeout) {}

  /// {"port": 5432 or "${port:svc}", "timeout": seconds (default 10)}.
  static std::shared_ptr<const pymanager::Verifier> from_arguments(const nlohmann::json& arguments,
                                                                   const std::string& path) {
    pymanager::ArgumentReader reader(arguments, path);
    int port = read_port(reader);
    double timeout = reader.seconds("timeout").value_or(10);
    reader.finish();  // an unknown key is an error naming its path
    return std::make_shared<PingVerifier>(port, timeout);
  }

  pymanager::VerifyResult verify(pymanager::VerifyContext& context) const override {
    return pymanager::poll_until(context, timeout_, pymanager::PollSchedule::with_interval(0.5),
                                 [this](pymanager::Clock::duration) { return ping(); });
  }

 private:
  /// One attempt: connect, PING, read the answer (at most 1 s).
  pymanager::VerifyResult ping() const {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return pymanager::VerifyResult::failure(std::string("socket: ") + std::strerror(errno));
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      return pymanager::VerifyResult::failure("connect to 127.0.0.1:" + std::to_string(port_) + ": " +
                                              std::strerror(errno));
    }
    const char request[] = "PING\n";
    if (::send(fd, request, sizeof request - 1, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof request - 1)) {
      return pymanager::VerifyResult::failure(std::string("send: ") + std::strerror(errno));
    }
    std::string answer;
    char buffer[64];
    while (answer.size() < 4) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 1000) <= 0) return pymanager::VerifyResult::failure("no answer within 1s (got '" + answer + "')");
      ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
      if (n <= 0) return pymanager::VerifyResult::failure("connection closed after '" + answer + "'");
      answer.append(buffer, static_cast<std::size_t>(n));
    }
    if (answer.compare(0, 4, "PONG") != 0) return pymanager::VerifyResult::failure("answered '" + answer + "', not PONG");
    return pymanager::VerifyResult::ok("PONG from port " + std::to_string(port_));
  }

  int port_;
  double timeout_;
};

}  // namespace

// The entry point pymanager calls after dlopen: registers the class as
// "<module>.PingVerifier" (example.ping.PingVerifier in ping.json).
PYMANAGER_VERIFIER_PLUGIN(registrar) { registrar.add("PingVerifier", &PingVerifier::from_arguments); }
