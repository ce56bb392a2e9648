// pymanager: the one check that a translation unit is compiled as C++17 or
// later. Every public header includes it first, so that a build without
// -std=c++17 stops here with one message that says what to add, instead of a
// cascade of "std::optional is only available from C++17 onwards".
#ifndef PYMANAGER_DETAIL_CXX17_HPP
#define PYMANAGER_DETAIL_CXX17_HPP

#if !defined(__cplusplus) || __cplusplus < 201703L
#error "pymanager needs C++17 or later: compile with -std=c++17 (Bazel: add 'build --cxxopt=-std=c++17 --host_cxxopt=-std=c++17' to your .bazelrc; CMake: link pymanager::pymanager, which requires cxx_std_17)"
// Compilers go on after #error; a missing header is fatal and ends the
// compilation here, before the errors that C++17 code would cause.
#include "pymanager: compilation stopped, see the error above"
#endif

#endif  // PYMANAGER_DETAIL_CXX17_HPP
