#include "pymanager/pymanager.hpp"

std::string version_from_second_unit() {
  // Uses a few inline functions so that both units emit them.
  (void)pymanager::builtin_verifiers();
  (void)pymanager::exit_code_for(pymanager::ErrorKind::config_invalid);
  return pymanager::version();
}
