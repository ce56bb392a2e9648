// A test child: an HTTP server on loopback.
//   http_service --port N [--host 127.0.0.1|::1] [--delay-ms D] [--wait-for FILE]
// Waits D ms, and until FILE exists (a state the test controls), binds, prints "listening on HOST:PORT", then serves
//   GET /health      200 "healthy"
//   GET /redirect    302 to /health
//   GET /unavailable 503
//   GET /slow-path   302 to /unavailable
//   GET /            200 "[]" as JSON (not the shape of pymanager's API)
// until SIGTERM (taken by a thread with sigwait).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include <httplib.h>

int main(int argc, char** argv) {
  std::string host = "127.0.0.1";
  int port = -1;
  int delay_ms = 0;
  std::string wait_for;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--host") {
      host = argv[i + 1];
    } else if (flag == "--port") {
      port = std::atoi(argv[i + 1]);
    } else if (flag == "--delay-ms") {
      delay_ms = std::atoi(argv[i + 1]);
    } else if (flag == "--wait-for") {
      wait_for = argv[i + 1];
    } else {
      port = -1;
      break;
    }
  }
  if (port < 0 || argc % 2 != 1) {
    std::cerr << "usage: http_service --port N [--host H] [--delay-ms D] [--wait-for FILE]\n";
    return 2;
  }
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);
  std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  while (!wait_for.empty() && ::access(wait_for.c_str(), F_OK) != 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }

  httplib::Server server;
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("healthy", "text/plain"); });
  server.Get("/redirect", [](const httplib::Request&, httplib::Response& res) { res.set_redirect("/health"); });
  server.Get("/unavailable", [](const httplib::Request&, httplib::Response& res) { res.status = 503; });
  server.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content("[]", "application/json"); });
  server.Get("/slow-path", [](const httplib::Request&, httplib::Response& res) { res.set_redirect("/unavailable"); });
  if (host.find(':') != std::string::npos) server.set_address_family(AF_INET6);
  if (!server.bind_to_port(host.c_str(), port)) {
    std::cerr << "http_service: cannot listen on " << host << ":" << port << std::endl;
    return 1;
  }
  std::cout << "listening on " << host << ":" << port << std::endl;
  std::thread stopper([&] {
    int sig;
    sigwait(&term, &sig);
    server.stop();
  });
  server.listen_after_bind();
  stopper.join();
  return 0;
}
