// A service for the start-up benchmarks: it needs DELAY ms before it listens
// on 127.0.0.1:PORT, then answers every request with HTTP 200 "ok".
//   late_listener DELAY_MS PORT
// It ends on SIGTERM (the default action), or by itself after 10 minutes, so
// that nothing outlives a benchmark that was interrupted.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: late_listener DELAY_MS PORT\n");
    return 2;
  }
  const long delay_ms = std::atol(argv[1]);
  const int port = std::atoi(argv[2]);
  struct timespec delay = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
  while (::nanosleep(&delay, &delay) != 0 && errno == EINTR) {
  }
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<unsigned short>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 64) != 0) {
    std::fprintf(stderr, "late_listener: cannot listen on 127.0.0.1:%d: %s\n", port, std::strerror(errno));
    return 1;
  }
  const char reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
  struct timespec begin {};
  ::clock_gettime(CLOCK_MONOTONIC, &begin);
  for (;;) {
    struct timespec now {};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - begin.tv_sec > 600) return 0;
    struct pollfd p = {listener, POLLIN, 0};
    if (::poll(&p, 1, 1000) != 1) continue;
    int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    // Read the request (one GET fits in a read), then answer and close.
    struct pollfd q = {c, POLLIN, 0};
    char buffer[4096];
    if (::poll(&q, 1, 1000) == 1) {
      ssize_t ignored = ::read(c, buffer, sizeof buffer);
      (void)ignored;
    }
    ssize_t ignored = ::write(c, reply, sizeof reply - 1);
    (void)ignored;
    ::close(c);
  }
}
