// pymanager: the version, and the one documented block of configuration macros.
#ifndef PYMANAGER_VERSION_HPP
#define PYMANAGER_VERSION_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#define PYMANAGER_VERSION_MAJOR 0
#define PYMANAGER_VERSION_MINOR 1
#define PYMANAGER_VERSION_PATCH 0
#define PYMANAGER_VERSION "0.1.0"

namespace pymanager {
inline namespace v1 {
inline const char* version() { return PYMANAGER_VERSION; }
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERSION_HPP
