// A test child that says, with its own clock, what happened to it.
//   stamp_service --stamp FILE [--port N] [--delay-ms D] [--wait-for FILE]
//                 [--ignore-signals] [--daemonize] [--exit CODE] [--linger-ms L]
// Appends "<event> <pid> <CLOCK_MONOTONIC microseconds>" lines to FILE:
//   start      when it began;
//   listening  once it listens on 127.0.0.1:N (after D ms, its own start-up
//              time, and once FILE exists, a state the test controls);
//   signal S   when it got signal S (SIGTERM, SIGINT, SIGQUIT, SIGHUP); it
//              then exits 0, unless --ignore-signals; with --linger-ms, it
//              first takes L ms to wind down and says "exit" just before it
//              exits (so a test can tell "signalled" from "gone").
// It answers every HTTP request with 200 "ok". --daemonize: forks; the parent
// (the "launcher") exits 0 at once, the child calls setsid and goes on, as
// `pg_ctl start` or `redis-server --daemonize yes` do. --exit CODE: exits
// with CODE right after "start".
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

std::string stamp_file;

void stamp(const std::string& event) {
  struct timespec ts {};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  long long us = static_cast<long long>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
  std::string line = event + " " + std::to_string(getpid()) + " " + std::to_string(us) + "\n";
  int fd = open(stamp_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  ssize_t ignored = write(fd, line.data(), line.size());
  (void)ignored;
  close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  int port = 0, delay_ms = 0, exit_code = -1, linger_ms = 0;
  bool ignore = false, daemonize = false;
  std::string wait_for;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "stamp_service: %s needs a value\n", flag.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (flag == "--stamp") stamp_file = value();
    else if (flag == "--port") port = std::atoi(value().c_str());
    else if (flag == "--delay-ms") delay_ms = std::atoi(value().c_str());
    else if (flag == "--wait-for") wait_for = value();
    else if (flag == "--exit") exit_code = std::atoi(value().c_str());
    else if (flag == "--linger-ms") linger_ms = std::atoi(value().c_str());
    else if (flag == "--ignore-signals") ignore = true;
    else if (flag == "--daemonize") daemonize = true;
    else {
      std::fprintf(stderr, "stamp_service: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (stamp_file.empty()) {
    std::fprintf(stderr, "usage: stamp_service --stamp FILE [...]\n");
    return 2;
  }
  sigset_t sigs;
  sigemptyset(&sigs);
  for (int sig : {SIGTERM, SIGINT, SIGQUIT, SIGHUP}) sigaddset(&sigs, sig);
  sigprocmask(SIG_BLOCK, &sigs, nullptr);
  stamp("start");
  if (exit_code >= 0) return exit_code;
  if (daemonize) {
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid > 0) {
      stamp("launcher-exit");
      _exit(0);
    }
    setsid();
    stamp("daemon");
  }
  int sigfd = signalfd(-1, &sigs, SFD_CLOEXEC);
  auto take_signal = [&](int timeout_ms) {
    struct pollfd p = {sigfd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) != 1) return;
    signalfd_siginfo info {};
    if (read(sigfd, &info, sizeof info) != static_cast<ssize_t>(sizeof info)) return;
    stamp("signal " + std::to_string(info.ssi_signo));
    if (ignore) return;
    if (linger_ms > 0) {
      struct timespec pause = {linger_ms / 1000, (linger_ms % 1000) * 1000000L};
      while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
      }
    }
    stamp("exit");
    std::exit(0);
  };
  // Its own start-up time, then the test's go-ahead; signals are seen meanwhile.
  struct timespec begin {};
  clock_gettime(CLOCK_MONOTONIC, &begin);
  for (;;) {
    struct timespec now {};
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long elapsed = (now.tv_sec - begin.tv_sec) * 1000 + (now.tv_nsec - begin.tv_nsec) / 1000000;
    if (elapsed >= delay_ms) break;
    take_signal(static_cast<int>(delay_ms - elapsed));
  }
  while (!wait_for.empty() && access(wait_for.c_str(), F_OK) != 0) take_signal(2);
  int listener = -1;
  if (port > 0) {
    listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr {};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<unsigned short>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(listener, 64) != 0) {
      std::fprintf(stderr, "stamp_service: cannot listen on 127.0.0.1:%d: %s\n", port, std::strerror(errno));
      return 1;
    }
  }
  stamp("listening");
  std::printf("stamp_service %d ready\n", static_cast<int>(getpid()));
  std::fflush(stdout);
  for (;;) {
    struct pollfd fds[2] = {{sigfd, POLLIN, 0}, {listener, POLLIN, 0}};
    if (poll(fds, listener >= 0 ? 2 : 1, -1) < 0) continue;
    if (fds[0].revents & POLLIN) take_signal(0);
    if (listener >= 0 && (fds[1].revents & POLLIN)) {
      int c = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      char buffer[4096];
      struct pollfd p = {c, POLLIN, 0};
      if (poll(&p, 1, 1000) == 1) {
        ssize_t ignored = read(c, buffer, sizeof buffer);
        (void)ignored;
      }
      const char reply[] = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
      ssize_t ignored = write(c, reply, sizeof reply - 1);
      (void)ignored;
      close(c);
    }
  }
}
