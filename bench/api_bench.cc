// Benchmark: the HTTP API and the config parser, each as a ratio against a
// floor measured in the same run on the same machine:
//   keep-alive GET /: 4 clients, each on one keep-alive connection, versus
//             the same requests answered by a bare loopback responder (a
//             thread per connection that answers a fixed body);
//   GET / next to 64 idle connections, versus GET / with none open;
//   config parse of 10,000 and 100,000 processes, per process, versus
//             nlohmann::json::parse of the same text (unordered, no checks):
//             a linear parse keeps both ratios alike.
//
//   bazel run -c opt //bench:api_bench -- [requests per client]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.hpp"
#include "pymanager/pymanager.hpp"

namespace {

using bench::Clock;
using bench::median;
using bench::ms_since;

int connect_to(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = bench::loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  int yes = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
  return fd;
}

/// Sends `count` GET requests on one connection, one after the other, and
/// reads each whole answer (by its Content-Length).
void get_many(int port, const std::string& path, int count) {
  int fd = connect_to(port);
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n\r\n";
  std::string buffer;
  char chunk[65536];
  for (int i = 0; i < count; ++i) {
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) std::exit(1);
    for (;;) {
      auto head_end = buffer.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        auto length_at = buffer.find("Content-Length: ");
        std::size_t length = std::strtoul(buffer.c_str() + length_at + 16, nullptr, 10);
        if (buffer.size() >= head_end + 4 + length) {
          buffer.erase(0, head_end + 4 + length);
          break;
        }
      }
      ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n <= 0) {
        std::fprintf(stderr, "connection closed after %d requests\n", i);
        std::exit(1);
      }
      buffer.append(chunk, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
}

/// `clients` connections at once, `count` requests each; milliseconds.
double run_clients(int port, const std::string& path, int clients, int count) {
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) threads.emplace_back([=] { get_many(port, path, count); });
  for (auto& t : threads) t.join();
  return ms_since(start);
}

/// The floor: a loopback responder that answers every request with a fixed
/// body of the same size as the API's answer, a thread per connection.
class Responder {
 public:
  explicit Responder(std::size_t body_size) : body_(body_size, 'x') {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = bench::loopback();
    socklen_t len = sizeof addr;
    ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(fd_, 64);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] {
      for (;;) {
        int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;
        int yes = 1;
        ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);
        workers_.emplace_back([this, c] { serve(c); });
      }
    });
  }
  ~Responder() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    acceptor_.join();
    for (auto& w : workers_) w.join();
  }
  int port() const { return port_; }

 private:
  void serve(int c) {
    const std::string answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                               std::to_string(body_.size()) + "\r\nConnection: keep-alive\r\n\r\n" + body_;
    std::string in;
    char chunk[4096];
    for (;;) {
      ssize_t n = ::recv(c, chunk, sizeof chunk, 0);
      if (n <= 0) break;
      in.append(chunk, static_cast<std::size_t>(n));
      std::size_t end;
      while ((end = in.find("\r\n\r\n")) != std::string::npos) {
        in.erase(0, end + 4);
        ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
      }
    }
    ::close(c);
  }

  std::string body_;
  int fd_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  std::vector<std::thread> workers_;
};

std::string processes_text(int n) {
  std::string text = R"({"modules": {"pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}}, "processes": {)";
  for (int i = 0; i < n; ++i) {
    text += (i ? "," : "") + std::string("\"p") + std::to_string(i) +
            R"(": {"executable": "x", "arguments": ["a", "b"], "options": {"suppress_output": true},
                   "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier", "arguments": {"timeout": 5}}})";
  }
  return text + "}}";
}

}  // namespace

int main(int argc, char** argv) {
  const int requests = argc > 1 ? std::max(100, std::atoi(argv[1])) : 5000;
  const int clients = 4;

  auto config = bench::config_of(R"({"keep-alive": true, "processes": {
      "web": {"executable": "/bin/sleep", "arguments": ["1000"]},
      "db": {"executable": "/bin/sleep", "arguments": ["1000"]}}})");
  pymanager::Manager manager(config, bench::quiet());
  manager.start();
  pymanager::HttpApiOptions api_options;
  api_options.port = 0;
  pymanager::HttpApi api(manager, api_options);
  api.start();

  // The size of the API's answer, for the floor's.
  std::size_t body_size = 0;
  {
    nlohmann::json processes = nlohmann::json::array();
    for (const auto& info : manager.processes()) processes.push_back(pymanager::process_to_json(info));
    body_size = nlohmann::json{{"count", processes.size()}, {"processes", processes}}.dump().size();
  }
  Responder responder(body_size);

  std::vector<double> ours, floor;
  for (int round = 0; round < 3; ++round) {
    floor.push_back(run_clients(responder.port(), "/", clients, requests));
    ours.push_back(run_clients(api.port(), "/", clients, requests));
  }
  const double ours_ms = median(ours), floor_ms = median(floor);

  // One GET / at a time, with and without 64 idle connections open.
  auto single = [&] {
    std::vector<double> times;
    for (int i = 0; i < 51; ++i) {
      auto start = Clock::now();
      get_many(api.port(), "/", 1);
      times.push_back(ms_since(start));
    }
    return median(times);
  };
  const double alone = single();
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) idle.push_back(connect_to(api.port()));
  const double beside_idle = single();
  double worst_beside_idle = 0;
  for (int i = 0; i < 20; ++i) {
    auto start = Clock::now();
    get_many(api.port(), "/", 1);
    worst_beside_idle = std::max(worst_beside_idle, ms_since(start));
  }
  for (int fd : idle) ::close(fd);

  // Parsing: per process at two sizes, against nlohmann's own parse.
  struct ParseRow {
    int n;
    double ours_us, floor_us;
  };
  std::vector<ParseRow> parse_rows;
  for (int n : {10000, 100000}) {
    const std::string text = processes_text(n);
    auto start = Clock::now();
    auto plain = nlohmann::json::parse(text);
    const double floor_us = ms_since(start) * 1000.0 / n;
    start = Clock::now();
    auto parsed = pymanager::parse_config(pymanager::detail::parse_json_text(text), pymanager::builtin_verifiers());
    const double ours_us = ms_since(start) * 1000.0 / n;
    if (parsed.processes.size() != static_cast<std::size_t>(n) || plain.empty()) return 1;
    parse_rows.push_back({n, ours_us, floor_us});
  }

  std::printf("pymanager API and parser benchmark\n");
  std::printf("%-52s %10s %10s %8s\n", "what", "floor", "ours", "ratio");
  std::printf("%-52s %10.1f %10.1f %8.2f\n", "4 keep-alive clients x GET / (ms, vs bare responder)", floor_ms, ours_ms,
              ours_ms / floor_ms);
  std::printf("%-52s %10.3f %10.3f %8.2f\n", "GET / beside 64 idle connections (ms, vs none open)", alone, beside_idle,
              beside_idle / alone);
  for (const auto& row : parse_rows) {
    char what[80];
    std::snprintf(what, sizeof what, "config parse, %d processes (us each, vs nlohmann)", row.n);
    std::printf("%-52s %10.2f %10.2f %8.2f\n", what, row.floor_us, row.ours_us, row.ours_us / row.floor_us);
  }
  std::printf("keep-alive: %.0f requests/s from %d clients; beside 64 idle connections the slowest of 20 GET / took %.2f ms\n",
              clients * requests / (ours_ms / 1000.0), clients, worst_beside_idle);
  api.stop();
  return 0;
}
