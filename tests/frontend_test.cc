// The front-end steps (pymanager/frontend.hpp) that the binary and the
// GoogleTest environment share: a config file read with its ports, the
// messages that name the file, the API's token and the API itself.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "pymanager/pymanager.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using testutil::ScopedEnv;

/// One port, free now (neither bound nor reserved by another pymanager) and
/// outside the ephemeral range: whoever holds it, nobody else using these
/// options can get a port.
pymanager::PortOptions one_port() {
  pymanager::PortOptions options;
  const int ephemeral_low = pymanager::detail::ephemeral_port_range().first;
  std::mt19937 random(std::random_device{}());
  std::uniform_int_distribution<int> pick(10000, std::max(10001, ephemeral_low - 1));
  for (int attempt = 0; attempt < 100; ++attempt) {
    int port = pick(random);
    if (!pymanager::detail::tcp_port_is_free(port) || !pymanager::PortReservation::try_reserve(port)) continue;
    options.low = options.high = port;
    return options;
  }
  throw std::runtime_error("no free port found");
}

/// True when an allocator of its own can take the one port of `options` now.
bool port_is_available(const pymanager::PortOptions& options) {
  pymanager::PortAllocator other(options);
  try {
    return other.port("probe") == options.low;
  } catch (const pymanager::Error&) {
    return false;
  }
}

class LoadConfig : public ::testing::Test {
 protected:
  std::string write_config(const std::string& text) {
    std::string path = testutil::make_temp_dir() + "/cfg.json";
    testutil::write_file(path, text);
    return path;
  }
};

TEST_F(LoadConfig, PortPlaceholdersAreExpandedAndHeldByTheReturnedAllocator) {
  const pymanager::PortOptions options = one_port();
  const std::string path = write_config(R"({
    "modules": {"pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]}},
    "processes": {"web": {"executable": "server", "arguments": ["--port", "${port:web}"],
      "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier",
                   "arguments": {"url": "http://127.0.0.1:${port:web}/health"}}}}
  })");
  pymanager::LoadedConfig loaded = pymanager::load_config(path, pymanager::builtin_verifiers(), options);

  const std::string port = std::to_string(options.low);
  ASSERT_EQ(loaded.config.processes.size(), 1u);
  EXPECT_THAT(loaded.config.processes[0].arguments, ElementsAre("--port", port));
  EXPECT_EQ(loaded.config.processes[0].verifiers.at(0).arguments["url"], "http://127.0.0.1:" + port + "/health");
  EXPECT_EQ(loaded.source_name, path);
  ASSERT_NE(loaded.ports, nullptr);
  EXPECT_EQ(loaded.ports->find("web"), options.low);
  EXPECT_THAT(loaded.ports->environment(), ElementsAre("PYMANAGER_PORT_WEB=" + port));

  EXPECT_FALSE(port_is_available(options)) << "the port was handed out again while the config holds it";
  loaded.ports.reset();
  EXPECT_TRUE(port_is_available(options)) << "the port was not given back with the allocator";
}

TEST_F(LoadConfig, AnInvalidFileIsNamedInTheMessageAndItsPortsAreGivenBack) {
  const pymanager::PortOptions options = one_port();
  const std::string path = write_config(R"({
    "processes": {"web": {"executable": "server", "argument": ["${port:web}"]}}
  })");
  try {
    pymanager::load_config(path, pymanager::builtin_verifiers(), options);
    ADD_FAILURE() << "an unknown key was accepted";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::config_invalid);
    EXPECT_EQ(std::string(e.what()), path + ": processes.web.argument: unknown key (did you mean arguments?)");
  }
  EXPECT_TRUE(port_is_available(options)) << "a config that failed kept its port";
}

TEST_F(LoadConfig, AMalformedPlaceholderNamesTheFileAndTheJsonPath) {
  const std::string path = write_config(R"({"processes": {"web": {"executable": "server", "arguments": ["${port:}"]}}})");
  try {
    pymanager::load_config(path, pymanager::builtin_verifiers());
    ADD_FAILURE() << "${port:} was accepted";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), StartsWith(path + ": processes.web.arguments[0]: "));
  }
}

TEST_F(LoadConfig, FilesThatCannotBeReadKeepTheirMessagesAndExitCodes) {
  const std::string missing = testutil::make_temp_dir() + "/missing.json";
  try {
    pymanager::load_config(missing, pymanager::builtin_verifiers());
    ADD_FAILURE() << "a missing file was loaded";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(pymanager::exit_code_for(e.kind()), 1);
    EXPECT_EQ(std::string(e.what()), "config file not found: " + missing);
  }
  const std::string not_json = write_config("{\"processes\": ");
  try {
    pymanager::load_config(not_json, pymanager::builtin_verifiers());
    ADD_FAILURE() << "a truncated file was loaded";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(pymanager::exit_code_for(e.kind()), 3);
    EXPECT_THAT(e.what(), StartsWith(not_json + ": ")) << "named once, not twice";
    EXPECT_THAT(e.what(), ::testing::Not(StartsWith(not_json + ": " + not_json)));
  }
  const std::string empty = write_config(R"({"processes": {}})");
  try {
    pymanager::load_config(empty, pymanager::builtin_verifiers());
    ADD_FAILURE() << "a file without processes was loaded";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(pymanager::exit_code_for(e.kind()), 4);
    EXPECT_EQ(std::string(e.what()), empty + ": processes: no processes are configured");
  }
}

TEST_F(LoadConfig, WarningsAreNamedByTheFile) {
  const std::string path = write_config(R"({"keep-alive": true, "keep_alive": false,
    "processes": {"web": {"executable": "server", "arguments": []}}})");
  pymanager::LoadedConfig loaded = pymanager::load_config(path, pymanager::builtin_verifiers());
  EXPECT_THAT(loaded.warnings(),
              ElementsAre(path + ": warning: keep-alive is true but keep_alive is false: using keep_alive (false), "
                                 "the spelling the original reads"));
}

TEST(LoadConfigJson, MessagesAreNamedByTheSourceName) {
  auto json = nlohmann::ordered_json::parse(R"({"processes": {"web": {"executable": "", "arguments": []}}})");
  try {
    pymanager::load_config_json(json, "(inline config)", pymanager::builtin_verifiers());
    ADD_FAILURE() << "an empty executable was accepted";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), StartsWith("(inline config): processes.web.executable: "));
  }
  json["processes"]["web"]["executable"] = "server";
  json["processes"]["web"]["arguments"] = {"${port:api}"};
  pymanager::LoadedConfig loaded = pymanager::load_config_json(json, "mine", pymanager::builtin_verifiers());
  EXPECT_EQ(loaded.source_name, "mine");
  ASSERT_TRUE(loaded.ports->find("api").has_value());
  EXPECT_THAT(loaded.config.processes[0].arguments, ElementsAre(std::to_string(*loaded.ports->find("api"))));
}

TEST(ApiToken, TheConfigsTokenBeatsTheEnvironment) {
  ScopedEnv env("PYMANAGER_TOKEN", "from-env");
  pymanager::HttpSpec http;
  http.token = "from-config";
  http.host = "::1";
  http.port = 0;
  pymanager::ApiToken token = pymanager::api_token(http);
  EXPECT_EQ(token.value, "from-config");
  EXPECT_EQ(token.source, "config");
  std::vector<std::string> logged;
  pymanager::HttpApiOptions options =
      pymanager::http_api_options(http, [&](const std::string& line) { logged.push_back(line); });
  EXPECT_EQ(options.token, "from-config");
  EXPECT_EQ(options.host, "::1");
  EXPECT_EQ(options.port, 0);
  ASSERT_TRUE(options.log);
  options.log("hello");
  EXPECT_THAT(logged, ElementsAre("hello"));
}

TEST(ApiToken, TheEnvironmentIsUsedWhenTheConfigHasNone) {
  pymanager::HttpSpec http;
  {
    ScopedEnv env("PYMANAGER_TOKEN", "from-env");
    pymanager::ApiToken token = pymanager::api_token(http);
    EXPECT_EQ(token.value, "from-env");
    EXPECT_EQ(token.source, "environment");
    EXPECT_EQ(pymanager::http_api_options(http, nullptr).token, "from-env");
  }
  for (const std::optional<std::string>& value : {std::optional<std::string>(""), std::optional<std::string>()}) {
    ScopedEnv env("PYMANAGER_TOKEN", value);
    pymanager::ApiToken token = pymanager::api_token(http);
    EXPECT_EQ(token.value, std::nullopt) << "PYMANAGER_TOKEN " << (value ? "empty" : "unset");
    EXPECT_EQ(token.source, "");
    EXPECT_EQ(pymanager::http_api_options(http, nullptr).token, std::nullopt);
  }
}

/// A Manager that is never started: the API is bound before any launch.
std::unique_ptr<pymanager::Manager> idle_manager(const pymanager::Config& config) {
  pymanager::ManagerOptions options;
  options.log = [](const std::string&) {};
  return std::make_unique<pymanager::Manager>(config, options);
}

TEST(StartHttpApi, NothingIsServedWhenTheConfigDoesNotEnableIt) {
  auto json = nlohmann::ordered_json::parse(R"({"processes": {"web": {"executable": "true", "arguments": []}}})");
  pymanager::Config config = pymanager::parse_config(json, pymanager::builtin_verifiers());
  auto manager = idle_manager(config);
  EXPECT_EQ(pymanager::start_http_api(*manager, config.http, nullptr), nullptr);
}

TEST(StartHttpApi, ServesWithTheConfigsTokenOnTheAddressItNames) {
  ScopedEnv env("PYMANAGER_TOKEN", "from-env");
  auto json = nlohmann::ordered_json::parse(R"({"http": {"enabled": true, "port": 0, "token": "s3cret"},
    "processes": {"web": {"executable": "true", "arguments": []}}})");
  pymanager::Config config = pymanager::parse_config(json, pymanager::builtin_verifiers());
  auto manager = idle_manager(config);
  std::vector<std::string> logged;
  auto api = pymanager::start_http_api(*manager, config.http, [&](const std::string& line) { logged.push_back(line); });
  ASSERT_NE(api, nullptr);
  EXPECT_THAT(api->url(), StartsWith("http://127.0.0.1:"));
  httplib::Client client(api->url());
  client.set_connection_timeout(std::chrono::seconds(5));
  client.set_read_timeout(std::chrono::seconds(10));
  auto without = client.Get("/status");
  ASSERT_TRUE(without);
  EXPECT_EQ(without->status, 401);
  auto env_token = client.Get("/status", {{"Authorization", "Bearer from-env"}});
  ASSERT_TRUE(env_token);
  EXPECT_EQ(env_token->status, 401) << "the config's token comes first";
  auto with = client.Get("/status", {{"Authorization", "Bearer s3cret"}});
  ASSERT_TRUE(with);
  EXPECT_EQ(with->status, 200) << with->body;
  api->stop();
}

TEST(StartHttpApi, APortInUseIsAnErrorNamingTheAddress) {
  testutil::Listener busy;
  auto json = nlohmann::ordered_json::parse(R"({"http": {"enabled": true, "port": )" + std::to_string(busy.port()) +
                                            R"(}, "processes": {"web": {"executable": "true", "arguments": []}}})");
  pymanager::Config config = pymanager::parse_config(json, pymanager::builtin_verifiers());
  auto manager = idle_manager(config);
  try {
    pymanager::start_http_api(*manager, config.http, nullptr);
    ADD_FAILURE() << "the API bound a port in use";
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), pymanager::ErrorKind::system);
    EXPECT_THAT(e.what(), HasSubstr("127.0.0.1:" + std::to_string(busy.port())));
  }
}

TEST(AbsolutePath, RelativePathsAreTakenFromTheBaseOrTheCurrentDirectory) {
  EXPECT_EQ(pymanager::absolute_path("/etc/hosts"), "/etc/hosts");
  EXPECT_EQ(pymanager::absolute_path("/etc/hosts", "/base"), "/etc/hosts");
  EXPECT_EQ(pymanager::absolute_path("out.log", "/base"), "/base/out.log");
  EXPECT_EQ(pymanager::absolute_path("out.log", "/base/"), "/base/out.log");
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof cwd), nullptr);
  EXPECT_EQ(pymanager::current_directory(), cwd);
  EXPECT_EQ(pymanager::absolute_path("a/b.json"), std::string(cwd) + "/a/b.json");
}

}  // namespace
