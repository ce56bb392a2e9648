// A tiny service for the plugin example: listens on 127.0.0.1:PORT (its one
// argument) and answers each "PING" line with "PONG".
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: pong_service PORT\n");
    return 2;
  }
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[1])));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(listener, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 16) != 0) {
    std::perror("pong_service: bind/listen");
    return 1;
  }
  std::printf("pong_service: listening on 127.0.0.1:%s\n", argv[1]);
  std::fflush(stdout);
  for (;;) {
    int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::string line;
    char c = 0;
    while (line.size() < 64 && ::read(fd, &c, 1) == 1 && c != '\n') line += c;
    if (line == "PING") {
      ::send(fd, "PONG\n", 5, MSG_NOSIGNAL);
      std::printf("pong_service: answered a PING\n");
      std::fflush(stdout);
    }
    ::close(fd);
  }
}
