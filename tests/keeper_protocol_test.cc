// The keeper's spawn request: length-prefixed, so that no content can shift
// a field. Hostile payloads are refused, never read past their end. And the
// other bytes the keeper decodes: a daemon's environment (the owner marker),
// the list of its children, and its table of children by pid.
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "pymanager/detail/keeper.hpp"

namespace {

using pymanager::detail::encode_spawn_payload;
using pymanager::detail::KeeperChild;
using pymanager::detail::KeeperChildMap;
using pymanager::detail::KeeperOwnerMatcher;
using pymanager::detail::kKeeperMaxIds;
using pymanager::detail::kKeeperNoOwner;
using pymanager::detail::keeper_next_pid;
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

const std::string kToken = "0123456789abcdef";

/// The owner found in `environment` (entries separated by NUL), fed in
/// pieces of `piece` bytes.
std::uint32_t owner_in(const std::string& environment, std::size_t piece = 4096, const std::string& token = kToken) {
  KeeperOwnerMatcher matcher(token.data(), token.size());
  for (std::size_t i = 0; i < environment.size() && !matcher.found(); i += piece) {
    matcher.feed(environment.data() + i, std::min(piece, environment.size() - i));
  }
  return matcher.finish();
}

std::string environment(const std::vector<std::string>& entries) {
  std::string block;
  for (const auto& e : entries) block += e + std::string(1, '\0');
  return block;
}

TEST(KeeperOwner, TheMarkerWithOurTokenGivesTheId) {
  EXPECT_EQ(owner_in(environment({"PATH=/bin", "PYMANAGER_OWNER=0123456789abcdef:42", "HOME=/"})), 42u);
  EXPECT_EQ(owner_in(environment({"PYMANAGER_OWNER=0123456789abcdef:0"})), 0u);
  EXPECT_EQ(owner_in(environment({"PYMANAGER_OWNER=0123456789abcdef:4194303"})), kKeeperMaxIds - 1);
  // The last entry need not end with a NUL.
  EXPECT_EQ(owner_in("A=1" + std::string(1, '\0') + "PYMANAGER_OWNER=0123456789abcdef:7"), 7u);
  // The first valid one wins.
  EXPECT_EQ(owner_in(environment({"PYMANAGER_OWNER=0123456789abcdef:x", "PYMANAGER_OWNER=0123456789abcdef:8",
                                  "PYMANAGER_OWNER=0123456789abcdef:9"})),
            8u);
}

TEST(KeeperOwner, EveryWayToSplitTheBlockGivesTheSameId) {
  const std::string block = environment({"LONG=" + std::string(5000, 'x'), "PYMANAGER_OWNER_X=1",
                                         "PYMANAGER_OWNER=0123456789abcdef:1234", "Z=2"});
  for (std::size_t piece : {1, 2, 3, 7, 16, 17, 4096, 100000}) EXPECT_EQ(owner_in(block, piece), 1234u) << piece;
}

TEST(KeeperOwner, NoMarkerAnotherTokenOrABadIdGiveNoOwner) {
  EXPECT_EQ(owner_in(""), kKeeperNoOwner);  // env -i
  EXPECT_EQ(owner_in(environment({"PATH=/bin"})), kKeeperNoOwner);
  EXPECT_EQ(owner_in(environment({"PYMANAGER_OWNER=fedcba9876543210:3"})), kKeeperNoOwner);
  for (const char* bad : {"PYMANAGER_OWNER=0123456789abcdef:", "PYMANAGER_OWNER=0123456789abcdef:4194304",
                          "PYMANAGER_OWNER=0123456789abcdef:123456789", "PYMANAGER_OWNER=0123456789abcdef:-1",
                          "PYMANAGER_OWNER=0123456789abcdef:1 ", "PYMANAGER_OWNER=0123456789abcdef3",
                          "PYMANAGER_OWNER=0123456789abcde:3", "XPYMANAGER_OWNER=0123456789abcdef:3",
                          "pymanager_owner=0123456789abcdef:3", "PYMANAGER_OWNER 0123456789abcdef:3"}) {
    EXPECT_EQ(owner_in(environment({bad})), kKeeperNoOwner) << bad;
  }
  // A marker split by a NUL is two entries, neither of them a marker.
  EXPECT_EQ(owner_in(environment({"PYMANAGER_OWNER=0123456789abcdef", ":3"})), kKeeperNoOwner);
  // A keeper without a token attributes nothing.
  EXPECT_EQ(owner_in(environment({"PYMANAGER_OWNER=:3"}), 4096, ""), kKeeperNoOwner);
}

std::vector<pid_t> pids_in(const std::string& text) {
  std::vector<pid_t> out;
  const char* p = text.data();
  pid_t pid;
  while (keeper_next_pid(p, text.data() + text.size(), pid)) out.push_back(pid);
  return out;
}

TEST(KeeperChildrenList, PidsAreReadAndNonsenseSkipped) {
  EXPECT_EQ(pids_in("12 345 6789 "), (std::vector<pid_t>{12, 345, 6789}));
  EXPECT_EQ(pids_in(""), std::vector<pid_t>{});
  EXPECT_EQ(pids_in("   \n"), std::vector<pid_t>{});
  EXPECT_EQ(pids_in("7"), std::vector<pid_t>{7});  // cut at the end of the buffer
  EXPECT_EQ(pids_in("0 1234567890 5 x9"), (std::vector<pid_t>{5, 9}));
}

TEST(KeeperChildMap, BehavesAsAMapThroughGrowthAndDeletions) {
  KeeperChildMap map;
  std::map<pid_t, std::uint32_t> reference;
  std::mt19937 random(12345);
  // Pids in a narrow range, so that probe chains collide and deletions
  // shift entries back across the end of the table.
  std::uniform_int_distribution<pid_t> pid_of(1, 5000);
  for (int step = 0; step < 200000; ++step) {
    pid_t pid = pid_of(random);
    KeeperChild* found = map.find(pid);
    auto it = reference.find(pid);
    ASSERT_EQ(found != nullptr, it != reference.end()) << "step " << step << " pid " << pid;
    if (found != nullptr) {
      ASSERT_EQ(found->id, it->second);
      if (random() % 2 == 0) {
        map.erase(found);
        reference.erase(it);
      }
    } else {
      ASSERT_TRUE(map.reserve_one());
      map.insert(KeeperChild{pid, static_cast<std::uint32_t>(step), 0});
      reference[pid] = static_cast<std::uint32_t>(step);
    }
    ASSERT_EQ(map.size, reference.size());
  }
  for (const auto& [pid, id] : reference) {
    ASSERT_NE(map.find(pid), nullptr) << pid;
    EXPECT_EQ(map.find(pid)->id, id);
  }
  EXPECT_EQ(map.find(0), nullptr);
  EXPECT_EQ(map.find(-1), nullptr);
}

}  // namespace
