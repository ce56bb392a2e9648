// A launcher that daemonizes, as `pg_ctl start` or `redis-server
// --daemonize yes` do: it forks, the child calls setsid and forks the
// daemon, the child exits (the daemon is an orphan now), then the launcher
// exits 0. The daemon writes its pid to PID_FILE, and when it gets SIGTERM
// it writes TERM_FILE and exits 0. It gives up after 300 s (SIGALRM).
//   daemonizer PID_FILE TERM_FILE
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

const char* g_term_file = nullptr;

void on_term(int) {
  int fd = ::open(g_term_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    ssize_t ignored = ::write(fd, "SIGTERM\n", 8);
    (void)ignored;
    ::close(fd);
  }
  ::_exit(0);
}

void write_pid(const std::string& path) {
  std::string tmp = path + ".tmp";
  std::string text = std::to_string(::getpid()) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) ::_exit(3);
  ::close(fd);
  ::rename(tmp.c_str(), path.c_str());  // whole or not at all
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: daemonizer PID_FILE TERM_FILE\n");
    return 2;
  }
  g_term_file = argv[2];
  pid_t middle = ::fork();
  if (middle < 0) return 1;
  if (middle == 0) {
    ::setsid();
    pid_t daemon = ::fork();
    if (daemon < 0) ::_exit(1);
    if (daemon > 0) ::_exit(0);  // the daemon is an orphan from here on
    struct sigaction act {};
    act.sa_handler = on_term;
    ::sigaction(SIGTERM, &act, nullptr);
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    ::sigprocmask(SIG_UNBLOCK, &term, nullptr);
    ::alarm(300);
    write_pid(argv[1]);
    for (;;) ::pause();
  }
  // Exit only once the middle process is gone, so that the daemon is an
  // orphan by the time the launcher's exit is seen.
  int status;
  while (::waitpid(middle, &status, 0) < 0 && errno == EINTR) {
  }
  return 0;
}
