// The keeper's spawn request: length-prefixed, so that no content can shift
// a field. Hostile payloads are refused, never read past their end.
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "pymanager/detail/keeper.hpp"

namespace {

using pymanager::detail::encode_spawn_payload;
using pymanager::detail::keeper_decode_spawn;
using pymanager::detail::SpawnRequest;

struct Decoded {
  int error = -1;
  std::string path, cwd;
  std::vector<std::string> argv, envp;
};

Decoded decode(std::string payload, std::size_t max_strings = 64) {
  std::vector<char*> strings(max_strings);
  SpawnRequest request;
  Decoded out;
  out.error = keeper_decode_spawn(payload.empty() ? nullptr : &payload[0], payload.size(), strings.data(), max_strings,
                                  request);
  if (out.error != 0) return out;
  out.path = request.path;
  out.cwd = request.cwd;
  for (char** p = request.argv; *p != nullptr; ++p) out.argv.emplace_back(*p);
  for (char** p = request.envp; *p != nullptr; ++p) out.envp.emplace_back(*p);
  return out;
}

std::string u32(std::uint32_t value) { return std::string(reinterpret_cast<const char*>(&value), sizeof value); }
std::string field(const std::string& text) { return u32(static_cast<std::uint32_t>(text.size())) + text + std::string(1, '\0'); }

TEST(KeeperProtocol, WhatIsEncodedIsDecodedExactly) {
  Decoded d = decode(encode_spawn_payload("/bin/echo", "/tmp", {"echo", "", "two words", "=x"}, {"A=1", "PATH=/bin"}));
  ASSERT_EQ(d.error, 0);
  EXPECT_EQ(d.path, "/bin/echo");
  EXPECT_EQ(d.cwd, "/tmp");
  EXPECT_EQ(d.argv, (std::vector<std::string>{"echo", "", "two words", "=x"}));
  EXPECT_EQ(d.envp, (std::vector<std::string>{"A=1", "PATH=/bin"}));
}

TEST(KeeperProtocol, AStringWithANulCannotBeSentNorShiftAField) {
  // The old NUL-separated protocol turned this argument into an
  // environment entry.
  EXPECT_THROW(encode_spawn_payload("/usr/bin/env", "/", {"env", std::string("one\0INJECTED=1", 14)}, {"PATH=/bin"}),
               pymanager::Error);
  // A hand-made request that hides a NUL inside a field is refused.
  std::string payload = u32(2) + u32(1) + field("/usr/bin/env") + field("/") + field("env") +
                        u32(14) + std::string("one\0INJECTED=1", 14) + std::string(1, '\0') + field("PATH=/bin");
  EXPECT_EQ(decode(payload).error, EINVAL);
}

TEST(KeeperProtocol, MalformedRequestsAreRefused) {
  const std::string good = encode_spawn_payload("/bin/true", "/", {"true"}, {});
  ASSERT_EQ(decode(good).error, 0);
  // Every truncation of a valid request.
  for (std::size_t n = 0; n < good.size(); ++n) EXPECT_EQ(decode(good.substr(0, n)).error, EINVAL) << n;
  // Bytes left over.
  EXPECT_EQ(decode(good + "x").error, EINVAL);
  // A length that runs past the end, or to the last byte exactly.
  EXPECT_EQ(decode(u32(1) + u32(0) + u32(0xffffffffu) + "abc").error, EINVAL);
  EXPECT_EQ(decode(u32(1) + u32(0) + u32(3) + "abc").error, EINVAL);
  // A string whose terminator is not a NUL.
  EXPECT_EQ(decode(u32(1) + u32(0) + u32(1) + "ab" + field("/") + field("x")).error, EINVAL);
  // No argv[0], or more strings than there is room for.
  EXPECT_EQ(decode(u32(0) + u32(0) + field("/bin/true") + field("/")).error, E2BIG);
  EXPECT_EQ(decode(u32(0xfffffff0u) + u32(0x20u) + field("/bin/true") + field("/")).error, E2BIG);
  EXPECT_EQ(decode(good, 2).error, E2BIG);
}

}  // namespace
