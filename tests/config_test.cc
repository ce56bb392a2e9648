// Unit tests of the config parser: parse_config and load_config_file, and
// how options.environment reaches a child (make_launch_plan).
//
// Each failure case checks what a user would look at: the error kind (which
// decides the exit code) and that the message names the JSON path of the
// bad value, in the form `<path>: <problem>`.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pymanager/config.hpp"
#include "pymanager/error.hpp"
#include "pymanager/ports.hpp"
#include "pymanager/process.hpp"
#include "pymanager/signals.hpp"
#include "pymanager/verifier.hpp"
#include "pymanager/verifiers/builtin.hpp"
#include "pymanager/verifiers/exited_verifier.hpp"
#include "pymanager/verifiers/http_verifier.hpp"

namespace {

using pymanager::Config;
using pymanager::Error;
using pymanager::ErrorKind;
using pymanager::VerifierRegistry;
using Json = nlohmann::ordered_json;

constexpr const char* kHttpOk = "pymutils.http_verifier.HttpOkVerifier";
constexpr const char* kExited = "pymutils.exited_verifier.ExitedVerifier";

// The example configuration of the seed README, verbatim.
constexpr const char* kSeedReadmeExample = R"({
  "modules": {
    "pymutils.http_verifier": {
      "verifiers": ["HttpOkVerifier"]
    }
  },
  "http": {
    "enabled": true,
    "port": 5001
  },
  "keep-alive": true,
  "processes": {
    "test": {
      "executable": "python3",
      "arguments": ["test.py", "-v", "-t"],
      "options": {
        "suppress_output": false
      },
      "verifier": {
        "type": "pymutils.http_verifier.HttpOkVerifier",
        "arguments": {
          "url": "http://google.com"
        }
      }
    }
  }
})";

const char* kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::config_not_found: return "config_not_found";
    case ErrorKind::config_unreadable: return "config_unreadable";
    case ErrorKind::config_not_json: return "config_not_json";
    case ErrorKind::config_no_processes: return "config_no_processes";
    case ErrorKind::config_invalid: return "config_invalid";
    case ErrorKind::spawn_failed: return "spawn_failed";
    case ErrorKind::verify_failed: return "verify_failed";
    case ErrorKind::not_found: return "not_found";
    case ErrorKind::invalid_argument: return "invalid_argument";
    case ErrorKind::shutting_down: return "shutting_down";
    case ErrorKind::conflict: return "conflict";
    case ErrorKind::system: return "system";
  }
  return "?";
}

const VerifierRegistry& builtins() {
  static const VerifierRegistry registry = pymanager::builtin_verifiers();
  return registry;
}

Json parse_json(const char* text) { return Json::parse(text); }

// A valid process, to be modified by each test.
Json web_process() { return parse_json(R"({"executable": "/bin/echo", "arguments": ["hello", "world"]})"); }

// A config holding `process` as "web".
Json config_with(Json process) {
  Json config = Json::object();
  config["processes"]["web"] = std::move(process);
  return config;
}

// A config that lists both built-in verifiers under modules and gives "web"
// the verifier {"type": type, "arguments": arguments}.
Json config_with_verifier(const std::string& type, const Json& arguments) {
  Json config = parse_json(R"({"modules": {
      "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]},
      "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}}})");
  Json process = web_process();
  process["verifier"]["type"] = type;
  process["verifier"]["arguments"] = arguments;
  config["processes"]["web"] = std::move(process);
  return config;
}

// What parse_config threw, if anything.
struct Outcome {
  bool threw = false;
  ErrorKind kind = ErrorKind::system;
  std::string message;
};

Outcome try_parse(const Json& json, const VerifierRegistry& registry = builtins()) {
  Outcome outcome;
  try {
    pymanager::parse_config(json, registry);
  } catch (const Error& e) {
    outcome.threw = true;
    outcome.kind = e.kind();
    outcome.message = e.what();
  }
  return outcome;
}

::testing::AssertionResult has_kind(const Outcome& outcome, ErrorKind kind) {
  if (!outcome.threw) return ::testing::AssertionFailure() << "no pymanager::Error was thrown";
  if (outcome.kind != kind) {
    return ::testing::AssertionFailure() << "kind " << kind_name(outcome.kind) << ", expected " << kind_name(kind)
                                         << " (message: " << outcome.message << ")";
  }
  return ::testing::AssertionSuccess();
}

// parse_config throws `kind` with exactly `message`.
::testing::AssertionResult FailsWith(const Json& json, ErrorKind kind, const std::string& message,
                                     const VerifierRegistry& registry = builtins()) {
  Outcome outcome = try_parse(json, registry);
  if (auto result = has_kind(outcome, kind); !result) return result;
  if (outcome.message != message) {
    return ::testing::AssertionFailure() << "message\n  \"" << outcome.message << "\"\nexpected\n  \"" << message
                                         << "\"";
  }
  return ::testing::AssertionSuccess();
}

// parse_config throws config_invalid with a message that starts with
// "<path>: " and contains every one of `fragments`.
::testing::AssertionResult FailsAt(const Json& json, const std::string& path,
                                   std::initializer_list<std::string> fragments = {},
                                   const VerifierRegistry& registry = builtins()) {
  Outcome outcome = try_parse(json, registry);
  if (auto result = has_kind(outcome, ErrorKind::config_invalid); !result) return result;
  if (outcome.message.rfind(path + ": ", 0) != 0) {
    return ::testing::AssertionFailure() << "message \"" << outcome.message << "\" does not start with \"" << path
                                         << ": \"";
  }
  for (const auto& fragment : fragments) {
    if (outcome.message.find(fragment) == std::string::npos) {
      return ::testing::AssertionFailure() << "message \"" << outcome.message << "\" lacks \"" << fragment << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---------------------------------------------------------------------------
// Valid configs and defaults

TEST(ConfigParse, SeedReadmeExampleParses) {
  Config config = pymanager::parse_config(parse_json(kSeedReadmeExample), builtins());

  ASSERT_EQ(config.modules.size(), 1u);
  EXPECT_EQ(config.modules.at("pymutils.http_verifier"), std::vector<std::string>{"HttpOkVerifier"});
  EXPECT_TRUE(config.http.enabled);
  EXPECT_EQ(config.http.port, 5001);
  EXPECT_TRUE(config.keep_alive);
  EXPECT_DOUBLE_EQ(config.graceful_time, 10.0);

  ASSERT_EQ(config.processes.size(), 1u);
  const auto& test = config.processes[0];
  EXPECT_EQ(test.name, "test");
  EXPECT_EQ(test.executable, "python3");
  EXPECT_EQ(test.arguments, (std::vector<std::string>{"test.py", "-v", "-t"}));
  EXPECT_FALSE(test.suppress_output);
  EXPECT_FALSE(test.redirect_output.has_value());
  EXPECT_TRUE(test.shell.empty());

  ASSERT_FALSE(test.verifiers.empty());
  EXPECT_EQ(test.verifiers.at(0).type, kHttpOk);
  EXPECT_EQ(test.verifiers.at(0).arguments, nlohmann::json({{"url", "http://google.com"}}));
  ASSERT_NE(test.verifiers.at(0).verifier, nullptr);
  auto http = std::dynamic_pointer_cast<const pymanager::HttpOkVerifier>(test.verifiers.at(0).verifier);
  ASSERT_NE(http, nullptr);
  EXPECT_EQ(http->url(), "http://google.com");
  EXPECT_FALSE(http->expects_exit());
}

TEST(ConfigParse, DefaultsOfAMinimalConfig) {
  Config config = pymanager::parse_config(config_with(web_process()), builtins());

  EXPECT_TRUE(config.modules.empty());
  EXPECT_FALSE(config.http.enabled);
  EXPECT_EQ(config.http.port, 5001);
  EXPECT_FALSE(config.keep_alive);
  EXPECT_DOUBLE_EQ(config.graceful_time, 10.0);
  EXPECT_EQ(config.default_shell, "/bin/sh");
  EXPECT_FALSE(config.messages.process_exit);
  EXPECT_FALSE(config.messages.verifier_fail);
  EXPECT_FALSE(config.messages.verifier_verbose);
  EXPECT_TRUE(config.base_directory.empty());

  ASSERT_EQ(config.processes.size(), 1u);
  const auto& web = config.processes[0];
  EXPECT_EQ(web.name, "web");
  EXPECT_EQ(web.executable, "/bin/echo");
  EXPECT_EQ(web.arguments, (std::vector<std::string>{"hello", "world"}));
  EXPECT_FALSE(web.suppress_output);
  EXPECT_FALSE(web.redirect_output.has_value());
  EXPECT_FALSE(web.working_directory.has_value());
  EXPECT_FALSE(web.environment_file.has_value());
  EXPECT_TRUE(web.shell.empty());
  EXPECT_TRUE(web.verifiers.empty());
}

TEST(ConfigParse, HttpSectionWithoutPortKeepsDefaultPort) {
  Config config = pymanager::parse_config(
      parse_json(R"({"http": {"enabled": true}, "processes": {"a": {"executable": "x", "arguments": []}}})"),
      builtins());
  EXPECT_TRUE(config.http.enabled);
  EXPECT_EQ(config.http.port, 5001);

  config = pymanager::parse_config(
      parse_json(R"({"http": {"port": 8080}, "processes": {"a": {"executable": "x", "arguments": []}}})"), builtins());
  EXPECT_FALSE(config.http.enabled);
  EXPECT_EQ(config.http.port, 8080);
}

TEST(ConfigParse, EmptyArgumentsAreAllowed) {
  Json process = web_process();
  process["arguments"] = Json::array();
  Config config = pymanager::parse_config(config_with(process), builtins());
  ASSERT_EQ(config.processes.size(), 1u);
  EXPECT_TRUE(config.processes[0].arguments.empty());
}

TEST(ConfigParse, ProcessesKeepTheOrderOfTheFile) {
  Config config = pymanager::parse_config(parse_json(R"({"processes": {
      "zeta": {"executable": "z", "arguments": []},
      "alpha": {"executable": "a", "arguments": []},
      "mid": {"executable": "m", "arguments": []}}})"),
                                          builtins());
  ASSERT_EQ(config.processes.size(), 3u);
  EXPECT_EQ(config.processes[0].name, "zeta");
  EXPECT_EQ(config.processes[1].name, "alpha");
  EXPECT_EQ(config.processes[2].name, "mid");
  EXPECT_EQ(config.processes[0].executable, "z");
  EXPECT_EQ(config.processes[1].executable, "a");
  EXPECT_EQ(config.processes[2].executable, "m");
  EXPECT_EQ(config.index_of("zeta"), 0);
  EXPECT_EQ(config.index_of("alpha"), 1);
  EXPECT_EQ(config.index_of("mid"), 2);
  EXPECT_EQ(config.index_of("nope"), -1);
}

TEST(ConfigParse, AllOptionsAreRead) {
  Json process = web_process();
  process["options"] = parse_json(R"({"suppress_output": false, "redirect_output": "out.log",
      "working_directory": "srv", "environment_file": ".env"})");
  Config config = pymanager::parse_config(config_with(process), builtins());
  const auto& web = config.processes.at(0);
  EXPECT_FALSE(web.suppress_output);
  EXPECT_EQ(web.redirect_output, std::optional<std::string>("out.log"));
  EXPECT_EQ(web.working_directory, std::optional<std::string>("srv"));
  EXPECT_EQ(web.environment_file, std::optional<std::string>(".env"));

  process["options"] = parse_json(R"({"suppress_output": true})");
  config = pymanager::parse_config(config_with(process), builtins());
  EXPECT_TRUE(config.processes.at(0).suppress_output);
  EXPECT_FALSE(config.processes.at(0).redirect_output.has_value());

  process["options"] = Json::object();
  config = pymanager::parse_config(config_with(process), builtins());
  EXPECT_FALSE(config.processes.at(0).suppress_output);
}

// ---------------------------------------------------------------------------
// keep-alive / keep_alive and graceful-time / graceful_time

TEST(ConfigKeepAlive, BothSpellingsAreAccepted) {
  for (const char* key : {"keep-alive", "keep_alive"}) {
    SCOPED_TRACE(key);
    Json config = config_with(web_process());
    config[key] = true;
    EXPECT_TRUE(pymanager::parse_config(config, builtins()).keep_alive);
    config[key] = false;
    EXPECT_FALSE(pymanager::parse_config(config, builtins()).keep_alive);
  }
}

// Careful users give both spellings: the original's README documents the
// hyphen, the original reads the underscore. Such a file runs there, so it
// runs here, with the underscore's value.
TEST(ConfigKeepAlive, BothSpellingsWithTheSameValueAreAcceptedSilently) {
  for (bool value : {true, false}) {
    Json config = config_with(web_process());
    config["keep-alive"] = value;
    config["keep_alive"] = value;
    Config parsed = pymanager::parse_config(config, builtins());
    EXPECT_EQ(parsed.keep_alive, value);
    EXPECT_TRUE(parsed.warnings.empty()) << parsed.warnings.front();
  }
}

TEST(ConfigKeepAlive, BothSpellingsWithDifferentValuesTakeTheUnderscoreOneWithAWarning) {
  Json config = config_with(web_process());
  config["keep-alive"] = true;
  config["keep_alive"] = false;
  Config parsed = pymanager::parse_config(config, builtins());
  EXPECT_FALSE(parsed.keep_alive);
  ASSERT_EQ(parsed.warnings.size(), 1u);
  EXPECT_EQ(parsed.warnings[0],
            "keep-alive is true but keep_alive is false: using keep_alive (false), the spelling the original reads");
  // The order in the file does not matter: the underscore spelling wins.
  Json reversed = config_with(web_process());
  reversed["keep_alive"] = true;
  reversed["keep-alive"] = false;
  parsed = pymanager::parse_config(reversed, builtins());
  EXPECT_TRUE(parsed.keep_alive);
  ASSERT_EQ(parsed.warnings.size(), 1u);
  EXPECT_NE(parsed.warnings[0].find("using keep_alive (true)"), std::string::npos) << parsed.warnings[0];
}

TEST(ConfigKeepAlive, EachSpellingIsCheckedEvenWhenTheOtherWins) {
  Json config = config_with(web_process());
  config["keep-alive"] = "yes";
  config["keep_alive"] = true;
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "keep-alive: expected true or false, got a string"));
}

TEST(ConfigKeepAlive, NotABooleanIsAnError) {
  Json config = config_with(web_process());
  config["keep_alive"] = "yes";
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "keep_alive: expected true or false, got a string"));
  config.erase("keep_alive");
  config["keep-alive"] = 1;
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "keep-alive: expected true or false, got 1"));
}

TEST(ConfigGracefulTime, BothSpellingsAreAccepted) {
  for (const char* key : {"graceful-time", "graceful_time"}) {
    SCOPED_TRACE(key);
    Json config = config_with(web_process());
    config[key] = 3;
    EXPECT_DOUBLE_EQ(pymanager::parse_config(config, builtins()).graceful_time, 3.0);
    config[key] = 2.5;
    EXPECT_DOUBLE_EQ(pymanager::parse_config(config, builtins()).graceful_time, 2.5);
    config[key] = 0;
    EXPECT_DOUBLE_EQ(pymanager::parse_config(config, builtins()).graceful_time, 0.0);
  }
}

TEST(ConfigGracefulTime, BothSpellingsWithTheSameValueAreAcceptedSilently) {
  Json config = config_with(web_process());
  config["graceful-time"] = 5;
  config["graceful_time"] = 5.0;
  config["restart-graceful-time"] = 2;
  config["restart_graceful_time"] = 2;
  Config parsed = pymanager::parse_config(config, builtins());
  EXPECT_DOUBLE_EQ(parsed.graceful_time, 5.0);
  EXPECT_DOUBLE_EQ(parsed.restart_graceful_time, 2.0);
  EXPECT_TRUE(parsed.warnings.empty()) << parsed.warnings.front();
}

TEST(ConfigGracefulTime, BothSpellingsWithDifferentValuesTakeTheUnderscoreOneWithAWarning) {
  Json config = config_with(web_process());
  config["graceful_time"] = 3;
  config["graceful-time"] = 7.5;
  config["restart-graceful-time"] = 1;
  config["restart_graceful_time"] = 0.5;
  Config parsed = pymanager::parse_config(config, builtins());
  EXPECT_DOUBLE_EQ(parsed.graceful_time, 3.0);
  EXPECT_DOUBLE_EQ(parsed.restart_graceful_time, 0.5);
  ASSERT_EQ(parsed.warnings.size(), 2u);
  EXPECT_EQ(parsed.warnings[0],
            "graceful-time is 7.5 but graceful_time is 3: using graceful_time (3), the spelling the original reads");
  EXPECT_EQ(parsed.warnings[1],
            "restart-graceful-time is 1 but restart_graceful_time is 0.5: using restart_graceful_time (0.5), the "
            "spelling the original reads");
}

TEST(ConfigGracefulTime, EachSpellingIsCheckedEvenWhenTheOtherWins) {
  Json config = config_with(web_process());
  config["graceful-time"] = -1;
  config["graceful_time"] = 5;
  EXPECT_TRUE(FailsAt(config, "graceful-time", {"must be at least 0", "-1"}));
  config.erase("graceful-time");
  config["restart-graceful-time"] = "soon";
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "restart-graceful-time: expected a number, got a string"));
}

TEST(ConfigGracefulTime, NegativeIsAnError) {
  Json config = config_with(web_process());
  config["graceful_time"] = -1;
  EXPECT_TRUE(FailsAt(config, "graceful_time", {"must be at least 0", "-1"}));
  config.erase("graceful_time");
  config["graceful-time"] = -0.5;
  EXPECT_TRUE(FailsAt(config, "graceful-time", {"must be at least 0", "-0.5"}));
}

TEST(ConfigGracefulTime, NotANumberIsAnError) {
  Json config = config_with(web_process());
  config["graceful-time"] = "10";
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "graceful-time: expected a number, got a string"));
}

// ---------------------------------------------------------------------------
// messages

TEST(ConfigMessages, ProcessExit) {
  Json config = config_with(web_process());
  config["messages"] = {"process.exit"};
  auto messages = pymanager::parse_config(config, builtins()).messages;
  EXPECT_TRUE(messages.process_exit);
  EXPECT_FALSE(messages.verifier_fail);
  EXPECT_FALSE(messages.verifier_verbose);
}

TEST(ConfigMessages, VerifierFail) {
  Json config = config_with(web_process());
  config["messages"] = {"verifier.fail"};
  auto messages = pymanager::parse_config(config, builtins()).messages;
  EXPECT_FALSE(messages.process_exit);
  EXPECT_TRUE(messages.verifier_fail);
  EXPECT_FALSE(messages.verifier_verbose);
}

TEST(ConfigMessages, VerifierVerboseImpliesFail) {
  Json config = config_with(web_process());
  config["messages"] = {"verifier.verbose"};
  auto messages = pymanager::parse_config(config, builtins()).messages;
  EXPECT_FALSE(messages.process_exit);
  EXPECT_TRUE(messages.verifier_fail);
  EXPECT_TRUE(messages.verifier_verbose);
}

TEST(ConfigMessages, AllAtOnceAndEmptyList) {
  Json config = config_with(web_process());
  config["messages"] = {"verifier.verbose", "process.exit", "verifier.fail"};
  auto messages = pymanager::parse_config(config, builtins()).messages;
  EXPECT_TRUE(messages.process_exit);
  EXPECT_TRUE(messages.verifier_fail);
  EXPECT_TRUE(messages.verifier_verbose);

  config["messages"] = Json::array();
  messages = pymanager::parse_config(config, builtins()).messages;
  EXPECT_FALSE(messages.process_exit);
  EXPECT_FALSE(messages.verifier_fail);
  EXPECT_FALSE(messages.verifier_verbose);
}

TEST(ConfigMessages, MisspelledTypeGetsASuggestion) {
  Json config = config_with(web_process());
  config["messages"] = {"verifier.fail", "process.exti"};
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "messages[1]: unknown message type 'process.exti' (did you mean process.exit?)"));
}

TEST(ConfigMessages, UnrelatedTypeListsTheKnownOnes) {
  Json config = config_with(web_process());
  config["messages"] = {"debug"};
  EXPECT_TRUE(FailsAt(config, "messages[0]",
                      {"unknown message type 'debug'", "process.exit", "verifier.fail", "verifier.verbose"}));
  EXPECT_FALSE(contains(try_parse(config).message, "did you mean"));
}

TEST(ConfigMessages, WrongTypes) {
  Json config = config_with(web_process());
  config["messages"] = "process.exit";
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "messages: expected a list of strings, got a string"));
  config["messages"] = Json::array({"process.exit", 3});
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "messages[1]: expected a string, got 3"));
}

// ---------------------------------------------------------------------------
// http and default_shell

TEST(ConfigHttp, PortNotAnIntegerIsAnError) {
  Json config = config_with(web_process());
  config["http"] = parse_json(R"({"enabled": true, "port": "5001"})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "http.port: expected an integer, got a string"));
  config["http"]["port"] = 5001.5;
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "http.port: expected an integer, got 5001.5"));
}

TEST(ConfigHttp, PortOutOfRangeIsAnError) {
  Json config = config_with(web_process());
  config["http"] = parse_json(R"({"enabled": true, "port": 70000})");
  EXPECT_TRUE(FailsAt(config, "http.port", {"65535", "70000"}));
  config["http"]["port"] = -1;
  EXPECT_TRUE(FailsAt(config, "http.port", {"65535", "-1"}));
}

TEST(ConfigHttp, OtherMistakes) {
  Json config = config_with(web_process());
  config["http"] = true;
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "http: expected an object, got true"));
  config["http"] = parse_json(R"({"enabled": "true"})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "http.enabled: expected true or false, got a string"));
  config["http"] = parse_json(R"({"enabled": true, "prot": 5002})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "http.prot: unknown key (did you mean port?)"));
}

TEST(ConfigDefaultShell, CustomAndInvalid) {
  Json config = config_with(web_process());
  config["default_shell"] = "/bin/bash";
  EXPECT_EQ(pymanager::parse_config(config, builtins()).default_shell, "/bin/bash");
  config["default_shell"] = "";
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "default_shell: must not be empty"));
  config["default_shell"] = true;
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "default_shell: expected a string, got true"));
}

// ---------------------------------------------------------------------------
// options.shell

TEST(ConfigShell, TrueUsesTheDefaultShell) {
  Json process = web_process();
  process["options"]["shell"] = true;
  Json config = config_with(process);
  EXPECT_EQ(pymanager::parse_config(config, builtins()).processes.at(0).shell, "/bin/sh");
}

TEST(ConfigShell, TrueUsesACustomDefaultShell) {
  Json process = web_process();
  process["options"]["shell"] = true;
  Json config = config_with(process);
  // Written after the processes on purpose: the order of keys in the file must not matter.
  config["default_shell"] = "/bin/bash";
  EXPECT_EQ(pymanager::parse_config(config, builtins()).processes.at(0).shell, "/bin/bash");
}

TEST(ConfigShell, AStringIsThatShell) {
  Json process = web_process();
  process["options"]["shell"] = "/usr/bin/zsh";
  Config config = pymanager::parse_config(config_with(process), builtins());
  EXPECT_EQ(config.processes.at(0).shell, "/usr/bin/zsh");
  EXPECT_EQ(config.default_shell, "/bin/sh");
}

TEST(ConfigShell, FalseIsNoShell) {
  Json process = web_process();
  process["options"]["shell"] = false;
  EXPECT_TRUE(pymanager::parse_config(config_with(process), builtins()).processes.at(0).shell.empty());
}

TEST(ConfigShell, ANumberOrAnEmptyStringIsAnError) {
  Json process = web_process();
  process["options"]["shell"] = 1;
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.options.shell: expected true, false or the path of a shell, got 1"));
  process["options"]["shell"] = "";
  EXPECT_TRUE(FailsAt(config_with(process), "processes.web.options.shell", {"got a string"}));
}

// ---------------------------------------------------------------------------
// Errors in a process

TEST(ConfigProcessErrors, ArgumentNotAString) {
  Json process = web_process();
  process["arguments"] = Json::array({"--port", 5});
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.arguments[1]: expected a string, got 5"));
}

TEST(ConfigProcessErrors, ArgumentsNotAList) {
  Json process = web_process();
  process["arguments"] = "--port 5";
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.arguments: expected a list of strings, got a string"));
}

TEST(ConfigProcessErrors, ExecutableNotAString) {
  Json process = web_process();
  process["executable"] = Json::array({"/bin/echo"});
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.executable: expected a string, got an array"));
  process["executable"] = nullptr;
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.executable: expected a string, got null"));
}

TEST(ConfigProcessErrors, MissingExecutable) {
  Json process = web_process();
  process.erase("executable");
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.executable: required key is missing"));
}

TEST(ConfigProcessErrors, EmptyExecutable) {
  Json process = web_process();
  process["executable"] = "";
  EXPECT_TRUE(
      FailsWith(config_with(process), ErrorKind::config_invalid, "processes.web.executable: must not be empty"));
}

TEST(ConfigProcessErrors, MissingArguments) {
  Json process = web_process();
  process.erase("arguments");
  EXPECT_TRUE(FailsAt(config_with(process), "processes.web.arguments", {"required key is missing", "[]"}));
}

TEST(ConfigProcessErrors, MisspelledRequiredKeyIsNamed) {
  // A typo in a required key names the typo, not just the missing key.
  Json process = parse_json(R"({"executabel": "/bin/echo", "arguments": []})");
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.executabel: unknown key (did you mean executable?)"));
  process = parse_json(R"({"executable": "/bin/echo", "argument": []})");
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.argument: unknown key (did you mean arguments?)"));
}

TEST(ConfigVerifier, MisspelledRequiredKeyIsNamed) {
  Json config = config_with_verifier(kExited, Json::object());
  config["processes"]["web"]["verifier"].erase("type");
  config["processes"]["web"]["verifier"]["typ"] = kExited;
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "processes.web.verifier.typ: unknown key (did you mean type?)"));
  EXPECT_TRUE(FailsWith(config_with_verifier(kHttpOk, {{"uri", "http://localhost/"}}), ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.uri: unknown key (did you mean url?)"));
}

TEST(ConfigProcessErrors, ProcessNotAnObject) {
  Json config = parse_json(R"({"processes": {"web": ["/bin/echo"]}})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "processes.web: expected an object, got an array"));
}

TEST(ConfigProcessErrors, EmptyProcessName) {
  Json config = parse_json(R"({"processes": {"": {"executable": "x", "arguments": []}}})");
  EXPECT_TRUE(FailsAt(config, "processes", {"name must not be empty"}));
}

TEST(ConfigProcessErrors, TheFailingProcessIsNamed) {
  Json config = parse_json(R"({"processes": {
      "first": {"executable": "a", "arguments": []},
      "second": {"executable": "b", "arguments": [true]}}})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "processes.second.arguments[0]: expected a string, got true"));
}

TEST(ConfigOptionErrors, SuppressTogetherWithRedirect) {
  Json process = web_process();
  process["options"] = parse_json(R"({"suppress_output": true, "redirect_output": "out.log"})");
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.options.redirect_output: cannot be used together with suppress_output"));
}

TEST(ConfigOptionErrors, WrongTypesAndEmptyStrings) {
  Json process = web_process();
  process["options"] = "quiet";
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.options: expected an object, got a string"));
  process["options"] = parse_json(R"({"suppress_output": "yes"})");
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.options.suppress_output: expected true or false, got a string"));
  process["options"] = parse_json(R"({"redirect_output": 1})");
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.options.redirect_output: expected a string, got 1"));
  for (const char* key : {"redirect_output", "working_directory", "environment_file"}) {
    SCOPED_TRACE(key);
    process["options"] = Json::object();
    process["options"][key] = "";
    EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                          std::string("processes.web.options.") + key + ": must not be empty"));
  }
}

// ---------------------------------------------------------------------------
// Unknown keys

TEST(ConfigUnknownKeys, InOptionsWithSuggestion) {
  Json process = web_process();
  process["options"] = parse_json(R"({"redirect_ouput": "out.log"})");
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.options.redirect_ouput: unknown key (did you mean redirect_output?)"));
}

TEST(ConfigUnknownKeys, AtTopLevelWithSuggestion) {
  Json config = config_with(web_process());
  config["keep-alvie"] = true;
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "keep-alvie: unknown key (did you mean keep-alive?)"));
}

TEST(ConfigUnknownKeys, MisspelledProcessesIsNotReportedAsNoProcesses) {
  Json config = parse_json(R"({"proccesses": {"web": {"executable": "x", "arguments": []}}})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "proccesses: unknown key (did you mean processes?)"));
}

TEST(ConfigUnknownKeys, InAProcessWithSuggestion) {
  Json process = web_process();
  process["optoins"] = Json::object();
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid,
                        "processes.web.optoins: unknown key (did you mean options?)"));
}

TEST(ConfigUnknownKeys, FarFromAnyKnownKeyHasNoSuggestion) {
  Json config = config_with(web_process());
  config["zzzzzzzzzz"] = 1;
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "zzzzzzzzzz: unknown key"));

  Json process = web_process();
  process["color"] = "blue";
  EXPECT_TRUE(FailsWith(config_with(process), ErrorKind::config_invalid, "processes.web.color: unknown key"));

  process = web_process();
  process["options"] = parse_json(R"({"restart_policy": "always"})");
  EXPECT_TRUE(
      FailsWith(config_with(process), ErrorKind::config_invalid, "processes.web.options.restart_policy: unknown key"));
}

// ---------------------------------------------------------------------------
// Top level and processes

TEST(ConfigProcesses, MissingKeyMeansNoProcesses) {
  Json config = parse_json(R"({"keep-alive": true})");
  Outcome outcome = try_parse(config);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_no_processes));
  EXPECT_TRUE(contains(outcome.message, "processes")) << outcome.message;
}

TEST(ConfigProcesses, EmptyObjectMeansNoProcesses) {
  Outcome outcome = try_parse(parse_json(R"({"processes": {}})"));
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_no_processes));
  EXPECT_TRUE(contains(outcome.message, "processes")) << outcome.message;
  EXPECT_TRUE(has_kind(try_parse(Json::object()), ErrorKind::config_no_processes));
}

TEST(ConfigProcesses, NotAnObjectIsInvalid) {
  EXPECT_TRUE(FailsAt(parse_json(R"({"processes": [{"executable": "x", "arguments": []}]})"), "processes",
                      {"expected an object", "got an array"}));
  EXPECT_TRUE(FailsAt(parse_json(R"({"processes": "web"})"), "processes", {"got a string"}));
  EXPECT_TRUE(FailsAt(parse_json(R"({"processes": []})"), "processes", {"got an array"}));
}

TEST(ConfigProcesses, TopLevelNotAnObjectIsInvalid) {
  Outcome outcome = try_parse(parse_json("[1, 2]"));
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
  EXPECT_TRUE(contains(outcome.message, "expected an object, got an array")) << outcome.message;
}

// ---------------------------------------------------------------------------
// modules

TEST(ConfigModules, ParsedIntoTheModuleMap) {
  Json config = config_with(web_process());
  config["modules"] = parse_json(R"({
      "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]},
      "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]},
      "empty.module": {}})");
  Config parsed = pymanager::parse_config(config, builtins());
  ASSERT_EQ(parsed.modules.size(), 3u);
  EXPECT_EQ(parsed.modules.at("pymutils.exited_verifier"), std::vector<std::string>{"ExitedVerifier"});
  EXPECT_EQ(parsed.modules.at("pymutils.http_verifier"), std::vector<std::string>{"HttpOkVerifier"});
  EXPECT_TRUE(parsed.modules.at("empty.module").empty());
}

TEST(ConfigModules, WrongShapes) {
  Json config = config_with(web_process());
  config["modules"] = Json::array({"pymutils.http_verifier"});
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "modules: expected an object, got an array"));
  config["modules"] = parse_json(R"({"pymutils.http_verifier": ["HttpOkVerifier"]})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "modules.pymutils.http_verifier: expected an object, got an array"));
  config["modules"] = parse_json(R"({"pymutils.http_verifier": {"verifiers": "HttpOkVerifier"}})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "modules.pymutils.http_verifier.verifiers: expected a list of strings, got a string"));
  config["modules"] = parse_json(R"({"pymutils.http_verifier": {"verifiers": ["HttpOkVerifier", 2]}})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "modules.pymutils.http_verifier.verifiers[1]: expected a string, got 2"));
  config["modules"] = parse_json(R"({"pymutils.http_verifier": {"verifier": ["HttpOkVerifier"]}})");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "modules.pymutils.http_verifier.verifier: unknown key (did you mean verifiers?)"));
}

// ---------------------------------------------------------------------------
// Verifiers

TEST(ConfigVerifier, ExitedVerifierParses) {
  Config config = pymanager::parse_config(config_with_verifier(kExited, {{"timeout", 5}, {"expect_code", 3}}),
                                          builtins());
  const auto& web = config.processes.at(0);
  ASSERT_FALSE(web.verifiers.empty());
  EXPECT_EQ(web.verifiers.at(0).type, kExited);
  EXPECT_EQ(web.verifiers.at(0).arguments, nlohmann::json({{"timeout", 5}, {"expect_code", 3}}));
  ASSERT_NE(std::dynamic_pointer_cast<const pymanager::ExitedVerifier>(web.verifiers.at(0).verifier), nullptr);
  EXPECT_TRUE(web.verifiers.at(0).verifier->expects_exit());
}

TEST(ConfigVerifier, ArgumentsMayBeOmitted) {
  Json config = config_with_verifier(kExited, Json::object());
  config["processes"]["web"]["verifier"].erase("arguments");
  Config parsed = pymanager::parse_config(config, builtins());
  ASSERT_FALSE(parsed.processes.at(0).verifiers.empty());
  EXPECT_EQ(parsed.processes.at(0).verifiers.at(0).arguments, nlohmann::json::object());
  EXPECT_NE(parsed.processes.at(0).verifiers.at(0).verifier, nullptr);
}

TEST(ConfigVerifier, HttpVerifierWithAllArguments) {
  Json arguments = parse_json(R"({"url": "https://127.0.0.1:8443/health?x=1", "timeout": 2, "interval": 0.5,
      "headers": {"Authorization": "Bearer t"}})");
  Config config = pymanager::parse_config(config_with_verifier(kHttpOk, arguments), builtins());
  auto http = std::dynamic_pointer_cast<const pymanager::HttpOkVerifier>(config.processes.at(0).verifiers.at(0).verifier);
  ASSERT_NE(http, nullptr);
  EXPECT_EQ(http->url(), "https://127.0.0.1:8443/health?x=1");
}

TEST(ConfigVerifier, TypeNotLoadedUnderModules) {
  // The seed example without its modules section.
  Json config = parse_json(kSeedReadmeExample);
  config.erase("modules");
  EXPECT_TRUE(FailsAt(config, "processes.test.verifier.type",
                      {"'pymutils.http_verifier.HttpOkVerifier' is not loaded under modules", "(loaded: none)"}));

  // Only the other built-in module is listed.
  config["modules"] = parse_json(R"({"pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]}})");
  EXPECT_TRUE(FailsAt(config, "processes.test.verifier.type",
                      {"is not loaded under modules", "pymutils.exited_verifier.ExitedVerifier"}));
}

TEST(ConfigVerifier, MisspelledTypeGetsASuggestion) {
  Json config = config_with_verifier("pymutils.http_verifier.HttpOKVerifier", {{"url", "http://localhost/"}});
  EXPECT_TRUE(FailsAt(config, "processes.web.verifier.type",
                      {"not loaded under modules", "did you mean pymutils.http_verifier.HttpOkVerifier?"}));
}

TEST(ConfigVerifier, TypeListedButNotKnownToTheRegistry) {
  Json config = config_with_verifier("mymod.MyVerifier", Json::object());
  config["modules"]["mymod"]["verifiers"] = {"MyVerifier"};
  EXPECT_TRUE(FailsAt(config, "processes.web.verifier.type",
                      {"unknown verifier 'mymod.MyVerifier'", kHttpOk, kExited}));
}

TEST(ConfigVerifier, MissingTypeAndWrongShapes) {
  Json config = config_with_verifier(kExited, Json::object());
  config["processes"]["web"]["verifier"].erase("type");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid, "processes.web.verifier.type: required key is missing"));

  config = config_with_verifier(kExited, Json::object());
  config["processes"]["web"]["verifier"] = kExited;
  EXPECT_TRUE(
      FailsWith(config, ErrorKind::config_invalid, "processes.web.verifier: expected an object, got a string"));

  config = config_with_verifier(kExited, Json::array({30}));
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "processes.web.verifier.arguments: expected an object, got an array"));

  config = config_with_verifier(kExited, Json::object());
  config["processes"]["web"]["verifier"]["args"] = Json::object();
  EXPECT_TRUE(FailsAt(config, "processes.web.verifier.args", {"unknown key"}));
}

TEST(ConfigVerifier, HttpMissingUrl) {
  EXPECT_TRUE(FailsWith(config_with_verifier(kHttpOk, {{"timeout", 5}}), ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.url: required key is missing"));
}

TEST(ConfigVerifier, HttpBadUrl) {
  for (const char* url : {"ftp://x", "google.com", "http://", "http://:80/"}) {
    SCOPED_TRACE(url);
    EXPECT_TRUE(FailsWith(config_with_verifier(kHttpOk, {{"url", url}}), ErrorKind::config_invalid,
                          std::string("processes.web.verifier.arguments.url: expected an http:// or https:// URL, got '") +
                              url + "'"));
  }
  EXPECT_TRUE(FailsWith(config_with_verifier(kHttpOk, {{"url", 80}}), ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.url: expected a string, got 80"));
}

TEST(ConfigVerifier, HttpUnknownArgumentGetsASuggestion) {
  EXPECT_TRUE(FailsWith(config_with_verifier(kHttpOk, {{"url", "http://localhost:8080/"}, {"timout", 5}}),
                        ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.timout: unknown key (did you mean timeout?)"));
}

TEST(ConfigVerifier, HttpWrongArgumentTypes) {
  EXPECT_TRUE(FailsWith(config_with_verifier(kHttpOk, {{"url", "http://x/"}, {"timeout", "30"}}),
                        ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.timeout: expected a number, got a string"));
  EXPECT_TRUE(FailsAt(config_with_verifier(kHttpOk, {{"url", "http://x/"}, {"interval", -1}}),
                      "processes.web.verifier.arguments.interval", {"must be at least 0"}));
  EXPECT_TRUE(FailsWith(config_with_verifier(kHttpOk, {{"url", "http://x/"}, {"headers", {{"X-A", 1}}}}),
                        ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.headers.X-A: expected a string, got 1"));
}

TEST(ConfigVerifier, ExitedExpectCodeNotAnInteger) {
  EXPECT_TRUE(FailsWith(config_with_verifier(kExited, {{"expect_code", "0"}}), ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.expect_code: expected an integer, got a string"));
  EXPECT_TRUE(FailsWith(config_with_verifier(kExited, {{"expect_code", 1.5}}), ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.expect_code: expected an integer, got 1.5"));
  EXPECT_TRUE(FailsAt(config_with_verifier(kExited, {{"expect_code", 300}}),
                      "processes.web.verifier.arguments.expect_code", {"255", "300"}));
}

TEST(ConfigVerifier, ExitedUnknownArgumentAndNegativeTimeout) {
  EXPECT_TRUE(FailsWith(config_with_verifier(kExited, {{"expected_code", 0}}), ErrorKind::config_invalid,
                        "processes.web.verifier.arguments.expected_code: unknown key (did you mean expect_code?)"));
  EXPECT_TRUE(FailsAt(config_with_verifier(kExited, {{"timeout", -3}}), "processes.web.verifier.arguments.timeout",
                      {"must be at least 0", "-3"}));
}

// A verifier a user registers: records the arguments its factory got.
class MyVerifier : public pymanager::Verifier {
 public:
  explicit MyVerifier(nlohmann::json arguments) : arguments_(std::move(arguments)) {}
  pymanager::VerifyResult verify(pymanager::VerifyContext&) const override { return pymanager::VerifyResult::ok(); }
  const nlohmann::json& arguments() const { return arguments_; }

 private:
  nlohmann::json arguments_;
};

TEST(ConfigVerifier, UserRegisteredVerifier) {
  struct Call {
    nlohmann::json arguments;
    std::string path;
    std::shared_ptr<const MyVerifier> made;
  };
  auto calls = std::make_shared<std::vector<Call>>();
  VerifierRegistry registry = pymanager::builtin_verifiers();
  registry.add("mymod.MyVerifier", [calls](const nlohmann::json& arguments, const std::string& path) {
    auto made = std::make_shared<const MyVerifier>(arguments);
    calls->push_back({arguments, path, made});
    return std::shared_ptr<const pymanager::Verifier>(made);
  });
  EXPECT_TRUE(registry.contains("mymod.MyVerifier"));
  EXPECT_TRUE(registry.contains(kHttpOk));

  Json config = parse_json(R"({
    "modules": {"mymod": {"verifiers": ["MyVerifier"]}},
    "processes": {
      "db": {"executable": "db", "arguments": [],
             "verifier": {"type": "mymod.MyVerifier", "arguments": {"port": 5432, "name": "test"}}},
      "plain": {"executable": "p", "arguments": []}
    }
  })");
  Config parsed = pymanager::parse_config(config, registry);

  ASSERT_EQ(calls->size(), 1u);
  const Call& call = calls->at(0);
  EXPECT_EQ(call.path, "processes.db.verifier.arguments");
  EXPECT_EQ(call.arguments, nlohmann::json({{"port", 5432}, {"name", "test"}}));

  ASSERT_EQ(parsed.processes.size(), 2u);
  const auto& db = parsed.processes[0];
  ASSERT_FALSE(db.verifiers.empty());
  EXPECT_EQ(db.verifiers.at(0).type, "mymod.MyVerifier");
  EXPECT_EQ(db.verifiers.at(0).arguments, call.arguments);
  EXPECT_EQ(db.verifiers.at(0).verifier.get(), call.made.get());
  auto mine = std::dynamic_pointer_cast<const MyVerifier>(db.verifiers.at(0).verifier);
  ASSERT_NE(mine, nullptr);
  EXPECT_EQ(mine->arguments().at("port"), 5432);
  EXPECT_TRUE(parsed.processes[1].verifiers.empty());

  // Registered but not listed under modules: still rejected, as the original did.
  config.erase("modules");
  EXPECT_TRUE(FailsAt(config, "processes.db.verifier.type", {"not loaded under modules"}, registry));
  // Listed but only the built-in registry: unknown to this build.
  config["modules"]["mymod"]["verifiers"] = {"MyVerifier"};
  EXPECT_TRUE(FailsAt(config, "processes.db.verifier.type", {"unknown verifier 'mymod.MyVerifier'"}, builtins()));
}

TEST(ConfigVerifier, UserFactoryErrorsPropagate) {
  VerifierRegistry registry;
  registry.add("mymod.Strict", [](const nlohmann::json& arguments, const std::string& path) {
    pymanager::ArgumentReader reader(arguments, path);
    reader.required_string("socket");
    reader.finish();
    return std::shared_ptr<const pymanager::Verifier>(std::make_shared<const MyVerifier>(arguments));
  });
  Json config = parse_json(R"({
    "modules": {"mymod": {"verifiers": ["Strict"]}},
    "processes": {"db": {"executable": "db", "arguments": [],
                         "verifier": {"type": "mymod.Strict", "arguments": {"sockt": "/tmp/s"}}}}
  })");
  Outcome outcome = try_parse(config, registry);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
  EXPECT_EQ(outcome.message.rfind("processes.db.verifier.arguments.", 0), 0u) << outcome.message;
}

// ---------------------------------------------------------------------------
// load_config_file

class ConfigFile : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/config_test.XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    ASSERT_NE(::mkdtemp(buffer.data()), nullptr);
    dir_ = buffer.data();
  }

  void TearDown() override {
    for (const auto& file : files_) {
      ::chmod(file.c_str(), 0600);
      ::unlink(file.c_str());
    }
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) ::rmdir(it->c_str());
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }

  std::string write(const std::string& name, const std::string& content) {
    std::string path = dir_ + "/" + name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
    out.close();
    EXPECT_TRUE(static_cast<bool>(out)) << "cannot write " << path;
    files_.push_back(path);
    return path;
  }

  std::string make_dir(const std::string& name) {
    std::string path = dir_ + "/" + name;
    EXPECT_EQ(::mkdir(path.c_str(), 0700), 0) << path;
    dirs_.push_back(path);
    return path;
  }

  static Outcome try_load(const std::string& path) {
    Outcome outcome;
    try {
      pymanager::load_config_file(path, builtins());
    } catch (const Error& e) {
      outcome.threw = true;
      outcome.kind = e.kind();
      outcome.message = e.what();
    }
    return outcome;
  }

  std::string dir_;
  std::vector<std::string> files_;
  std::vector<std::string> dirs_;
};

TEST_F(ConfigFile, ValidFileIsParsed) {
  std::string path = write("pymanager.json", kSeedReadmeExample);
  Config config = pymanager::load_config_file(path, builtins());
  EXPECT_TRUE(config.keep_alive);
  EXPECT_TRUE(config.http.enabled);
  ASSERT_EQ(config.processes.size(), 1u);
  EXPECT_EQ(config.processes[0].name, "test");
  ASSERT_FALSE(config.processes[0].verifiers.empty());
  EXPECT_EQ(config.processes[0].verifiers.at(0).type, kHttpOk);
}

TEST_F(ConfigFile, FileKeepsProcessOrder) {
  std::string path = write("order.json", R"({"processes": {
      "zeta": {"executable": "z", "arguments": []},
      "alpha": {"executable": "a", "arguments": []},
      "mid": {"executable": "m", "arguments": []}}})");
  Config config = pymanager::load_config_file(path, builtins());
  ASSERT_EQ(config.processes.size(), 3u);
  EXPECT_EQ(config.processes[0].name, "zeta");
  EXPECT_EQ(config.processes[1].name, "alpha");
  EXPECT_EQ(config.processes[2].name, "mid");
}

TEST_F(ConfigFile, MissingFileIsNotFound) {
  std::string path = dir_ + "/does-not-exist.json";
  Outcome outcome = try_load(path);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_not_found));
  EXPECT_TRUE(contains(outcome.message, path)) << outcome.message;
}

TEST_F(ConfigFile, DirectoryIsUnreadable) {
  std::string path = make_dir("pymanager.json");
  Outcome outcome = try_load(path);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_unreadable));
  EXPECT_TRUE(contains(outcome.message, path)) << outcome.message;
}

TEST_F(ConfigFile, FileWithoutReadPermissionIsUnreadable) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: chmod 000 does not stop root from reading";
  std::string path = write("secret.json", kSeedReadmeExample);
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  Outcome outcome = try_load(path);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_unreadable));
  EXPECT_TRUE(contains(outcome.message, path)) << outcome.message;
}

TEST_F(ConfigFile, InvalidJsonIsNotJson) {
  std::string path = write("broken.json", R"({"processes": {"web": {"executable": "x",}})");
  Outcome outcome = try_load(path);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_not_json));
  EXPECT_TRUE(contains(outcome.message, path)) << outcome.message;
  EXPECT_TRUE(contains(outcome.message, "not valid JSON")) << outcome.message;
}

TEST_F(ConfigFile, EmptyFileIsNotJson) {
  std::string path = write("empty.json", "");
  Outcome outcome = try_load(path);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_not_json));
  EXPECT_TRUE(contains(outcome.message, path)) << outcome.message;
}

TEST_F(ConfigFile, InvalidConfigNamesFileAndPath) {
  std::string path = write("bad.json", R"({"processes": {"web": {"executable": "x", "arguments": ["a", 5]}}})");
  Outcome outcome = try_load(path);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
  EXPECT_EQ(outcome.message, path + ": processes.web.arguments[1]: expected a string, got 5");
}

TEST_F(ConfigFile, NoProcessesKeepsItsKind) {
  std::string path = write("none.json", R"({"processes": {}})");
  Outcome outcome = try_load(path);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_no_processes));
  EXPECT_TRUE(contains(outcome.message, path)) << outcome.message;
}

// ---------------------------------------------------------------------------
// Exit codes

TEST(ConfigExitCodes, EachKindMapsToTheOriginalsCode) {
  EXPECT_EQ(pymanager::exit_code_for(ErrorKind::config_not_found), 1);
  EXPECT_EQ(pymanager::exit_code_for(ErrorKind::config_unreadable), 2);
  EXPECT_EQ(pymanager::exit_code_for(ErrorKind::config_not_json), 3);
  EXPECT_EQ(pymanager::exit_code_for(ErrorKind::config_no_processes), 4);
  EXPECT_EQ(pymanager::exit_code_for(ErrorKind::config_invalid), 5);
  EXPECT_EQ(pymanager::exit_code_for(ErrorKind::spawn_failed), 5);
  EXPECT_EQ(pymanager::exit_code_for(ErrorKind::verify_failed), 5);
  EXPECT_EQ(pymanager::exit_code_for(ErrorKind::system), 5);
}

}  // namespace

// ---------------------------------------------------------------------------
// Hostile input: each of these crashed, hung or misbehaved before.

TEST_F(ConfigFile, DeepNestingIsAnErrorNotAStackOverflow) {
  // 30,000 nested arrays at the top, and 100,000 inside `arguments` and
  // under an unknown key: each walk of such a tree used to recurse.
  const std::string deep_top = std::string(30000, '[') + std::string(30000, ']');
  Outcome outcome = try_load(write("deep.json", deep_top));
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
  EXPECT_TRUE(contains(outcome.message, "nested deeper than 64 levels")) << outcome.message.substr(0, 300);
  for (const char* where : {R"("arguments": )", R"("arguments": [], "unknown": )"}) {
    std::string text = std::string(R"({"processes": {"web": {"executable": "x", )") + where +
                       std::string(100000, '[') + std::string(100000, ']') + "}}}";
    outcome = try_load(write("deep-inside.json", text));
    EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
    EXPECT_TRUE(contains(outcome.message, "deep-inside.json: processes.web.")) << outcome.message.substr(0, 300);
    EXPECT_TRUE(contains(outcome.message, "nested deeper than 64 levels")) << outcome.message.substr(0, 300);
  }
}

TEST(ConfigHostile, DeepNestingGivenAsJsonIsAnErrorToo) {
  // A program that builds the JSON itself (the GoogleTest environment takes
  // one) gets the same check before any recursive walk.
  Json deep = Json::array();
  for (int i = 0; i < 100000; ++i) {
    Json outer = Json::array();
    outer.push_back(std::move(deep));
    deep = std::move(outer);
  }
  Json config = config_with(web_process());
  config["processes"]["web"]["arguments"] = std::move(deep);
  Outcome outcome = try_parse(config);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
  EXPECT_EQ(outcome.message.rfind("processes.web.arguments[0][0][0]", 0), 0u) << outcome.message;
  EXPECT_TRUE(contains(outcome.message, "...: nested deeper than 64 levels")) << outcome.message;
}

TEST_F(ConfigFile, NumbersTooLargeForADoubleAreNotJson) {
  for (const char* value : {"1e999", "-1e999"}) {
    SCOPED_TRACE(value);
    Outcome outcome = try_load(write("huge.json", std::string(R"({"graceful-time": )") + value +
                                                      R"(, "processes": {"web": {"executable": "x", "arguments": []}}})"));
    EXPECT_TRUE(has_kind(outcome, ErrorKind::config_not_json));
    EXPECT_TRUE(contains(outcome.message, "number overflow")) << outcome.message;
  }
}

TEST(ConfigHostile, AbsurdTimesAreRefusedSoNoDeadlineOverflows) {
  for (const char* key : {"graceful-time", "graceful_time", "restart-graceful-time", "restart_graceful_time"}) {
    SCOPED_TRACE(key);
    Json config = config_with(web_process());
    config[key] = 1e10;
    EXPECT_TRUE(FailsAt(config, key, {"must be at most 604800 seconds (a week)"}));
    config[key] = 604800;
    EXPECT_FALSE(try_parse(config).threw) << try_parse(config).message;
  }
  for (const char* key : {"timeout", "interval"}) {
    SCOPED_TRACE(key);
    EXPECT_TRUE(FailsAt(config_with_verifier(kHttpOk, Json{{"url", "http://127.0.0.1:1/"}, {key, 1e308}}),
                        std::string("processes.web.verifier.arguments.") + key, {"must be at most 604800"}));
  }
  EXPECT_TRUE(FailsAt(config_with_verifier(kExited, Json{{"timeout", 1e10}}), "processes.web.verifier.arguments.timeout",
                      {"must be at most 604800"}));
  // Code that takes seconds directly clamps them.
  EXPECT_EQ(pymanager::seconds_to_duration(1e308), pymanager::seconds_to_duration(604800));
  EXPECT_EQ(pymanager::seconds_to_duration(-5), pymanager::Clock::duration::zero());
  EXPECT_EQ(pymanager::seconds_to_duration(std::nan("")), pymanager::Clock::duration::zero());
}

TEST_F(ConfigFile, OnlyARegularFileOfBoundedSizeIsRead) {
  // /dev/zero never ends, and a FIFO without a writer never answers.
  Outcome outcome = try_load("/dev/zero");
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_unreadable));
  EXPECT_EQ(outcome.message, "cannot read config file /dev/zero: not a regular file");
  std::string fifo = dir_ + "/fifo.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  files_.push_back(fifo);
  outcome = try_load(fifo);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_unreadable));
  EXPECT_TRUE(contains(outcome.message, "not a regular file")) << outcome.message;
  // A (sparse) file over the limit is refused before it is read.
  std::string big = write("big.json", "");
  ASSERT_EQ(::truncate(big.c_str(), static_cast<off_t>(pymanager::kMaxConfigFileBytes) + 1), 0);
  outcome = try_load(big);
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_unreadable));
  EXPECT_TRUE(contains(outcome.message, "larger than 64 MiB")) << outcome.message;
}

TEST_F(ConfigFile, DuplicateKeysAreErrorsNamingThePath) {
  Outcome outcome = try_load(write("dup.json", R"({"processes": {
      "a": {"executable": "x", "arguments": []},
      "a": {"executable": "y", "arguments": []}}})"));
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
  EXPECT_TRUE(contains(outcome.message, "dup.json: processes.a: duplicate key")) << outcome.message;
  outcome = try_load(write("dup-deep.json", R"({"processes": {"a": {"executable": "x", "arguments": [],
      "verifier": {"type": "t", "arguments": {"url": "u", "url": "v"}}}}})"));
  EXPECT_TRUE(contains(outcome.message, "processes.a.verifier.arguments.url: duplicate key")) << outcome.message;
  outcome = try_load(write("dup-array.json", R"({"processes": {"a": {"executable": "x", "arguments": [{"k": 1, "k": 2}]}}})"));
  EXPECT_TRUE(contains(outcome.message, "processes.a.arguments[0].k: duplicate key")) << outcome.message;
  outcome = try_load(write("dup-top.json", R"({"keep_alive": true, "keep_alive": false, "processes": {}})"));
  EXPECT_TRUE(contains(outcome.message, "dup-top.json: keep_alive: duplicate key")) << outcome.message;
}

TEST_F(ConfigFile, ANulByteInAStringIsAnErrorNamingThePath) {
  struct Case {
    const char* process;
    const char* path;
  };
  const Case cases[] = {
      {R"({"executable": "/bin/e\u0000cho", "arguments": []})", "processes.web.executable"},
      {R"({"executable": "env", "arguments": ["one\u0000INJECTED=1"]})", "processes.web.arguments[0]"},
      {R"({"executable": "env", "arguments": [], "options": {"working_directory": "/tmp\u0000/x"}})",
       "processes.web.options.working_directory"},
      {R"({"executable": "env", "arguments": [], "options": {"environment_file": "a\u0000b"}})",
       "processes.web.options.environment_file"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.path);
    std::string text = std::string(R"({"processes": {"web": )") + c.process + "}}";
    // From a file ...
    Outcome outcome = try_load(write("nul.json", text));
    EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
    EXPECT_TRUE(contains(outcome.message, std::string("nul.json: ") + c.path + ": contains a NUL byte")) << outcome.message;
    // ... and as JSON built by a program.
    EXPECT_TRUE(FailsAt(parse_json(text.c_str()), c.path, {"contains a NUL byte"}));
  }
  Outcome outcome = try_load(write("nul-name.json", R"({"processes": {"we\u0000b": {"executable": "x", "arguments": []}}})"));
  EXPECT_TRUE(contains(outcome.message, "nul-name.json: processes.we\\u0000b: contains a NUL byte")) << outcome.message;
}

TEST(ConfigHostile, ManyProcessesParseInOrder) {
  // The parse is linear (bench/lifecycle_bench measures it); this checks
  // that 20,000 processes come out complete and in file order.
  std::string text = R"({"processes": {)";
  for (int i = 0; i < 20000; ++i) {
    text += (i ? "," : "") + std::string("\"p") + std::to_string(i) + R"(": {"executable": "x", "arguments": ["a"]})";
  }
  text += "}}";
  Config config = pymanager::parse_config(pymanager::detail::parse_json_text(text), builtins());
  ASSERT_EQ(config.processes.size(), 20000u);
  EXPECT_EQ(config.processes.front().name, "p0");
  EXPECT_EQ(config.processes[14321].name, "p14321");
  EXPECT_EQ(config.processes.back().name, "p19999");
}

// ---------------------------------------------------------------------------
// depends_on (issue 9): the graph is checked completely before anything runs.

namespace {

// A process for the dependency tests, with `depends_on` set to `depends_on`
// unless it is null.
Json process_depending_on(const Json& depends_on) {
  Json process = parse_json(R"({"executable": "x", "arguments": []})");
  if (!depends_on.is_null()) process["depends_on"] = depends_on;
  return process;
}

// {"processes": {name: process_depending_on(depends_on), ...}} in the given order.
Json graph(std::initializer_list<std::pair<const char*, Json>> processes) {
  Json config = Json::object();
  config["processes"] = Json::object();
  for (const auto& entry : processes) config["processes"][entry.first] = process_depending_on(entry.second);
  return config;
}

}  // namespace

TEST(ConfigDependsOn, NoKeyAnywhereKeepsTheFileOrder) {
  Config config = pymanager::parse_config(graph({{"db", nullptr}, {"api", nullptr}}), builtins());
  EXPECT_FALSE(config.processes[0].depends_on.has_value());
  EXPECT_FALSE(config.processes[1].depends_on.has_value());
  EXPECT_FALSE(config.uses_dependencies());
}

TEST(ConfigDependsOn, ListFormMeansVerifiedAndResolvesIndices) {
  // "api" names "cache", which is written after it.
  Config config = pymanager::parse_config(
      graph({{"db", nullptr}, {"api", parse_json(R"(["db", "cache"])")}, {"cache", nullptr}}), builtins());
  EXPECT_TRUE(config.uses_dependencies());
  EXPECT_FALSE(config.processes[0].depends_on.has_value()) << "a process without the key depends on nothing";
  ASSERT_TRUE(config.processes[1].depends_on.has_value());
  const auto& deps = *config.processes[1].depends_on;
  ASSERT_EQ(deps.size(), 2u);
  EXPECT_EQ(deps[0].name, "db");
  EXPECT_EQ(deps[0].index, 0u);
  EXPECT_EQ(deps[0].condition, pymanager::DependencyCondition::verified);
  EXPECT_EQ(deps[1].name, "cache");
  EXPECT_EQ(deps[1].index, 2u);
  EXPECT_EQ(deps[1].condition, pymanager::DependencyCondition::verified);
}

TEST(ConfigDependsOn, ObjectFormGivesEachCondition) {
  Config config = pymanager::parse_config(
      graph({{"db", nullptr}, {"cache", nullptr}, {"api", parse_json(R"({"db": "verified", "cache": "started"})")}}),
      builtins());
  ASSERT_TRUE(config.processes[2].depends_on.has_value());
  const auto& deps = *config.processes[2].depends_on;
  ASSERT_EQ(deps.size(), 2u);
  EXPECT_EQ(deps[0].name, "db");
  EXPECT_EQ(deps[0].index, 0u);
  EXPECT_EQ(deps[0].condition, pymanager::DependencyCondition::verified);
  EXPECT_EQ(deps[1].name, "cache");
  EXPECT_EQ(deps[1].index, 1u);
  EXPECT_EQ(deps[1].condition, pymanager::DependencyCondition::started);
  EXPECT_STREQ(pymanager::to_string(pymanager::DependencyCondition::started), "started");
  EXPECT_STREQ(pymanager::to_string(pymanager::DependencyCondition::verified), "verified");
}

TEST(ConfigDependsOn, AnEmptyListOrObjectCountsAsPresent) {
  for (const char* empty : {"[]", "{}"}) {
    SCOPED_TRACE(empty);
    Config config = pymanager::parse_config(graph({{"a", parse_json(empty)}, {"b", nullptr}}), builtins());
    ASSERT_TRUE(config.processes[0].depends_on.has_value());
    EXPECT_TRUE(config.processes[0].depends_on->empty());
    EXPECT_FALSE(config.processes[1].depends_on.has_value());
    EXPECT_TRUE(config.uses_dependencies()) << "start-up runs as a graph: a and b start at once";
  }
}

TEST(ConfigDependsOn, UnknownNameGetsASuggestionOrTheKnownNames) {
  EXPECT_TRUE(FailsWith(graph({{"db", nullptr}, {"api", parse_json(R"(["db", "dbb"])")}}), ErrorKind::config_invalid,
                        "processes.api.depends_on[1]: unknown process 'dbb' (did you mean db?)"));
  EXPECT_TRUE(FailsWith(graph({{"db", nullptr}, {"api", parse_json(R"({"postgres": "started"})")}}),
                        ErrorKind::config_invalid,
                        "processes.api.depends_on.postgres: unknown process 'postgres' (known: db, api)"));
  // Many processes: the list of known names is cut short.
  Json config = Json::object();
  for (int i = 0; i < 30; ++i) config["processes"]["service" + std::to_string(i)] = process_depending_on(nullptr);
  config["processes"]["api"] = process_depending_on(parse_json(R"(["postgres"])"));
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "processes.api.depends_on[0]: unknown process 'postgres' (known: service0, service1, service2, "
                        "service3, service4, service5, service6, service7, service8, service9, and 21 more)"));
}

TEST(ConfigDependsOn, ADependencyOnItselfIsAnError) {
  EXPECT_TRUE(FailsWith(graph({{"db", nullptr}, {"api", parse_json(R"(["db", "api"])")}}), ErrorKind::config_invalid,
                        "processes.api.depends_on[1]: process 'api' depends on itself"));
  EXPECT_TRUE(FailsWith(graph({{"api", parse_json(R"({"api": "started"})")}}), ErrorKind::config_invalid,
                        "processes.api.depends_on.api: process 'api' depends on itself"));
}

TEST(ConfigDependsOn, ANameListedTwiceIsAnError) {
  EXPECT_TRUE(FailsWith(graph({{"db", nullptr}, {"api", parse_json(R"(["db", "db"])")}}), ErrorKind::config_invalid,
                        "processes.api.depends_on[1]: 'db' is listed twice"));
}

TEST(ConfigDependsOn, WrongShapesAndConditions) {
  EXPECT_TRUE(FailsWith(graph({{"db", nullptr}, {"api", parse_json(R"(["db", 5])")}}), ErrorKind::config_invalid,
                        "processes.api.depends_on[1]: expected a process name (a string), got 5"));
  EXPECT_TRUE(FailsWith(graph({{"db", nullptr}, {"api", Json("db")}}), ErrorKind::config_invalid,
                        "processes.api.depends_on: expected a list of process names or an object "
                        "(name: \"started\" or \"verified\"), got a string"));
  EXPECT_TRUE(FailsWith(graph({{"cache", nullptr}, {"api", parse_json(R"({"cache": "ready"})")}}),
                        ErrorKind::config_invalid,
                        "processes.api.depends_on.cache: expected \"started\" or \"verified\", got \"ready\""));
  EXPECT_TRUE(FailsWith(graph({{"cache", nullptr}, {"api", parse_json(R"({"cache": "verifed"})")}}),
                        ErrorKind::config_invalid,
                        "processes.api.depends_on.cache: expected \"started\" or \"verified\", got \"verifed\" "
                        "(did you mean verified?)"));
  EXPECT_TRUE(FailsWith(graph({{"cache", nullptr}, {"api", parse_json(R"({"cache": true})")}}),
                        ErrorKind::config_invalid,
                        "processes.api.depends_on.cache: expected \"started\" or \"verified\", got true"));
  // Names are case-sensitive, as process names are.
  EXPECT_TRUE(FailsWith(graph({{"db", nullptr}, {"api", parse_json(R"(["DB"])")}}), ErrorKind::config_invalid,
                        "processes.api.depends_on[0]: unknown process 'DB' (did you mean db?)"));
}

TEST(ConfigDependsOn, MisspelledKeyGetsASuggestion) {
  Json config = graph({{"db", nullptr}, {"api", nullptr}});
  config["processes"]["api"]["depends_no"] = parse_json(R"(["db"])");
  EXPECT_TRUE(FailsWith(config, ErrorKind::config_invalid,
                        "processes.api.depends_no: unknown key (did you mean depends_on?)"));
}

TEST(ConfigDependsOn, TwoCycleIsNamedAtItsFirstProcess) {
  EXPECT_TRUE(FailsWith(graph({{"api", parse_json(R"(["db"])")}, {"db", parse_json(R"({"api": "started"})")}}),
                        ErrorKind::config_invalid, "processes.api.depends_on: cycle api -> db -> api"));
}

TEST(ConfigDependsOn, ThreeCycleIsWrittenOutFromItsFirstProcessInFileOrder) {
  EXPECT_TRUE(FailsWith(graph({{"a", parse_json(R"(["b"])")}, {"b", parse_json(R"(["c"])")}, {"c", parse_json(R"(["a"])")}}),
                        ErrorKind::config_invalid, "processes.a.depends_on: cycle a -> b -> c -> a"));
  // The search enters the cycle at "c" through "x", which is not part of it;
  // "c" is also the cycle's first process in the file.
  EXPECT_TRUE(FailsWith(graph({{"x", parse_json(R"(["a"])")},
                               {"c", parse_json(R"(["a"])")},
                               {"a", parse_json(R"(["b"])")},
                               {"b", parse_json(R"(["c"])")}}),
                        ErrorKind::config_invalid, "processes.c.depends_on: cycle c -> a -> b -> c"));
}

TEST(ConfigDependsOn, ADiamondIsNotACycle) {
  Config config = pymanager::parse_config(graph({{"web", parse_json(R"(["api", "worker"])")},
                                                 {"api", parse_json(R"(["db"])")},
                                                 {"worker", parse_json(R"({"db": "started"})")},
                                                 {"db", parse_json("[]")}}),
                                          builtins());
  EXPECT_TRUE(config.uses_dependencies());
  EXPECT_EQ((*config.processes[0].depends_on)[1].index, 2u);
  EXPECT_EQ((*config.processes[2].depends_on)[0].index, 3u);
}

TEST(ConfigDependsOn, NulBytesAreErrorsNamingThePath) {
  EXPECT_TRUE(FailsAt(graph({{"db", nullptr}, {"api", parse_json(R"(["d\u0000b"])")}}), "processes.api.depends_on[0]",
                      {"contains a NUL byte"}));
}

namespace {

// 100,000 processes p0 .. p99999, each depending on the next one (the last on
// `last_depends_on`): a depth-first search that recursed would overflow its stack.
std::string long_chain(const std::string& last_depends_on) {
  constexpr int kCount = 100000;
  std::string text = R"({"processes": {)";
  for (int i = 0; i < kCount; ++i) {
    std::string depends_on = i + 1 < kCount ? "[\"p" + std::to_string(i + 1) + "\"]" : last_depends_on;
    text += (i ? "," : "") + std::string("\"p") + std::to_string(i) +
            R"(": {"executable": "x", "arguments": [], "depends_on": )" + depends_on + "}";
  }
  return text + "}}";
}

}  // namespace

TEST(ConfigDependsOn, AChainOf100000ProcessesParsesInLinearTime) {
  auto started = std::chrono::steady_clock::now();
  Config config = pymanager::parse_config(pymanager::detail::parse_json_text(long_chain("[]")), builtins());
  auto elapsed = std::chrono::steady_clock::now() - started;
  ASSERT_EQ(config.processes.size(), 100000u);
  EXPECT_EQ((*config.processes[0].depends_on)[0].index, 1u);
  EXPECT_EQ((*config.processes[99998].depends_on)[0].index, 99999u);
  EXPECT_TRUE(config.processes[99999].depends_on->empty());
  // About a second here, several under a sanitizer on a busy machine; a
  // quadratic check (10^10 steps) takes minutes.
  EXPECT_LT(elapsed, std::chrono::seconds(40));
}

TEST(ConfigDependsOn, ACycleThrough100000ProcessesIsReportedShortened) {
  Outcome outcome = try_parse(pymanager::detail::parse_json_text(long_chain(R"(["p0"])")));
  EXPECT_TRUE(has_kind(outcome, ErrorKind::config_invalid));
  EXPECT_EQ(outcome.message,
            "processes.p0.depends_on: cycle p0 -> p1 -> p2 -> p3 -> p4 -> p5 -> p6 -> p7 -> p8 -> p9 -> ... -> "
            "p99995 -> p99996 -> p99997 -> p99998 -> p99999 -> p0 (100000 processes)");
}

// ---------------------------------------------------------------------------
// options.stop_signal, options.graceful_time

namespace {

Json web_with_options(const char* options) {
  Json process = web_process();
  process["options"] = parse_json(options);
  return config_with(process);
}

}  // namespace

TEST(ConfigStopSignal, DefaultIsSigterm) {
  Config config = pymanager::parse_config(config_with(web_process()), builtins());
  EXPECT_EQ(config.processes[0].stop_signal, SIGTERM);
  EXPECT_FALSE(config.processes[0].graceful_time.has_value());
  EXPECT_TRUE(config.processes[0].environment.empty());
}

TEST(ConfigStopSignal, NamesWithAndWithoutThePrefixAndNumbers) {
  const std::pair<const char*, int> cases[] = {
      {R"("SIGINT")", SIGINT}, {R"("INT")", SIGINT},   {R"("TERM")", SIGTERM}, {R"("SIGQUIT")", SIGQUIT},
      {R"("HUP")", SIGHUP},    {R"("USR1")", SIGUSR1}, {R"("SIGUSR2")", SIGUSR2}, {R"("KILL")", SIGKILL},
      {R"("PWR")", SIGPWR}, {R"("IOT")", SIGABRT}, {"2", 2}, {"1", 1}, {"40", 40}, {"64", 64}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.first);
    Config config = pymanager::parse_config(
        web_with_options((std::string(R"({"stop_signal": )") + c.first + "}").c_str()), builtins());
    EXPECT_EQ(config.processes[0].stop_signal, c.second);
  }
}

TEST(ConfigStopSignal, SignalsThatCannotEndAProcessAreRefused) {
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "STOP"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: SIGSTOP suspends a process instead of ending it"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "SIGWINCH"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: SIGWINCH is ignored by default and cannot stop a process"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "CHLD"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: SIGCHLD is ignored by default and cannot stop a process"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": 32})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: signal 32 is reserved by the C library"));
}

TEST(ConfigStopSignal, UnknownNamesGetASuggestion) {
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "SIGTREM"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: unknown signal 'SIGTREM' (did you mean SIGTERM?)"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "TRM"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: unknown signal 'TRM' (did you mean TERM?)"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "int"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: unknown signal 'int' (did you mean INT? signal names are "
                        "upper case)"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "sigint"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: unknown signal 'sigint' (did you mean SIGINT? signal "
                        "names are upper case)"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "GRACEFUL"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: unknown signal 'GRACEFUL' (give a name such as SIGTERM or "
                        "TERM, or a number from 1 to 64)"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": "2"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: unknown signal '2' (a number is written without quotes: 2)"));
}

TEST(ConfigStopSignal, NumbersOutOfRangeAndOtherTypes) {
  for (const char* number : {"0", "65", "-15", "18446744073709551615"}) {
    SCOPED_TRACE(number);
    EXPECT_TRUE(FailsWith(web_with_options((std::string(R"({"stop_signal": )") + number + "}").c_str()),
                          ErrorKind::config_invalid,
                          std::string("processes.web.options.stop_signal: a signal number must be between 1 and 64, "
                                      "got ") + number));
  }
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": 2.5})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: expected a signal name such as \"SIGTERM\" or a number "
                        "from 1 to 64, got 2.5"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_signal": true})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_signal: expected a signal name such as \"SIGTERM\" or a number "
                        "from 1 to 64, got true"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"stop_sginal": "INT"})"), ErrorKind::config_invalid,
                        "processes.web.options.stop_sginal: unknown key (did you mean stop_signal?)"));
}

TEST(Signals, NamesAndNumbers) {
  EXPECT_EQ(pymanager::signal_from_name("SIGINT"), std::optional<int>(SIGINT));
  EXPECT_EQ(pymanager::signal_from_name("INT"), std::optional<int>(SIGINT));
  EXPECT_EQ(pymanager::signal_from_name("SIGRTMIN"), std::nullopt) << "real-time signals are given by number";
  for (const char* bad : {"", "SIG", "sigint", "SIGSIGINT", "INT ", "2"}) {
    EXPECT_EQ(pymanager::signal_from_name(bad), std::nullopt) << bad;
  }
  EXPECT_EQ(pymanager::signal_name(SIGINT), "SIGINT");
  EXPECT_EQ(pymanager::signal_name(SIGTERM), "SIGTERM");
  EXPECT_EQ(pymanager::signal_name(SIGKILL), "SIGKILL");
  EXPECT_EQ(pymanager::signal_name(SIGABRT), "SIGABRT") << "not its alias SIGIOT";
  EXPECT_EQ(pymanager::signal_name(SIGCHLD), "SIGCHLD");
  EXPECT_EQ(pymanager::signal_name(40), "signal 40");
  EXPECT_EQ(pymanager::signal_name(0), "signal 0");
  // Every name maps back to its number, and every number 1..31 has a name.
  for (const auto& name : pymanager::signal_names(true)) {
    auto number = pymanager::signal_from_name(name);
    ASSERT_TRUE(number.has_value()) << name;
    EXPECT_EQ(pymanager::signal_from_name(pymanager::signal_name(*number)), number) << name;
  }
  // glibc's own abbreviations are all accepted (it calls 29 POLL; SIGIO is shown).
  for (int number = 1; number <= 31; ++number) {
    EXPECT_EQ(pymanager::signal_from_name(::sigabbrev_np(number)), std::optional<int>(number)) << number;
    EXPECT_NE(pymanager::signal_name(number), "signal " + std::to_string(number)) << number;
  }
  EXPECT_EQ(pymanager::signal_name(SIGIO), "SIGIO");
}

TEST(ConfigGracefulTimeOption, SecondsWithTheTopLevelChecks) {
  Config config = pymanager::parse_config(web_with_options(R"({"graceful_time": 2.5})"), builtins());
  EXPECT_EQ(config.processes[0].graceful_time, std::optional<double>(2.5));
  config = pymanager::parse_config(web_with_options(R"({"graceful_time": 0})"), builtins());
  EXPECT_EQ(config.processes[0].graceful_time, std::optional<double>(0.0));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"graceful_time": -1})"), ErrorKind::config_invalid,
                        "processes.web.options.graceful_time: must be at least 0.0, got -1"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"graceful_time": 1e9})"), ErrorKind::config_invalid,
                        "processes.web.options.graceful_time: must be at most 604800 seconds (a week), got 1000000000.0"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"graceful_time": "5"})"), ErrorKind::config_invalid,
                        "processes.web.options.graceful_time: expected a number, got a string"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"graceful-time": 5})"), ErrorKind::config_invalid,
                        "processes.web.options.graceful-time: unknown key (did you mean graceful_time?)"));
}

// ---------------------------------------------------------------------------
// options.environment

TEST(ConfigEnvironment, ReadInFileOrder) {
  Config config = pymanager::parse_config(
      web_with_options(R"({"environment": {"ZED": "1", "ALPHA": "a b 'c' \"d\" $HOME\n", "EMPTY": "", "log4j.level": "x"}})"),
      builtins());
  using Entry = std::pair<std::string, std::string>;
  EXPECT_EQ(config.processes[0].environment,
            (std::vector<Entry>{{"ZED", "1"}, {"ALPHA", "a b 'c' \"d\" $HOME\n"}, {"EMPTY", ""}, {"log4j.level", "x"}}));
}

TEST(ConfigEnvironment, MisspelledKeySuggestsEnvironment) {
  EXPECT_TRUE(FailsWith(web_with_options(R"({"enviroment": {"A": "1"}})"), ErrorKind::config_invalid,
                        "processes.web.options.enviroment: unknown key (did you mean environment?)"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"environment_fil": ".env"})"), ErrorKind::config_invalid,
                        "processes.web.options.environment_fil: unknown key (did you mean environment_file?)"));
}

TEST(ConfigEnvironment, ValuesMustBeStrings) {
  EXPECT_TRUE(FailsWith(web_with_options(R"({"environment": {"PORT": 8080}})"), ErrorKind::config_invalid,
                        "processes.web.options.environment.PORT: expected a string, got 8080 (numbers are not "
                        "converted: write it in quotes)"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"environment": {"DEBUG": true}})"), ErrorKind::config_invalid,
                        "processes.web.options.environment.DEBUG: expected a string, got true"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"environment": {"X": null}})"), ErrorKind::config_invalid,
                        "processes.web.options.environment.X: expected a string, got null"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"environment": ["A=1"]})"), ErrorKind::config_invalid,
                        "processes.web.options.environment: expected an object of NAME: \"value\" strings, got an "
                        "array"));
}

TEST(ConfigEnvironment, NamesMustBeValidEnvironmentNames) {
  EXPECT_TRUE(FailsWith(web_with_options(R"({"environment": {"FOO=BAR": "1"}})"), ErrorKind::config_invalid,
                        "processes.web.options.environment.FOO=BAR: a variable name must not contain '=' (write "
                        "\"NAME\": \"value\")"));
  EXPECT_TRUE(FailsWith(web_with_options(R"({"environment": {"": "1"}})"), ErrorKind::config_invalid,
                        "processes.web.options.environment: a variable name must not be empty"));
  EXPECT_TRUE(FailsAt(web_with_options(R"({"environment": {"A\u0000B": "1"}})"),
                      "processes.web.options.environment.A\\u0000B", {"contains a NUL byte"}));
  EXPECT_TRUE(FailsAt(web_with_options(R"({"environment": {"A": "1\u00002"}})"), "processes.web.options.environment.A",
                      {"contains a NUL byte"}));
}

TEST(ConfigEnvironment, WithEnvironmentFileOnlyShellNames) {
  // The shell that sources the file sets these after it; it can set only
  // shell variable names (and dash drops others from what it passes on).
  EXPECT_TRUE(FailsWith(web_with_options(R"({"environment_file": ".env", "environment": {"OK_1": "", "log4j.level": "x"}})"),
                        ErrorKind::config_invalid,
                        "processes.web.options.environment.log4j.level: not a shell variable name (letters, digits "
                        "and '_', not starting with a digit), which the shell that sources environment_file cannot set"));
  EXPECT_TRUE(FailsAt(web_with_options(R"({"environment_file": ".env", "environment": {"1ST": "x"}})"),
                      "processes.web.options.environment.1ST", {"not a shell variable name"}));
  Config config = pymanager::parse_config(
      web_with_options(R"({"environment_file": ".env", "environment": {"_private": "x", "Mixed_9": "y"}})"), builtins());
  EXPECT_EQ(config.processes[0].environment.size(), 2u);
}

// ---------------------------------------------------------------------------
// options.environment reaches the child (make_launch_plan, then a real
// fork/exec of `env -0`, which writes the environment it got byte for byte).

namespace {

class LaunchEnvironment : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/launch_env.XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    ASSERT_NE(::mkdtemp(buffer.data()), nullptr);
    dir_ = buffer.data();
    ::setenv("PM_TEST_INHERITED", "from the test process", 1);
  }
  void TearDown() override {
    ::unsetenv("PM_TEST_INHERITED");
    for (const auto& file : files_) ::unlink(file.c_str());
    ::rmdir(dir_.c_str());
  }

  std::string write(const std::string& name, const std::string& content) {
    std::string path = dir_ + "/" + name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << content;
    files_.push_back(path);
    return path;
  }

  // Runs `plan` with its stdout in a file and returns the NAME=value
  // entries `env -0` printed. The child is waited for with a bound and
  // killed (by its pid) if it overstays it.
  std::vector<std::string> run(const pymanager::LaunchPlan& plan) {
    std::string out_path = dir_ + "/out." + std::to_string(runs_++);
    files_.push_back(out_path);
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    EXPECT_GE(out, 0);
    // Everything the child needs is built before fork: it only calls
    // async-signal-safe functions.
    std::vector<char*> argv, envp;
    for (const auto& a : plan.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (const auto& e : plan.envp) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
      if (::dup2(out, 1) < 0 || ::chdir(plan.working_directory.c_str()) != 0) ::_exit(126);
      ::execve(plan.path.c_str(), argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(out);
    EXPECT_GT(pid, 0);
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    pid_t reaped = 0;
    while ((reaped = ::waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (reaped == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ADD_FAILURE() << "the child did not exit within 30 s";
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
    std::ifstream in(out_path, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> entries;
    std::size_t start = 0;
    for (std::size_t nul; (nul = text.find('\0', start)) != std::string::npos; start = nul + 1) {
      entries.push_back(text.substr(start, nul - start));
    }
    return entries;
  }

  // Every value of `name` in `entries` (more than one would be a bug).
  static std::vector<std::string> values(const std::vector<std::string>& entries, const std::string& name) {
    std::vector<std::string> out;
    for (const auto& entry : entries) {
      if (entry.compare(0, name.size() + 1, name + "=") == 0) out.push_back(entry.substr(name.size() + 1));
    }
    return out;
  }

  static pymanager::ProcessSpec env_process() {
    pymanager::ProcessSpec spec;
    spec.name = "web";
    spec.executable = "env";
    spec.arguments = {"-0"};
    return spec;
  }

  std::string dir_;
  std::vector<std::string> files_;
  int runs_ = 0;
};

// Quotes, `$`, a backslash, a backtick, a newline, a semicolon: nothing a shell would
// interpret may change it on the way.
const std::string kTrickyValue = "a b  'single' \"double\" $HOME ${X} \\n `id` ;exit 3\nsecond line\t-- end";
using Strings = std::vector<std::string>;

}  // namespace

TEST_F(LaunchEnvironment, OverridesTheInheritedAndTheExtraEnvironment) {
  Config config;
  config.base_directory = dir_;
  pymanager::ProcessSpec spec = env_process();
  spec.environment = {{"PM_TEST_INHERITED", "from the config"},
                      {"PM_TEST_EXTRA", "from options.environment"},
                      {"PM_TEST_TRICKY", kTrickyValue},
                      {"log4j.level", "DEBUG"}};
  auto plan = pymanager::make_launch_plan(spec, config, {"PM_TEST_EXTRA=from extra_environment", "PM_TEST_ONLY_EXTRA=1"});
  auto entries = run(plan);
  EXPECT_EQ(values(entries, "PM_TEST_INHERITED"), Strings{"from the config"});
  EXPECT_EQ(values(entries, "PM_TEST_EXTRA"), Strings{"from options.environment"});
  EXPECT_EQ(values(entries, "PM_TEST_ONLY_EXTRA"), Strings{"1"});
  EXPECT_EQ(values(entries, "PM_TEST_TRICKY"), Strings{kTrickyValue});
  EXPECT_EQ(values(entries, "log4j.level"), Strings{"DEBUG"}) << "without a shell in between, any name passes";
}

TEST_F(LaunchEnvironment, OverridesWhatTheEnvironmentFileSets) {
  write("app.env", "FROM_FILE='file value'\nPM_TEST_OVERRIDDEN=from-the-file\nPM_TEST_INHERITED=from-the-file\n");
  Config config;
  config.base_directory = dir_;
  pymanager::ProcessSpec spec = env_process();
  spec.environment_file = "app.env";
  spec.environment = {{"PM_TEST_OVERRIDDEN", kTrickyValue}, {"PM_TEST_INHERITED", "from the config"},
                      {"PM_TEST_DASHES", "--"}, {"PM_TEST_EMPTY", ""}};
  auto entries = run(pymanager::make_launch_plan(spec, config));
  EXPECT_EQ(values(entries, "FROM_FILE"), Strings{"file value"}) << "the file is still sourced";
  EXPECT_EQ(values(entries, "PM_TEST_OVERRIDDEN"), Strings{kTrickyValue});
  EXPECT_EQ(values(entries, "PM_TEST_INHERITED"), Strings{"from the config"});
  EXPECT_EQ(values(entries, "PM_TEST_DASHES"), Strings{"--"}) << "a value \"--\" does not end the assignments";
  EXPECT_EQ(values(entries, "PM_TEST_EMPTY"), Strings{""});

  // Without options.environment the file's values stand, and the command's
  // own arguments (here one that is "--") reach it unchanged.
  spec.environment.clear();
  spec.executable = "/bin/sh";
  spec.arguments = {"-c", "printf '%s\\0' \"PM_ARG=$1\" \"PM_TEST_OVERRIDDEN=$PM_TEST_OVERRIDDEN\"", "sh", "--"};
  entries = run(pymanager::make_launch_plan(spec, config));
  EXPECT_EQ(values(entries, "PM_TEST_OVERRIDDEN"), Strings{"from-the-file"});
  EXPECT_EQ(values(entries, "PM_ARG"), Strings{"--"});
}

TEST_F(LaunchEnvironment, PortPlaceholdersInValuesAreExpandedBeforeParsing) {
  // The front-ends expand ${port:NAME} in every string of the JSON first.
  pymanager::PortAllocator ports;
  Json json = parse_json(R"({"processes": {"web": {"executable": "env", "arguments": ["-0"],
      "options": {"environment": {"PM_TEST_URL": "http://127.0.0.1:${port:api}/", "PM_TEST_PORT": "${port:api}"}}}}})");
  pymanager::expand_ports(json, ports);
  Config config = pymanager::parse_config(json, builtins());
  config.base_directory = dir_;
  const std::string port = std::to_string(*ports.find("api"));
  auto entries = run(pymanager::make_launch_plan(config.processes[0], config));
  EXPECT_EQ(values(entries, "PM_TEST_URL"), Strings{"http://127.0.0.1:" + port + "/"});
  EXPECT_EQ(values(entries, "PM_TEST_PORT"), Strings{port}) << "still a string, not a number";
}
