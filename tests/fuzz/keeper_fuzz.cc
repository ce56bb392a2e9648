// libFuzzer target: the keeper's decoding of a spawn request. Any bytes are
// either refused (EINVAL, E2BIG) or decode into strings that lie inside the
// request and hold no NUL of their own.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "pymanager/detail/keeper.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<char> payload(data, data + size);
  std::vector<char*> strings(64);
  pymanager::detail::SpawnRequest request;
  int error = pymanager::detail::keeper_decode_spawn(payload.data(), payload.size(), strings.data(), strings.size(), request);
  if (error != 0) {
    if (error != EINVAL && error != E2BIG) std::abort();
    return 0;
  }
  const char* begin = payload.data();
  const char* end = begin + payload.size();
  auto inside = [&](const char* s) { return s >= begin && s < end && s + std::strlen(s) < end; };
  if (!inside(request.path) || !inside(request.cwd)) std::abort();
  for (char** p = request.argv; *p != nullptr; ++p) {
    if (!inside(*p)) std::abort();
  }
  for (char** p = request.envp; *p != nullptr; ++p) {
    if (!inside(*p)) std::abort();
  }
  return 0;
}
