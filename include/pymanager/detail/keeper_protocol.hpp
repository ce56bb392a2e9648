// pymanager: the keeper's protocol, shared by the keeper program
// (detail/keeper_program.hpp) and the manager's side (detail/keeper_client.hpp,
// detail/keeper_channel.hpp).
//
// Protocol: an AF_UNIX SOCK_SEQPACKET socket pair, one KeeperHeader per
// packet (see KeeperMessage for each message's fields). Ids are the
// manager's names for process groups: any value below kKeeperMaxIds, no
// fixed count; the keeper's tables grow.
#ifndef PYMANAGER_DETAIL_KEEPER_PROTOCOL_HPP
#define PYMANAGER_DETAIL_KEEPER_PROTOCOL_HPP

#include <cstddef>
#include <cstdint>

namespace pymanager {
inline namespace v1 {
namespace detail {

// ---------------------------------------------------------------------------
// The protocol.

/// One packet: a KeeperHeader (and for spawn its payload). Fields not named
/// are 0.
enum class KeeperMessage : std::uint32_t {
  // manager -> keeper
  spawn = 1,           ///< id; b = payload size; the payload (encode_spawn_payload); SCM_RIGHTS: the child's
                       ///< stdout write end, optionally its stderr write end (one fd: both)
  signal_group = 2,    ///< id; a = signal: kill(-pgid, a) if the group is alive
  goodbye = 3,         ///< kill everything (groups, daemons, what they left), exit
  signal_daemons = 4,  ///< id (kKeeperNoOwner too); a = signal: look for new orphans first, then kill(pid, a) each
                       ///< daemon of `id`; with SIGKILL also the group a daemon leads
  // keeper -> manager
  ready = 10,           ///< a = keeper pid; b = kKeeperProtocolVersion. Always the first message.
  spawned = 11,         ///< id; a = pid (also the new group's pgid)
  spawn_failed = 12,    ///< id; a = errno; b = SpawnStage
  exited = 13,          ///< id; a = wait status of the group leader; b = its pid. After the daemon_adopted of
                        ///< every orphan that was a child of ours when it was reaped (what it left behind)
  group_empty = 14,     ///< id; b = pgid: no process, not even a zombie, is left in the group
  daemon_adopted = 15,  ///< id = owner id or kKeeperNoOwner; a = pid
  daemon_gone = 16,     ///< id = owner id or kKeeperNoOwner; a = pid; b = wait status
};

/// Where a spawn failed, reported with the errno.
enum class SpawnStage : std::int32_t { fork = 1, chdir = 2, stdin_open = 3, exec = 4, protocol = 5 };

inline const char* describe_stage(SpawnStage stage) {
  switch (stage) {
    case SpawnStage::fork: return "fork";
    case SpawnStage::chdir: return "cannot enter working directory";
    case SpawnStage::stdin_open: return "cannot open /dev/null";
    case SpawnStage::exec: return "exec";
    default: return "keeper protocol";
  }
}

struct KeeperHeader {
  KeeperMessage type;
  std::uint32_t id;  ///< a process group's id (< kKeeperMaxIds), or a daemon's owner
  std::int64_t a;    ///< see KeeperMessage
  std::int64_t b;    ///< see KeeperMessage
};

/// Ids are below this (22 bits); the keeper's tables grow to the largest used.
constexpr std::uint32_t kKeeperMaxIds = std::uint32_t{1} << 22;
/// The owner of a daemon without a marker of ours in its environment.
constexpr std::uint32_t kKeeperNoOwner = 0xFFFFFFFFu;
/// Sent in `ready`, so that a keeper program from another version is refused.
constexpr std::int64_t kKeeperProtocolVersion = 2;
/// The keeper program finds its socket here.
constexpr int kKeeperSocketFd = 3;
/// The token's length: 16 lowercase hex characters.
constexpr std::size_t kKeeperTokenLength = 16;
/// The marker's name: PYMANAGER_OWNER=<token>:<id>.
constexpr const char kKeeperOwnerVariable[] = "PYMANAGER_OWNER";

/// The largest spawn request (path, argv, envp, working directory). A
/// SOCK_SEQPACKET message must fit the socket's send buffer.
constexpr std::size_t kKeeperMaxMessage = std::size_t{192} * 1024;
constexpr std::size_t kKeeperMaxStrings = std::size_t{16} * 1024;

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_KEEPER_PROTOCOL_HPP
