// libFuzzer target: the bytes the keeper decodes.
// - A spawn request: any bytes are either refused (EINVAL, E2BIG) or decode
//   into strings that lie inside the request and hold no NUL of their own.
// - A daemon's environment: the owner matcher, fed in pieces of any size,
//   finds what a plain split on NUL finds.
// - The list of its children: every pid is positive and written in the input.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "pymanager/detail/keeper.hpp"

namespace {

const char kToken[] = "0123456789abcdef";

/// The owner as the marker's definition says, by splitting on NUL.
std::uint32_t reference_owner(const std::string& block) {
  const std::string prefix = std::string("PYMANAGER_OWNER=") + kToken + ":";
  std::size_t start = 0;
  while (start <= block.size()) {
    std::size_t end = block.find('\0', start);
    if (end == std::string::npos) end = block.size();
    std::string entry = block.substr(start, end - start);
    if (entry.compare(0, prefix.size(), prefix) == 0) {
      std::string digits = entry.substr(prefix.size());
      bool ok = !digits.empty() && digits.size() <= 8 &&
                digits.find_first_not_of("0123456789") == std::string::npos;
      if (ok && std::stoul(digits) < pymanager::detail::kKeeperMaxIds) return static_cast<std::uint32_t>(std::stoul(digits));
    }
    start = end + 1;
  }
  return pymanager::detail::kKeeperNoOwner;
}

void check_owner(const std::string& block) {
  const std::uint32_t expected = reference_owner(block);
  for (std::size_t piece : {std::size_t{1}, std::size_t{3}, std::size_t{4096}}) {
    pymanager::detail::KeeperOwnerMatcher matcher(kToken, sizeof kToken - 1);
    for (std::size_t i = 0; i < block.size() && !matcher.found(); i += piece) {
      matcher.feed(block.data() + i, std::min(piece, block.size() - i));
    }
    if (matcher.finish() != expected) std::abort();
  }
}

void check_pids(const std::string& text) {
  const char* p = text.data();
  const char* end = p + text.size();
  pid_t pid;
  while (pymanager::detail::keeper_next_pid(p, end, pid)) {
    if (pid <= 0 || p > end || p == text.data()) std::abort();
    if (text.find(std::to_string(pid)) == std::string::npos) std::abort();
  }
}

void check_spawn(const std::uint8_t* data, std::size_t size) {
  std::vector<char> payload(data, data + size);
  std::vector<char*> strings(64);
  pymanager::detail::SpawnRequest request;
  int error = pymanager::detail::keeper_decode_spawn(payload.data(), payload.size(), strings.data(), strings.size(), request);
  if (error != 0) {
    if (error != EINVAL && error != E2BIG) std::abort();
    return;
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
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check_spawn(data, size);
  const std::string text(reinterpret_cast<const char*>(data), size);
  check_owner(text);
  check_pids(text);
  return 0;
}
