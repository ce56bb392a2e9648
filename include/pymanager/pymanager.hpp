// pymanager for C++: launches the processes an integration test needs,
// verifies each one, and shuts them all down, leaving nothing behind.
//
// The umbrella header: include this one.
//   pymanager::Config config = pymanager::load_config_file("pymanager.json", pymanager::builtin_verifiers());
//   pymanager::Manager manager(std::move(config));
//   manager.start();            // throws pymanager::Error if a process cannot be set up
//   ...                         // run the tests
//   manager.shutdown(); manager.wait_finished();   // or let the destructor do it
#ifndef PYMANAGER_PYMANAGER_HPP
#define PYMANAGER_PYMANAGER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include "pymanager/config.hpp"
#include "pymanager/config_schema.hpp"
#include "pymanager/error.hpp"
#include "pymanager/frontend.hpp"
#include "pymanager/http_api.hpp"
#include "pymanager/keeper.hpp"
#include "pymanager/manager.hpp"
#include "pymanager/ports.hpp"
#include "pymanager/process.hpp"
#include "pymanager/verifier.hpp"
#include "pymanager/verifiers/builtin.hpp"
#include "pymanager/verifiers/exited_verifier.hpp"
#include "pymanager/verifiers/http_verifier.hpp"
#include "pymanager/version.hpp"

#endif  // PYMANAGER_PYMANAGER_HPP
