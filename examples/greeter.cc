// A small HTTP service for the example config: `greeter --port N [--greeting TEXT]`.
// GET / answers the greeting, GET /health answers "ok". It stops on SIGTERM.
#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include <httplib.h>

int main(int argc, char** argv) {
  int port = 8080;
  std::string greeting = "hello from greeter";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--port") {
      port = std::atoi(argv[i + 1]);
    } else if (flag == "--greeting") {
      greeting = argv[i + 1];
    } else {
      std::cerr << "usage: greeter --port N [--greeting TEXT]\n";
      return 2;
    }
  }
  // SIGTERM is taken by a thread with sigwait, so that it stops the server
  // cleanly (nothing is done inside a signal handler).
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);

  httplib::Server server;
  server.Get("/", [&](const httplib::Request&, httplib::Response& res) { res.set_content(greeting + "\n", "text/plain"); });
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
  if (!server.bind_to_port("127.0.0.1", port)) {
    std::cerr << "greeter: cannot listen on 127.0.0.1:" << port << std::endl;
    return 1;
  }
  // Started after the bind: stop() must not race the creation of the
  // listening socket (ThreadSanitizer saw that). A SIGTERM before this
  // point waits, blocked, for sigwait.
  std::thread stopper([&] {
    int sig;
    sigwait(&term, &sig);
    std::cout << "greeter: SIGTERM, stopping" << std::endl;
    server.stop();
  });
  std::cout << "greeter: listening on http://127.0.0.1:" << port << std::endl;
  server.listen_after_bind();
  stopper.join();
  return 0;
}
