// pymanager: the registry of the verifiers the original tool shipped.
#ifndef PYMANAGER_VERIFIERS_BUILTIN_HPP
#define PYMANAGER_VERIFIERS_BUILTIN_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include "pymanager/verifier.hpp"
#include "pymanager/verifiers/command_verifier.hpp"
#include "pymanager/verifiers/exited_verifier.hpp"
#include "pymanager/verifiers/file_verifier.hpp"
#include "pymanager/verifiers/http_verifier.hpp"
#include "pymanager/verifiers/output_verifier.hpp"
#include "pymanager/verifiers/tcp_verifier.hpp"

namespace pymanager {
inline namespace v1 {

/// A registry holding HttpOkVerifier and ExitedVerifier under the original's
/// names, and module pymanager.verifiers (OutputVerifier, FileVerifier,
/// CommandVerifier, TcpVerifier, HttpVerifier); add your own verifiers to it
/// with `add("mymodule.MyVerifier", factory)`.
inline VerifierRegistry builtin_verifiers() {
  VerifierRegistry registry;
  registry.add(HttpOkVerifier::kName, &HttpOkVerifier::from_arguments);
  registry.add(ExitedVerifier::kName, &ExitedVerifier::from_arguments);
  registry.add(OutputVerifier::kName, &OutputVerifier::from_arguments);
  registry.add(FileVerifier::kName, &FileVerifier::from_arguments);
  registry.add(CommandVerifier::kName, &CommandVerifier::from_arguments);
  registry.add(TcpVerifier::kName, &TcpVerifier::from_arguments);
  registry.add(HttpVerifier::kName, &HttpVerifier::from_arguments);
  return registry;
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_BUILTIN_HPP
