// A test plugin whose registration throws: the load fails with its message.
#include <stdexcept>

#include "pymanager/plugin.hpp"

PYMANAGER_VERIFIER_PLUGIN(registrar) {
  (void)registrar;
  throw std::runtime_error("the database client library is missing");
}
