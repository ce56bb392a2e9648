// The config schema (pymanager/config_schema.hpp) and the parser agree:
// - every key the parser reads is in the schema at the same place, and every
//   key the schema lists is one the parser reads (the parser's ObjectReaders
//   record what they are asked for: detail::key_log);
// - a set of valid and invalid configs gets the same verdict from the parser
//   and from a JSON Schema validator that is not ours (Debian's
//   python3-jsonschema, Draft202012Validator, which also checks the schema
//   against the draft 2020-12 meta-schema).
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pymanager/config_schema.hpp"
#include "pymanager/pymanager.hpp"
#include "tests/test_util.hpp"

namespace {

using nlohmann::ordered_json;

const char* kModules = R"("modules": {
    "pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]},
    "pymutils.exited_verifier": {"verifiers": ["ExitedVerifier"]},
    "pymanager.verifiers": {"verifiers": ["TcpVerifier", "HttpVerifier", "OutputVerifier", "FileVerifier", "CommandVerifier"]}
  })";

/// The verifier type of each process of the full config, by process name.
const std::map<std::string, std::string> kTypes = {
    {"http_ok", "pymutils.http_verifier.HttpOkVerifier"}, {"exited", "pymutils.exited_verifier.ExitedVerifier"},
    {"tcp", "pymanager.verifiers.TcpVerifier"},           {"http", "pymanager.verifiers.HttpVerifier"},
    {"output", "pymanager.verifiers.OutputVerifier"},     {"file", "pymanager.verifiers.FileVerifier"},
    {"command", "pymanager.verifiers.CommandVerifier"},   {"list", "pymanager.verifiers.TcpVerifier"},
};

/// A config that reaches every object the parser reads: the top level,
/// http, a module, a process with options, and one verifier of each type
/// (one of them in a `verifiers` list).
std::string full_config() {
  return std::string("{\"$schema\": \"https://pymanager.invalid/config.schema.json\", ") + kModules + R"J(,
    "default_shell": "/bin/sh", "http": {"enabled": false, "port": 0}, "keep_alive": true, "graceful_time": 1,
    "restart_graceful_time": 1, "messages": ["process.exit"],
    "processes": {
      "http_ok": {"executable": "true", "arguments": [], "options": {"suppress_output": true}, "depends_on": [],
                  "verifier": {"type": "pymutils.http_verifier.HttpOkVerifier", "arguments": {"url": "http://127.0.0.1:1/"}}},
      "exited": {"executable": "true", "arguments": [], "verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}},
      "tcp": {"executable": "true", "arguments": [], "verifier": {"type": "pymanager.verifiers.TcpVerifier", "arguments": {"port": 1}}},
      "http": {"executable": "true", "arguments": [], "verifier": {"type": "pymanager.verifiers.HttpVerifier", "arguments": {"url": "http://127.0.0.1:1/"}}},
      "output": {"executable": "true", "arguments": [], "verifier": {"type": "pymanager.verifiers.OutputVerifier", "arguments": {"pattern": "x"}}},
      "file": {"executable": "true", "arguments": [], "verifier": {"type": "pymanager.verifiers.FileVerifier", "arguments": {"path": "x"}}},
      "command": {"executable": "true", "arguments": [], "verifier": {"type": "pymanager.verifiers.CommandVerifier", "arguments": {"command": ["true"]}}},
      "list": {"executable": "true", "arguments": [], "verifiers": [{"type": "pymanager.verifiers.TcpVerifier", "arguments": {"port": 1}}]}
    }})J";
}

/// The schema object at `pointer` ("#/$defs/process"), following one $ref.
const ordered_json& at(const ordered_json& schema, const std::string& pointer) {
  return schema.at(ordered_json::json_pointer(pointer.substr(1)));
}
const ordered_json& deref(const ordered_json& schema, const ordered_json& node) {
  return node.contains("$ref") ? at(schema, node["$ref"].get<std::string>()) : node;
}

/// Where in the schema the object at a parser path is described ("" for the
/// top level, "processes.tcp.verifier.arguments" -> "#/$defs/args_tcp").
std::string schema_pointer(const ordered_json& schema, const std::string& path) {
  if (path.empty()) return "#";
  if (path == "http") return "#/properties/http";
  if (path.rfind("modules.", 0) == 0) return "#/properties/modules/additionalProperties";
  if (path.rfind("processes.", 0) != 0) return "";
  std::string rest = path.substr(std::string("processes.").size());
  const std::string process = rest.substr(0, rest.find('.'));
  rest = rest.find('.') == std::string::npos ? "" : rest.substr(rest.find('.') + 1);
  if (rest.empty()) return "#/$defs/process";
  if (rest == "options") return "#/$defs/options";
  const bool verifier = rest == "verifier" || (rest.rfind("verifiers[", 0) == 0 && rest.back() == ']');
  if (verifier) return "#/$defs/verifier";
  const bool arguments = rest == "verifier.arguments" ||
                         (rest.rfind("verifiers[", 0) == 0 && rest.size() > 10 && rest.substr(rest.size() - 10) == ".arguments");
  if (!arguments || kTypes.count(process) == 0) return "";
  // The verifier's allOf: the `then` whose `if` names this process's type.
  for (const auto& rule : at(schema, "#/$defs/verifier")["allOf"]) {
    if (rule["if"]["properties"]["type"]["const"] == kTypes.at(process)) {
      return rule["then"]["properties"]["arguments"]["$ref"].get<std::string>();
    }
  }
  return "";
}

TEST(Schema, EveryKeyTheParserReadsIsInTheSchemaAndNoOther) {
  const ordered_json schema = pymanager::config_schema();
  std::vector<std::pair<std::string, std::string>> log;
  pymanager::detail::key_log() = &log;
  pymanager::Config config;
  try {
    config = pymanager::parse_config(ordered_json::parse(full_config()), pymanager::builtin_verifiers());
  } catch (...) {
    pymanager::detail::key_log() = nullptr;
    throw;
  }
  pymanager::detail::key_log() = nullptr;
  ASSERT_EQ(config.processes.size(), kTypes.size());

  // What the parser asked for, by schema object.
  std::map<std::string, std::set<std::string>> read;
  for (const auto& [path, key] : log) {
    const std::string pointer = schema_pointer(schema, path);
    ASSERT_FALSE(pointer.empty()) << "the parser reads an object the test does not place in the schema: " << path;
    read[pointer].insert(key);
  }
  // Every object: the top level, http, a module, a process, its options, a
  // verifier and the arguments of each of the seven types.
  EXPECT_EQ(read.size(), 6u + 7u) << "objects the parser read: " << read.size();
  for (const auto& [pointer, keys] : read) {
    const ordered_json& node = deref(schema, at(schema, pointer));
    ASSERT_TRUE(node.contains("properties")) << pointer;
    std::set<std::string> listed;
    for (const auto& item : node["properties"].items()) listed.insert(item.key());
    for (const auto& key : keys) EXPECT_TRUE(listed.count(key)) << pointer << ": the parser reads '" << key << "', the schema does not list it";
    for (const auto& key : listed) EXPECT_TRUE(keys.count(key)) << pointer << ": the schema lists '" << key << "', the parser never reads it";
    EXPECT_EQ(node.value("additionalProperties", true), false) << pointer << ": the parser rejects unknown keys";
  }
}

struct Case {
  const char* name;
  bool valid;
  std::string processes;  ///< the "processes" object's body
  std::string top = "";   ///< more top-level keys
};

const char* kSleeper = R"("a": {"executable": "sleep", "arguments": ["1"]})";

std::string process_with(const std::string& extra) {
  return R"("a": {"executable": "sleep", "arguments": ["1"], )" + extra + "}";
}
std::string verified_by(const std::string& type, const std::string& arguments) {
  return process_with(R"("verifier": {"type": ")" + type + R"(", "arguments": )" + arguments + "}");
}

std::vector<Case> cases() {
  const std::string tcp = "pymanager.verifiers.TcpVerifier", http = "pymanager.verifiers.HttpVerifier";
  return {
      {"seed_minimal", true, kSleeper},
      {"schema_key", true, kSleeper, R"("$schema": "https://pymanager.invalid/config.schema.json")"},
      {"hyphen_spellings", true, kSleeper, R"("keep-alive": true, "graceful-time": 2.5, "restart-graceful-time": 1)"},
      {"http_placeholder_port", true, kSleeper, R"("http": {"enabled": true, "port": "${port:api}"})"},
      {"depends_on_object", true, std::string(kSleeper) + R"(, "b": {"executable": "sleep", "arguments": [], "depends_on": {"a": "started"}})"},
      {"stop_signal_name", true, process_with(R"("options": {"stop_signal": "INT", "graceful_time": 0.5})")},
      {"stop_signal_number", true, process_with(R"("options": {"stop_signal": 2})")},
      {"environment", true, process_with(R"("options": {"environment": {"MODE": "test"}, "shell": true})")},
      {"tcp_placeholder", true, verified_by(tcp, R"({"port": "${port:db}"})")},
      {"tcp_digits", true, verified_by(tcp, R"({"port": "5432", "host": "localhost"})")},
      {"http_statuses", true, verified_by(http, R"({"url": "http://127.0.0.1:1/", "status": [200, "300-399"], "method": "HEAD"})")},
      {"command_string", true, verified_by("pymanager.verifiers.CommandVerifier", R"({"command": "true"})")},
      {"full", true, "", ""},  // full_config(), below
      {"unknown_top_key", false, kSleeper, R"("keepalive": true)"},
      {"schema_key_not_a_string", false, kSleeper, R"("$schema": 5)"},
      {"no_processes", false, ""},
      {"missing_executable", false, R"("a": {"arguments": []})"},
      {"missing_arguments", false, R"("a": {"executable": "sleep"})"},
      {"arguments_not_a_list", false, R"("a": {"executable": "sleep", "arguments": "1"})"},
      {"empty_executable", false, R"("a": {"executable": "", "arguments": []})"},
      {"misspelt_option", false, process_with(R"("options": {"redirect_ouput": "x.log"})")},
      {"empty_redirect", false, process_with(R"("options": {"redirect_output": ""})")},
      {"negative_graceful_time", false, kSleeper, R"("graceful_time": -1)"},
      {"graceful_time_over_a_week", false, kSleeper, R"("graceful_time": 700000)"},
      {"http_port_out_of_range", false, kSleeper, R"("http": {"port": 70000})"},
      {"http_port_text", false, kSleeper, R"("http": {"port": "80"})"},
      {"unknown_message", false, kSleeper, R"("messages": ["process.exits"])"},
      {"verifier_without_type", false, process_with(R"("verifier": {"arguments": {}})")},
      {"verifier_and_verifiers", false,
       process_with(R"("verifier": {"type": "pymutils.exited_verifier.ExitedVerifier"}, "verifiers": [])")},
      {"tcp_without_port", false, verified_by(tcp, "{}")},
      {"tcp_port_zero", false, verified_by(tcp, R"({"port": 0})")},
      {"tcp_unknown_argument", false, verified_by(tcp, R"({"port": 1, "hots": "x"})")},
      {"http_status_out_of_range", false, verified_by(http, R"({"url": "http://127.0.0.1:1/", "status": 700})")},
      {"http_unknown_method", false, verified_by(http, R"({"url": "http://127.0.0.1:1/", "method": "FETCH"})")},
      {"http_not_a_url", false, verified_by(http, R"({"url": "ftp://127.0.0.1/"})")},
      {"output_count_zero", false, verified_by("pymanager.verifiers.OutputVerifier", R"({"pattern": "x", "count": 0})")},
      {"output_bad_stream", false, verified_by("pymanager.verifiers.OutputVerifier", R"({"pattern": "x", "stream": "err"})")},
      {"exited_code_out_of_range", false, verified_by("pymutils.exited_verifier.ExitedVerifier", R"({"expect_code": 300})")},
      {"file_without_path", false, verified_by("pymanager.verifiers.FileVerifier", "{}")},
      {"command_empty_list", false, verified_by("pymanager.verifiers.CommandVerifier", R"({"command": []})")},
      {"depends_on_unknown_kind", false, std::string(kSleeper) + R"(, "b": {"executable": "sleep", "arguments": [], "depends_on": {"a": "ready"}})"},
      {"depends_on_a_string", false, std::string(kSleeper) + R"(, "b": {"executable": "sleep", "arguments": [], "depends_on": "a"})"},
      {"depends_on_twice", false, std::string(kSleeper) + R"(, "b": {"executable": "sleep", "arguments": [], "depends_on": ["a", "a"]})"},
      {"environment_number", false, process_with(R"("options": {"environment": {"PORT": 5432}})")},
      {"environment_name_with_equals", false, process_with(R"("options": {"environment": {"A=B": "x"}})")},
      {"stop_signal_zero", false, process_with(R"("options": {"stop_signal": 0})")},
      {"empty_shell", false, process_with(R"("options": {"shell": ""})")},
      // What a second reader found the first schema let through.
      {"stop_signal_realtime_number", true, process_with(R"("options": {"stop_signal": 40})")},
      {"stop_signal_bare_name", true, process_with(R"("options": {"stop_signal": "HUP"})")},
      {"stop_signal_suspends", false, process_with(R"("options": {"stop_signal": "SIGSTOP"})")},
      {"stop_signal_ignored_number", false, process_with(R"("options": {"stop_signal": 17})")},
      {"stop_signal_libc_number", false, process_with(R"("options": {"stop_signal": 33})")},
      {"stop_signal_unknown_name", false, process_with(R"("options": {"stop_signal": "SIGFOO"})")},
      {"stop_signal_number_as_text", false, process_with(R"("options": {"stop_signal": "15"})")},
      {"suppress_and_redirect", false, process_with(R"("options": {"suppress_output": true, "redirect_output": "x.log"})")},
      {"redirect_without_suppress", true, process_with(R"("options": {"suppress_output": false, "redirect_output": "x.log"})")},
      {"tcp_port_text_zero", false, verified_by(tcp, R"({"port": "0"})")},
      {"tcp_port_text_too_big", false, verified_by(tcp, R"({"port": "99999"})")},
      {"tcp_port_text_leading_zeros", true, verified_by(tcp, R"({"port": "00080"})")},
      {"tcp_port_text_too_long", false, verified_by(tcp, R"({"port": "000080"})")},
      {"tcp_host_with_a_space", false, verified_by(tcp, R"({"port": 1, "host": "foo bar"})")},
      {"tcp_host_ipv6", true, verified_by(tcp, R"({"port": 1, "host": "[::1]"})")},
      {"http_header_name_not_a_token", false, verified_by(http, R"({"url": "http://127.0.0.1:1/", "headers": {"a b": "x"}})")},
      {"http_header_value_with_newline", false, verified_by(http, R"({"url": "http://127.0.0.1:1/", "headers": {"X-A": "1\r\nX-B: 2"}})")},
      {"http_body_too_long", false, verified_by(http, R"({"url": "http://127.0.0.1:1/", "body": ")" + std::string(4097, 'a') + R"("})")},
      {"command_attempt_timeout_zero", false, verified_by("pymanager.verifiers.CommandVerifier", R"({"command": "true", "attempt_timeout": 0})")},
      {"http_port_shell_form", false, kSleeper, R"("http": {"port": "${port:-a}"})"},
      {"http_port_bad_placeholder_name", false, kSleeper, R"("http": {"port": "${port:.a}"})"},
  };
}

std::string config_text(const Case& c) {
  if (std::string(c.name) == "full") return full_config();
  return std::string("{") + kModules + (c.top.empty() ? "" : ", " + c.top) + ", \"processes\": {" + c.processes + "}}";
}

TEST(Schema, ValidAndInvalidConfigsGetTheSameVerdictFromTheParserAndAValidator) {
  const std::string dir = testutil::make_temp_dir();
  testutil::write_file(dir + "/schema.json", pymanager::config_schema().dump(2));
  std::vector<std::string> argv = {"/usr/bin/python3", testutil::runfile("tests/helpers/validate_schema.py"),
                                   dir + "/schema.json"};
  const auto all = cases();
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::string file = dir + "/" + all[i].name + ".json";
    testutil::write_file(file, config_text(all[i]));
    argv.push_back(file);
  }
  auto result = testutil::run(argv, dir, std::chrono::milliseconds(60000));
  ASSERT_EQ(result.exit_code, 0) << "the validator (Debian's python3-jsonschema: apt-get install python3-jsonschema) "
                                    "failed, or the schema is not valid draft 2020-12:\n"
                                 << result.err;
  std::vector<std::string> verdicts;
  std::istringstream lines(result.out);
  for (std::string line; std::getline(lines, line);) verdicts.push_back(line);
  ASSERT_EQ(verdicts.size(), all.size()) << result.out;

  for (std::size_t i = 0; i < all.size(); ++i) {
    const Case& c = all[i];
    std::string parser_says = "valid";
    try {
      pymanager::load_config_json(ordered_json::parse(config_text(c)), c.name, pymanager::builtin_verifiers());
    } catch (const pymanager::Error& e) {
      parser_says = std::string("invalid: ") + e.what();
    }
    const bool schema_valid = verdicts[i] == "valid";
    const bool parser_valid = parser_says == "valid";
    EXPECT_EQ(parser_valid, c.valid) << c.name << ": the parser says " << parser_says;
    EXPECT_EQ(schema_valid, c.valid) << c.name << ": the schema says " << verdicts[i];
  }
}

TEST(Schema, EveryDescribedKeyHasADescriptionAndDefaultsHaveTheirType) {
  // What an editor shows on hover: a description for each key of each object.
  const ordered_json schema = pymanager::config_schema();
  std::vector<std::string> objects = {"#", "#/properties/http", "#/properties/modules/additionalProperties",
                                      "#/$defs/process", "#/$defs/options"};
  for (const auto& item : schema["$defs"].items()) {
    if (item.key().rfind("args_", 0) == 0) objects.push_back("#/$defs/" + item.key());
  }
  for (const auto& pointer : objects) {
    const ordered_json& node = at(schema, pointer);
    for (const auto& property : node["properties"].items()) {
      const ordered_json& p = property.value();
      const bool described = p.contains("description") || deref(schema, p).contains("description");
      EXPECT_TRUE(described) << pointer << "/" << property.key() << " has no description";
    }
  }
  EXPECT_EQ(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

}  // namespace
