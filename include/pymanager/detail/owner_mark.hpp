// pymanager: the owner mark. Every child of a Manager gets
// `PYMANAGER_OWNER=<token>:<id>` in its environment: the keeper reads it from
// /proc/PID/environ to attribute a daemon to the process it came from, and,
// should the keeper itself be lost (killed from outside), the Manager finds
// by it whatever is left and kills it (sweep_after_keeper_loss).
#ifndef PYMANAGER_DETAIL_OWNER_MARK_HPP
#define PYMANAGER_DETAIL_OWNER_MARK_HPP

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/process_core.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

/// The environment entry's prefix for one Manager ("PYMANAGER_OWNER=<token>:").
inline std::string owner_marker(const std::string& token) { return "PYMANAGER_OWNER=" + token + ":"; }

/// 16 hex digits, different for every Manager.
inline std::string random_token() {
  unsigned char bytes[8] = {};
  if (::getrandom(bytes, sizeof bytes, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof bytes)) {
    auto now = static_cast<unsigned long long>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
               (static_cast<unsigned long long>(::getpid()) << 32);
    std::memcpy(bytes, &now, sizeof bytes);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

/// True when /proc/PID/environ holds `marker` ("PYMANAGER_OWNER=<token>:")
/// as the start of an entry.
inline bool process_has_marker(pid_t pid, const std::string& marker) {
  UniqueFd fd(::open(("/proc/" + std::to_string(pid) + "/environ").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  std::string text;
  char buffer[65536];
  // An environment is at most a few MiB: read at most 8.
  for (int round = 0; round < 128; ++round) {
    ssize_t n = retry_eintr([&] { return ::read(fd.get(), buffer, sizeof buffer); });
    if (n <= 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  for (std::size_t at = 0; at < text.size();) {
    if (text.compare(at, marker.size(), marker) == 0) return true;
    std::size_t end = text.find('\0', at);
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return false;
}

/// Every process on the machine whose environment carries `marker`.
inline std::vector<pid_t> processes_with_marker(const std::string& marker) {
  std::vector<pid_t> out;
  DIR* dir = ::opendir("/proc");
  if (dir == nullptr) return out;
  const pid_t self = ::getpid();
  while (struct dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (pid <= 0 || *end != '\0' || pid == self) continue;
    if (process_has_marker(static_cast<pid_t>(pid), marker)) out.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(dir);
  return out;
}

/// "1, 2, 3", at most 20 of them ("..., and 97 more").
inline std::string join_pids(const std::vector<pid_t>& pids) {
  std::string out;
  for (std::size_t k = 0; k < pids.size() && k < 20; ++k) out += (out.empty() ? "" : ", ") + std::to_string(pids[k]);
  if (pids.size() > 20) out += ", and " + std::to_string(pids.size() - 20) + " more";
  return out;
}

/// True when process `pid` is stopped or traced (state T or t in /proc).
inline bool keeper_is_frozen(pid_t pid) {
  UniqueFd fd(::open(("/proc/" + std::to_string(pid) + "/stat").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  char buffer[512];
  ssize_t n = retry_eintr([&] { return ::read(fd.get(), buffer, sizeof buffer - 1); });
  if (n <= 0) return false;
  buffer[n] = '\0';
  const char* close_paren = std::strrchr(buffer, ')');
  return close_paren != nullptr && close_paren[1] == ' ' && (close_paren[2] == 'T' || close_paren[2] == 't');
}

/// What sweep_after_keeper_loss killed besides the process groups.
struct KeeperLossSweep {
  std::vector<pid_t> daemons;  ///< the daemons the keeper had reported, still the same processes
  std::vector<pid_t> others;   ///< anything else that carried the mark
};

/// The keeper is lost: its children died with it (PR_SET_PDEATHSIG), their
/// groups and the daemons did not. SIGKILL to every known group (a group id
/// cannot be reused while the group has a member), to every daemon that is
/// still the process it was (the same start time as when it was adopted or,
/// if that was not known, our mark), then to anything else carrying the mark.
inline KeeperLossSweep sweep_after_keeper_loss(const std::vector<pid_t>& groups,
                                               const std::vector<std::pair<pid_t, std::uint64_t>>& daemons,
                                               const std::string& marker) {
  KeeperLossSweep out;
  for (pid_t pgid : groups) ::kill(-pgid, SIGKILL);
  for (const auto& [pid, start] : daemons) {
    const bool same = start != 0 ? process_start_time(pid) == start : process_has_marker(pid, marker);
    if (!same) continue;
    if (::getpgid(pid) == pid) ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);
    out.daemons.push_back(pid);
  }
  // What escaped both: a descendant that left its group before the keeper
  // saw it as a daemon. Members of the groups and the daemons are not news.
  for (pid_t pid : processes_with_marker(marker)) {
    // Its group before the kill: one that died meanwhile (a member of a
    // group killed above) is no news, and its group can no longer be read.
    const pid_t pgid = ::getpgid(pid);
    if (pgid < 0) continue;
    ::kill(pid, SIGKILL);
    const bool known = std::find(groups.begin(), groups.end(), pgid) != groups.end() ||
                       std::find(out.daemons.begin(), out.daemons.end(), pid) != out.daemons.end() ||
                       std::find(out.daemons.begin(), out.daemons.end(), pgid) != out.daemons.end();
    if (!known) out.others.push_back(pid);
  }
  return out;
}

/// The one message that says what was done after the keeper was lost.
inline std::string describe_keeper_loss(pid_t keeper, const std::vector<pid_t>& groups, const KeeperLossSweep& sweep) {
  auto listed = [](const std::vector<pid_t>& pids) { return pids.empty() ? std::string() : " (" + join_pids(pids) + ")"; };
  return "the keeper process (pid " + std::to_string(keeper) + ") was killed: SIGKILL to " +
         std::to_string(groups.size()) + " process group(s)" + listed(groups) + ", " +
         std::to_string(sweep.daemons.size()) + " daemon(s)" + listed(sweep.daemons) + " and " +
         std::to_string(sweep.others.size()) + " other process(es) carrying this manager's mark" + listed(sweep.others) +
         "; a process that cleared its environment and left its process group may have escaped";
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_OWNER_MARK_HPP
