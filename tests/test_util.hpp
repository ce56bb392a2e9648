// Helpers shared by the tests: runfiles, temporary files, bounded waits,
// running a binary with a deadline, and checking that processes are gone.
#ifndef PYMANAGER_TESTS_TEST_UTIL_HPP
#define PYMANAGER_TESTS_TEST_UTIL_HPP

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace testutil {

using Clock = std::chrono::steady_clock;

/// The absolute path of a file in this workspace's runfiles, e.g.
/// runfile("tests/helpers/http_service").
inline std::string runfile(const std::string& path) {
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (const char* dir = std::getenv(var)) {
      std::string full = std::string(dir) + "/pymanager/" + path;
      if (::access(full.c_str(), F_OK) == 0) return full;
    }
  }
  throw std::runtime_error("runfile not found: " + path + " (run the test with bazel test)");
}

/// A fresh directory under TEST_TMPDIR (or /tmp).
inline std::string make_temp_dir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern = std::string(base ? base : "/tmp") + "/pmtest.XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (::mkdtemp(buffer.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return buffer.data();
}

inline void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

/// The pids written to `path`, whitespace separated (by children that
/// `echo $$ >> file`); empty while the file does not exist.
inline std::vector<pid_t> pids_in_file(const std::string& path) {
  std::vector<pid_t> out;
  std::istringstream in(read_file(path));
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

/// Polls `condition` every 2 ms until it holds or `timeout` passes. For
/// conditions the test cannot be told about (a file appearing, a pid dying).
/// The default bound is generous: it only matters when the condition never
/// comes, and a busy machine can take seconds to start a process.
inline bool wait_until(const std::function<bool()>& condition,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(20000)) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

/// True while a process with this pid exists and is not a zombie.
inline bool pid_alive(pid_t pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0) return false;
  std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close == std::string::npos || stat.size() < close + 3 || stat[close + 2] != 'Z';
}

/// True while any process is in the process group.
inline bool group_alive(pid_t pgid) { return pgid > 0 && ::kill(-pgid, 0) == 0; }

/// A port that was free on 127.0.0.1 a moment ago (the kernel's pick for
/// port 0). Another process may take it before the service binds it: tests
/// that need a guarantee use the manager's own port reservation instead.
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::runtime_error("cannot find a free port");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// A socket listening on 127.0.0.1 (a port the kernel picked), closed on
/// destruction: holds a port "in use" for tests.
class Listener {
 public:
  Listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 1) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw std::runtime_error("cannot listen on 127.0.0.1");
    }
    port_ = ntohs(addr.sin_port);
  }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener() { ::close(fd_); }
  int port() const { return port_; }
  /// True when a connection is waiting in its backlog (someone connected).
  bool was_connected() const {
    struct pollfd p = {fd_, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
  }

 private:
  int fd_ = -1;
  int port_ = 0;
};

/// The result of running a program to completion.
struct RunResult {
  int exit_code = -1;     ///< exit code, or -signal
  bool timed_out = false;
  std::string out;
  std::string err;
};

/// A child process with captured stdout and stderr, killed (with its process
/// group) on destruction if still running.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& cwd = "",
        const std::vector<std::string>& extra_env = {}) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    for (const auto& e : extra_env) env.push_back(e);
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork");
    if (pid_ == 0) {
      ::setpgid(0, 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(126);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execve(args[0], args.data(), envp.data());
      ::_exit(127);
    }
    ::setpgid(pid_, pid_);
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    ::fcntl(out_fd_, F_SETFL, O_NONBLOCK);
    ::fcntl(err_fd_, F_SETFL, O_NONBLOCK);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      int status;
      ::waitpid(pid_, &status, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
    if (err_fd_ >= 0) ::close(err_fd_);
  }

  pid_t pid() const { return pid_; }
  void signal(int sig) { ::kill(pid_, sig); }
  /// Closes our end of its stdout: its next writes there fail with EPIPE.
  void close_stdout() {
    ::close(out_fd_);
    out_fd_ = -1;
  }

  /// Reads whatever output is available now.
  void pump() {
    char buffer[8192];
    for (auto [fd, dest] : {std::pair<int, std::string*>{out_fd_, &out_}, {err_fd_, &err_}}) {
      if (fd < 0) continue;
      for (;;) {
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n <= 0) break;
        dest->append(buffer, static_cast<std::size_t>(n));
      }
    }
  }
  const std::string& out() {
    pump();
    return out_;
  }
  const std::string& err() {
    pump();
    return err_;
  }

  /// Waits (bounded) until stdout+stderr contain `text`.
  bool wait_for_output(const std::string& text, std::chrono::milliseconds timeout = std::chrono::milliseconds(30000)) {
    return wait_until([&] {
      pump();
      return out_.find(text) != std::string::npos || err_.find(text) != std::string::npos;
    }, timeout);
  }

  /// Waits (bounded) for the child to exit; collects its output.
  RunResult wait(std::chrono::milliseconds timeout = std::chrono::milliseconds(30000)) {
    RunResult result;
    auto deadline = Clock::now() + timeout;
    while (!reaped_) {
      int status;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        break;
      }
      if (Clock::now() >= deadline) {
        result.timed_out = true;
        break;
      }
      struct pollfd fds[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
      ::poll(fds, 2, 5);
      pump();
    }
    // The output pipes may still be held by a leftover grandchild: read what
    // is there without waiting for EOF.
    pump();
    result.exit_code = exit_code_;
    result.out = out_;
    result.err = err_;
    return result;
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  bool reaped_ = false;
  int exit_code_ = -1;
  std::string out_;
  std::string err_;
};

/// Runs a program to completion (bounded).
inline RunResult run(const std::vector<std::string>& argv, const std::string& cwd = "",
                     std::chrono::milliseconds timeout = std::chrono::milliseconds(30000)) {
  Child child(argv, cwd);
  return child.wait(timeout);
}

/// Pids listed in a text (e.g. "sleeper 123 started"): the numbers after `marker`.
inline std::vector<pid_t> pids_after(const std::string& text, const std::string& marker) {
  std::vector<pid_t> out;
  for (std::size_t pos = text.find(marker); pos != std::string::npos; pos = text.find(marker, pos + 1)) {
    out.push_back(static_cast<pid_t>(std::atol(text.c_str() + pos + marker.size())));
  }
  return out;
}

/// Sets (or, with nullptr / nullopt, unsets) an environment variable for a
/// scope; the old value (or its absence) comes back on destruction.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ScopedEnv(const char* name, const char* value)
      : ScopedEnv(name, value ? std::optional<std::string>(value) : std::nullopt) {}
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

}  // namespace testutil

#endif  // PYMANAGER_TESTS_TEST_UTIL_HPP
