// pymanager: the keeper program's entry point.
//
// The keeper is the helper process that spawns the managed processes and
// kills whatever they leave behind (see detail/keeper_program.hpp). The Manager
// starts it by exec'ing the program //tools:pymanager-keeper, whose main()
// is only `return pymanager::run_keeper(argc, argv);`, so that the keeper
// does not share the host's memory. Install that program next to your
// binary, have it in your Bazel runfiles (a dependency on //:pymanager puts
// it there), or name it in the environment variable PYMANAGER_KEEPER; with
// PYMANAGER_KEEPER=fork, or when it is not found, the keeper is forked from
// the host instead.
//
// The program is not meant to be run by hand: it expects the manager's
// socket on fd 3 and these arguments, both optional:
//   --token=HEX          16 lowercase hex characters: daemons whose
//                        environment holds PYMANAGER_OWNER=HEX:ID belong to ID
//   --child-nofile=N     each child's soft RLIMIT_NOFILE (0: as inherited)
#ifndef PYMANAGER_KEEPER_HPP
#define PYMANAGER_KEEPER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "pymanager/detail/keeper.hpp"

namespace pymanager {
inline namespace v1 {

/// The keeper program's main(). Runs the keeper on fd 3 and never returns,
/// except on bad usage: then it prints why and returns 2 (0 for --help).
inline int run_keeper(int argc, char** argv) {
  const std::string usage =
      "usage: pymanager-keeper [--token=HEX] [--child-nofile=N]\n"
      "The pymanager library starts this program with its socket on fd 3; it is not run by hand.\n";
  auto fail = [&](const std::string& why) {
    std::string text = "pymanager-keeper: " + why + "\n" + usage;
    detail::write_all(STDERR_FILENO, text);
    return 2;
  };
  std::string token;
  rlim_t child_nofile = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      detail::write_all(STDOUT_FILENO, usage);
      return 0;
    }
    if (arg.rfind("--token=", 0) == 0) {
      token = arg.substr(8);
      if (!token.empty() && !detail::is_keeper_token(token)) {
        return fail("--token: '" + token + "' is not 16 lowercase hex characters");
      }
    } else if (arg.rfind("--child-nofile=", 0) == 0) {
      const std::string value = arg.substr(15);
      char* end = nullptr;
      errno = 0;
      unsigned long long n = std::strtoull(value.c_str(), &end, 10);
      if (value.empty() || value[0] == '-' || *end != '\0' || errno != 0) {
        return fail("--child-nofile: '" + value + "' is not a number");
      }
      child_nofile = static_cast<rlim_t>(n);
    } else {
      return fail("unknown argument '" + arg + "'");
    }
  }
  int type = 0;
  socklen_t length = sizeof type;
  if (::getsockopt(detail::kKeeperSocketFd, SOL_SOCKET, SO_TYPE, &type, &length) != 0 || type != SOCK_SEQPACKET) {
    return fail("fd 3 is not the manager's socket");
  }
  detail::keeper_main(detail::kKeeperSocketFd, token.c_str(), child_nofile);
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_KEEPER_HPP
