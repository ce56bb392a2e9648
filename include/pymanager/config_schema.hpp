// pymanager: the JSON Schema (draft 2020-12) of a config file, for editors
// and scripts: every key with its type, default and description, and the
// arguments of each built-in verifier type. `pymanager schema` prints it.
//
//   {"$schema": "https://pymanager.invalid/config.schema.json", ...}   // accepted, ignored
//
// What a schema cannot say is checked only by the parser (and by
// `pymanager check`): that a verifier type is listed under `modules`, that
// `depends_on` names exist and make no cycle, that a plugin loads, that a
// shell variable name in `environment` is one `environment_file` may
// overwrite, that a URL, an IPv6 address, a status range ("299-200") or a
// regular expression is well formed, that a `${port:...}` inside a longer
// string is, that no string holds a NUL, and that nesting stays within 64
// levels. A number written with a fraction (`1.0`) is an integer to JSON
// Schema, not to pymanager: write integers without one. Plugin verifier
// types are accepted with any arguments.
// tests/schema_test.cc keeps schema and parser in agreement.
#ifndef PYMANAGER_CONFIG_SCHEMA_HPP
#define PYMANAGER_CONFIG_SCHEMA_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <nlohmann/json.hpp>

#include "pymanager/config.hpp"
#include "pymanager/signals.hpp"

namespace pymanager {
inline namespace v1 {

namespace detail {

// Kept as JSON text: it reads as the schema it is. "$defs" holds the shapes
// used more than once.
constexpr const char kConfigSchemaText[] = R"JSON({
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://pymanager.invalid/config.schema.json",
  "title": "pymanager config",
  "description": "The processes pymanager launches, verifies and stops, and how. The original pymutils pymanager's files are valid. `${port:NAME}` anywhere in a string becomes a free port (the same for every use of NAME).",
  "type": "object",
  "additionalProperties": false,
  "required": ["processes"],
  "properties": {
    "$schema": {"type": "string", "description": "The schema this file follows, for editors. Ignored by pymanager."},
    "modules": {
      "description": "Verifier modules: module name -> the verifier classes it provides. A verifier's type is \"<module>.<class>\" and must be listed here.",
      "type": "object",
      "additionalProperties": {
        "type": "object",
        "additionalProperties": false,
        "properties": {
          "verifiers": {"type": "array", "items": {"type": "string"}, "default": [], "description": "The classes of this module that the config uses."},
          "library": {"type": "string", "minLength": 1, "description": "A verifier plugin (a shared library built with pymanager/plugin.hpp) that provides this module's classes; relative to the config file's folder."}
        }
      },
      "examples": [{"pymutils.http_verifier": {"verifiers": ["HttpOkVerifier"]}, "pymanager.verifiers": {"verifiers": ["TcpVerifier"]}}]
    },
    "default_shell": {"type": "string", "minLength": 1, "default": "/bin/sh", "description": "The shell of processes whose options.shell is true."},
    "http": {
      "description": "The HTTP API (GET /, /status, /processes/<id>, POST /restart/<id>, /stop/<id>, /start/<id>, DELETE /).",
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "enabled": {"type": "boolean", "default": false, "description": "Serve the API."},
        "port": {"default": 5001, "description": "The port to listen on; 0 picks a free one (printed at start-up and written to the state file); \"${port:NAME}\" a named free port.",
                 "anyOf": [{"type": "integer", "minimum": 0, "maximum": 65535}, {"type": "string", "pattern": "^\\$\\{port:[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\\}$"}]},
        "host": {"type": "string", "minLength": 1, "default": "127.0.0.1", "description": "The address to bind; a warning is printed when it is not a loopback address."},
        "token": {"type": "string", "minLength": 1, "description": "Every request must carry `Authorization: Bearer <token>` (also set by the environment variable PYMANAGER_TOKEN)."}
      }
    },
    "keep-alive": {"type": "boolean", "default": false, "description": "Stay up after every process has exited (until a signal or DELETE /). The original's README spelling; keep_alive wins when both are given."},
    "keep_alive": {"type": "boolean", "default": false, "description": "As keep-alive (the spelling the original reads)."},
    "graceful-time": {"$ref": "#/$defs/seconds", "default": 10, "description": "Seconds each process gets to stop after its stop signal at shutdown, before SIGKILL. graceful_time wins when both are given."},
    "graceful_time": {"$ref": "#/$defs/seconds", "default": 10, "description": "As graceful-time."},
    "restart-graceful-time": {"$ref": "#/$defs/seconds", "default": 5, "description": "Seconds a process gets to stop when it is stopped or restarted (API, ctl, Manager::restart), before SIGKILL. restart_graceful_time wins when both are given."},
    "restart_graceful_time": {"$ref": "#/$defs/seconds", "default": 5, "description": "As restart-graceful-time."},
    "messages": {
      "description": "Extra messages: process.exit (every exit with its code), verifier.fail (each failed attempt), verifier.verbose (each attempt; implies verifier.fail).",
      "type": "array",
      "items": {"enum": ["process.exit", "verifier.fail", "verifier.verbose"]},
      "default": []
    },
    "processes": {
      "description": "Process name -> process, launched in the order written (each once the previous one is verified), or as a dependency graph when any process has depends_on.",
      "type": "object",
      "minProperties": 1,
      "propertyNames": {"minLength": 1},
      "additionalProperties": {"$ref": "#/$defs/process"}
    }
  },
  "$defs": {
    "seconds": {"type": "number", "minimum": 0, "maximum": 604800, "description": "Seconds (at most a week)."},
    "port": {
      "description": "A port number, or a string of digits (what \"${port:NAME}\" becomes).",
      "anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "maxLength": 5, "pattern": "^0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"}, {"type": "string", "pattern": "^\\$\\{port:[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\\}$"}]
    },
    "status": {
      "anyOf": [{"type": "integer", "minimum": 100, "maximum": 599}, {"type": "string", "pattern": "^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$"}]
    },
    "string_map": {"type": "object", "additionalProperties": {"type": "string"}},
    "headers": {"type": "object", "propertyNames": {"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
                "additionalProperties": {"type": "string", "pattern": "^[^\\r\\n]*$"}},
    "process": {
      "type": "object",
      "additionalProperties": false,
      "required": ["executable", "arguments"],
      "properties": {
        "executable": {"type": "string", "minLength": 1, "description": "The program: a path (relative to the config's base directory, or the working directory) or a name looked up in PATH."},
        "arguments": {"type": "array", "items": {"type": "string"}, "description": "Its arguments ([] for none)."},
        "options": {"$ref": "#/$defs/options"},
        "depends_on": {
          "description": "Processes that must be verified (a list, or \"verified\") or only started (\"started\") before this one starts. Any depends_on in the file makes the start a dependency graph; [] means no dependencies.",
          "anyOf": [
            {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": true},
            {"type": "object", "propertyNames": {"minLength": 1}, "additionalProperties": {"enum": ["started", "verified"]}}
          ]
        },
        "verifier": {"$ref": "#/$defs/verifier", "description": "The check that the process is ready."},
        "verifiers": {"type": "array", "items": {"$ref": "#/$defs/verifier"}, "description": "Several checks, each passed in turn."}
      },
      "not": {"required": ["verifier", "verifiers"]}
    },
    "options": {
      "description": "How the process runs: its output, folder, environment, and how it is stopped.",
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "suppress_output": {"type": "boolean", "default": false, "description": "Do not show the process's output (still kept for the tail and the output verifier)."},
        "redirect_output": {"type": "string", "minLength": 1, "description": "Append its output to this file instead of showing it."},
        "working_directory": {"type": "string", "minLength": 1, "description": "The folder it runs in."},
        "environment_file": {"type": "string", "minLength": 1, "description": "A file of NAME=value lines added to its environment."},
        "environment": {"$ref": "#/$defs/string_map", "propertyNames": {"minLength": 1, "pattern": "^[^=]*$"}, "description": "NAME: value pairs added to its environment (after environment_file)."},
        "stop_signal": {
          "description": "The signal that asks it to stop: a name (\"SIGINT\", \"INT\") or a number.",
          "default": "SIGTERM",
          "anyOf": [{"enum": ["filled in by config_schema()"]}, {"enum": [0]}]
        },
        "graceful_time": {"$ref": "#/$defs/seconds", "description": "Its own graceful time (default: the top-level one)."},
        "shell": {
          "description": "Run `executable arguments...` through a shell: true (default_shell), or the path of a shell.",
          "default": false,
          "anyOf": [{"type": "boolean"}, {"type": "string", "minLength": 1}]
        }
      },
      "not": {"required": ["suppress_output", "redirect_output"], "properties": {"suppress_output": {"const": true}}}
    },
    "verifier": {
      "type": "object",
      "additionalProperties": false,
      "required": ["type"],
      "properties": {
        "type": {"type": "string", "description": "\"<module>.<class>\", listed under modules.", "examples": ["pymutils.http_verifier.HttpOkVerifier", "pymutils.exited_verifier.ExitedVerifier", "pymanager.verifiers.TcpVerifier", "pymanager.verifiers.HttpVerifier", "pymanager.verifiers.OutputVerifier", "pymanager.verifiers.FileVerifier", "pymanager.verifiers.CommandVerifier"]},
        "arguments": {"type": "object", "description": "The verifier's arguments (see each type)."}
      },
      "allOf": [
        {"if": {"properties": {"type": {"const": "pymutils.http_verifier.HttpOkVerifier"}}, "required": ["type"]},
         "then": {"properties": {"arguments": {"$ref": "#/$defs/args_http_ok"}}, "required": ["arguments"]}},
        {"if": {"properties": {"type": {"const": "pymutils.exited_verifier.ExitedVerifier"}}, "required": ["type"]},
         "then": {"properties": {"arguments": {"$ref": "#/$defs/args_exited"}}}},
        {"if": {"properties": {"type": {"const": "pymanager.verifiers.TcpVerifier"}}, "required": ["type"]},
         "then": {"properties": {"arguments": {"$ref": "#/$defs/args_tcp"}}, "required": ["arguments"]}},
        {"if": {"properties": {"type": {"const": "pymanager.verifiers.HttpVerifier"}}, "required": ["type"]},
         "then": {"properties": {"arguments": {"$ref": "#/$defs/args_http"}}, "required": ["arguments"]}},
        {"if": {"properties": {"type": {"const": "pymanager.verifiers.OutputVerifier"}}, "required": ["type"]},
         "then": {"properties": {"arguments": {"$ref": "#/$defs/args_output"}}, "required": ["arguments"]}},
        {"if": {"properties": {"type": {"const": "pymanager.verifiers.FileVerifier"}}, "required": ["type"]},
         "then": {"properties": {"arguments": {"$ref": "#/$defs/args_file"}}, "required": ["arguments"]}},
        {"if": {"properties": {"type": {"const": "pymanager.verifiers.CommandVerifier"}}, "required": ["type"]},
         "then": {"properties": {"arguments": {"$ref": "#/$defs/args_command"}}, "required": ["arguments"]}}
      ]
    },
    "args_http_ok": {
      "description": "pymutils.http_verifier.HttpOkVerifier: a GET answers 2xx (redirects followed).",
      "type": "object", "additionalProperties": false, "required": ["url"],
      "properties": {
        "url": {"type": "string", "pattern": "^https?://", "description": "The URL to GET."},
        "timeout": {"$ref": "#/$defs/seconds", "default": 30, "description": "Give up after this many seconds."},
        "interval": {"$ref": "#/$defs/seconds", "default": 1, "description": "The longest pause between attempts."},
        "headers": {"$ref": "#/$defs/headers", "default": {}, "description": "Request headers: token names, values without CR or LF."}
      }
    },
    "args_exited": {
      "description": "pymutils.exited_verifier.ExitedVerifier: the process exits with expect_code.",
      "type": "object", "additionalProperties": false,
      "properties": {
        "timeout": {"$ref": "#/$defs/seconds", "default": 30, "description": "Give up after this many seconds."},
        "expect_code": {"type": "integer", "minimum": -255, "maximum": 255, "default": 0, "description": "The exit code that passes (negative: killed by that signal)."}
      }
    },
    "args_tcp": {
      "description": "pymanager.verifiers.TcpVerifier: a TCP connection is accepted.",
      "type": "object", "additionalProperties": false, "required": ["port"],
      "properties": {
        "port": {"$ref": "#/$defs/port"},
        "host": {"type": "string", "maxLength": 255, "pattern": "^([A-Za-z0-9._-]{1,253}|\\[?[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\\]?)$", "default": "127.0.0.1", "description": "A host name or an IP address (localhost tries 127.0.0.1 and ::1; an IPv6 literal with or without brackets)."},
        "timeout": {"$ref": "#/$defs/seconds", "default": 30, "description": "Give up after this many seconds."},
        "interval": {"$ref": "#/$defs/seconds", "default": 1, "description": "The longest pause between attempts (1 ms during the first 10 s)."}
      }
    },
    "args_http": {
      "description": "pymanager.verifiers.HttpVerifier: the answer has one of the statuses and, with body, a body that matches.",
      "type": "object", "additionalProperties": false, "required": ["url"],
      "properties": {
        "url": {"type": "string", "pattern": "^https?://", "description": "The URL (http:// or https://)."},
        "method": {"enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"], "default": "GET", "description": "The request's method."},
        "status": {"description": "A status, a range \"200-299\", or a list of them.", "default": "200-299",
                   "anyOf": [{"$ref": "#/$defs/status"}, {"type": "array", "items": {"$ref": "#/$defs/status"}, "minItems": 1, "maxItems": 100}]},
        "body": {"type": "string", "maxLength": 4096, "description": "An ECMAScript regular expression (at most 4096 bytes) that must match somewhere in the first 16 KiB of the body."},
        "headers": {"$ref": "#/$defs/headers", "default": {}, "description": "Request headers: token names, values without CR or LF."},
        "insecure": {"type": "boolean", "default": false, "description": "https: skip certificate verification."},
        "ca_file": {"type": "string", "minLength": 1, "description": "https: a PEM bundle to trust instead of the system's."},
        "timeout": {"$ref": "#/$defs/seconds", "default": 30, "description": "Give up after this many seconds."},
        "interval": {"$ref": "#/$defs/seconds", "default": 1, "description": "The longest pause between attempts."}
      }
    },
    "args_output": {
      "description": "pymanager.verifiers.OutputVerifier: that many lines of the process's output match pattern.",
      "type": "object", "additionalProperties": false, "required": ["pattern"],
      "properties": {
        "pattern": {"type": "string", "description": "An ECMAScript regular expression, searched in each line."},
        "stream": {"enum": ["both", "stdout", "stderr"], "default": "both", "description": "The output searched."},
        "count": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 1, "description": "How many lines must match."},
        "timeout": {"$ref": "#/$defs/seconds", "default": 30, "description": "Give up after this many seconds."}
      }
    },
    "args_file": {
      "description": "pymanager.verifiers.FileVerifier: the path exists (and with non_empty, is not empty).",
      "type": "object", "additionalProperties": false, "required": ["path"],
      "properties": {
        "path": {"type": "string", "minLength": 1, "description": "Relative to the process's working directory."},
        "non_empty": {"type": "boolean", "default": false, "description": "The file must also have a size above 0."},
        "timeout": {"$ref": "#/$defs/seconds", "default": 30, "description": "Give up after this many seconds."},
        "interval": {"$ref": "#/$defs/seconds", "default": 1, "description": "The longest pause between looks."}
      }
    },
    "args_command": {
      "description": "pymanager.verifiers.CommandVerifier: the command exits 0.",
      "type": "object", "additionalProperties": false, "required": ["command"],
      "properties": {
        "command": {"description": "A list of arguments run as they are, or a string run by default_shell.",
                    "anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1, "prefixItems": [{"type": "string", "minLength": 1}]}, {"type": "string", "minLength": 1}]},
        "attempt_timeout": {"$ref": "#/$defs/seconds", "exclusiveMinimum": 0, "default": 5, "description": "An attempt that runs longer is killed (more than 0)."},
        "interval": {"$ref": "#/$defs/seconds", "default": 1, "description": "The longest pause between attempts."},
        "timeout": {"$ref": "#/$defs/seconds", "default": 30, "description": "Give up after this many seconds."}
      }
    }
  }
})JSON";

}  // namespace detail

/// The JSON Schema of a config file (draft 2020-12). The stop signals are
/// this system's: the names and numbers the parser takes (detail::stop_signal_problem).
inline nlohmann::ordered_json config_schema() {
  auto schema = nlohmann::ordered_json::parse(detail::kConfigSchemaText);
  nlohmann::ordered_json names = nlohmann::ordered_json::array();
  nlohmann::ordered_json numbers = nlohmann::ordered_json::array();
  for (const auto& name : signal_names(true)) {
    if (auto number = signal_from_name(name); number && detail::stop_signal_problem(*number).empty()) {
      names.push_back(name);
      names.push_back(name.substr(3));
    }
  }
  for (int number = 1; number <= max_signal_number(); ++number) {
    if (detail::stop_signal_problem(number).empty()) numbers.push_back(number);
  }
  auto& any_of = schema["$defs"]["options"]["properties"]["stop_signal"]["anyOf"];
  any_of[0]["enum"] = names;
  any_of[1]["enum"] = numbers;
  return schema;
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_CONFIG_SCHEMA_HPP
