// pymanager: the life of one managed process as one state, with every
// transition in one table.
//
//   waiting ──▶ starting ──▶ verifying ──▶ ready ──▶ exited ◀──▶ daemonized
//      │           │             │           │          │            │
//      │           ▼             ▼           ▼          ▼            ▼
//      │        failed ◀──── (verifier)   stopping ──▶ stopped ◀─────┘
//      └──────────────────────────────────────────────────▲
//
// - waiting: not launched yet; for its dependencies (or, in a file without
//   `depends_on`, for the previous process) or for start-up to begin.
// - starting: the spawn was asked for; the keeper has not answered yet.
// - verifying: spawned; its verifier runs.
// - ready: verified (or spawned, without a verifier).
// - exited: its main process ended on its own (a one-shot step that its
//   ExitedVerifier accepted ends here too).
// - daemonized: its main process ended and left daemons behind, which
//   belong to it (`pg_ctl start`, `redis-server --daemonize yes`).
// - stopping: its stop plan runs (stop signal, then SIGKILL).
// - stopped: stopped on request; nothing of it is left. (Straight from a
//   running state only when the keeper was killed and took it along.)
// - failed: it could not be spawned, or its verifier failed (it stays
//   failed after what was left of it is stopped).
#ifndef PYMANAGER_PROCESS_STATE_HPP
#define PYMANAGER_PROCESS_STATE_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <cstddef>

namespace pymanager {
inline namespace v1 {

enum class ProcessState { waiting, starting, verifying, ready, exited, daemonized, stopping, stopped, failed };

constexpr std::size_t kProcessStateCount = 9;

/// The name used by the API and ctl ("waiting", "ready", ...).
inline const char* to_string(ProcessState state) {
  switch (state) {
    case ProcessState::waiting: return "waiting";
    case ProcessState::starting: return "starting";
    case ProcessState::verifying: return "verifying";
    case ProcessState::ready: return "ready";
    case ProcessState::exited: return "exited";
    case ProcessState::daemonized: return "daemonized";
    case ProcessState::stopping: return "stopping";
    case ProcessState::stopped: return "stopped";
    case ProcessState::failed: return "failed";
  }
  return "unknown";
}

/// Whether a process may go from `from` to `to`: the whole state machine.
inline bool transition_allowed(ProcessState from, ProcessState to) {
  // Rows: from; columns: to, in the enum's order.
  //                                     wait start verif ready exit  daem  stop' stopd fail
  static constexpr bool kTable[kProcessStateCount][kProcessStateCount] = {
      /* waiting    */ {false, true,  false, false, false, false, false, true,  true},
      /* starting   */ {false, false, true,  true,  false, false, true,  true,  true},
      /* verifying  */ {false, false, false, true,  true,  true,  true,  true,  true},
      /* ready      */ {false, false, false, false, true,  true,  true,  true,  false},
      /* exited     */ {false, true,  false, false, false, true,  true,  true,  false},
      /* daemonized */ {false, false, false, false, true,  false, true,  true,  false},
      /* stopping   */ {false, false, false, false, false, false, false, true,  true},
      /* stopped    */ {false, true,  false, false, false, false, false, false, false},
      /* failed     */ {false, true,  false, false, false, false, true,  true,  false},
  };
  return kTable[static_cast<std::size_t>(from)][static_cast<std::size_t>(to)];
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_PROCESS_STATE_HPP
