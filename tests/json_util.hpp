// Reading JSON answers in tests without ever aborting: nlohmann's const
// operator[] asserts on a missing key, which would crash the test binary
// instead of failing one test. These return null (or the JSON text of what
// is there) so that a wrong answer is a readable failure.
#ifndef PYMANAGER_TESTS_JSON_UTIL_HPP
#define PYMANAGER_TESTS_JSON_UTIL_HPP

#include <initializer_list>
#include <string>

#include <nlohmann/json.hpp>

namespace testutil {

/// The value at `keys` (object members, in order), or null when any step is
/// missing or not an object.
template <class Json>
Json field(const Json& value, std::initializer_list<const char*> keys) {
  const Json* at = &value;
  for (const char* key : keys) {
    if (!at->is_object()) return Json();
    auto it = at->find(key);
    if (it == at->end()) return Json();
    at = &*it;
  }
  return *at;
}

/// The string at `keys`; anything else as its JSON text (`null`, `5`, ...),
/// so that a comparison with the expected string fails with what was there.
template <class Json>
std::string text(const Json& value, std::initializer_list<const char*> keys) {
  Json found = field(value, keys);
  return found.is_string() ? found.template get<std::string>() : found.dump();
}

/// The integer at `keys`, or -1 when it is missing or not an integer.
template <class Json>
long long integer(const Json& value, std::initializer_list<const char*> keys) {
  Json found = field(value, keys);
  return found.is_number_integer() ? found.template get<long long>() : -1;
}

}  // namespace testutil

#endif  // PYMANAGER_TESTS_JSON_UTIL_HPP
