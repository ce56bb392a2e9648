// The consumer's integration test: hello_service is up before it runs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "gtest_env/environment.hpp"
#include "pymanager/manager.hpp"

namespace {

/// What the service at 127.0.0.1:port says first.
std::string greeting(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    char buffer[64];
    ssize_t n;
    while ((n = ::read(fd, buffer, sizeof buffer)) > 0) out.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

TEST(Hello, TheServiceIsUpOnItsPort) {
  auto& env = pymanager::testing::environment();
  EXPECT_GT(env.port("hello"), 0);
  EXPECT_EQ(greeting(env.port("hello")), "hello\n");
}

TEST(Hello, ItIsListedAsReady) {
  auto info = pymanager::testing::environment().process("hello");
  EXPECT_TRUE(info.running);
  EXPECT_EQ(info.state, pymanager::ProcessState::ready);
}

TEST(Hello, TheKeeperIsTheSmallProgramFromPymanagersRunfiles) {
  // Found in this test's runfiles, under the external repository's folder:
  // not a fork of this test binary (see pymanager/detail/keeper_client.hpp).
  const int keeper = pymanager::testing::environment().manager().keeper_pid();
  char exe[4096] = {};
  ASSERT_GT(::readlink(("/proc/" + std::to_string(keeper) + "/exe").c_str(), exe, sizeof exe - 1), 0);
  const std::string path = exe;
  EXPECT_EQ(path.substr(path.rfind('/') + 1), "pymanager-keeper") << path;
}

}  // namespace
