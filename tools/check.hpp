// `pymanager check` and `pymanager schema`: a config validated without
// launching anything, and the JSON Schema of configs.
//
//   pymanager check [-f FILE] [--strict]
//
// check reads the file as a start would (the same load_config: `${port:NAME}`
// expanded, every key and verifier argument checked, plugins loaded, the
// dependency graph resolved) and, when that fails, prints the same message
// and exits with the same code as a start (1-5). Then it works out what each
// launch would execute (make_launch_plan, as the Manager does: the
// executable found, the working directory and environment_file present),
// and prints what would run: the order or the graph's waves, each resolved
// command with its verifiers, and the ports. A launch that would fail now is
// a warning with the start's own message (a step before it may create what
// it needs), and an error with --strict.
#ifndef PYMANAGER_TOOLS_CHECK_HPP
#define PYMANAGER_TOOLS_CHECK_HPP

#include <algorithm>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "pymanager/config_schema.hpp"
#include "pymanager/pymanager.hpp"
#include "tools/ctl.hpp"

namespace pymanager_tool {

const char kCheckUsageText[] =
    "usage: pymanager check [-f FILE] [--strict]\n"
    "\n"
    "Validates a config without launching anything: the keys, the verifiers and\n"
    "their arguments, plugins, the dependency graph. Prints what would run (the\n"
    "order or the graph, each resolved command and its verifiers, the ports).\n"
    "Exits 0, or as a start would (1 not found, 2 unreadable, 3 not JSON, 4 no\n"
    "processes, 5 invalid) with the same message.\n"
    "\n"
    "  -f, --file FILE  the config (default: pymanager.json)\n"
    "  --strict         a launch that would fail now (an executable not found, a\n"
    "                   missing working_directory or environment_file) is an\n"
    "                   error (exit 5), not a warning\n";

/// The shell-like text of a command line: words with spaces or quotes quoted.
inline std::string command_text(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& word : argv) {
    const bool plain = !word.empty() && word.find_first_of(" \t\n'\"\\$`*?;&|<>()[]{}#~") == std::string::npos;
    std::string quoted = "'";
    for (char c : word) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    out += (out.empty() ? "" : " ") + (plain ? word : quoted + "'");
  }
  return out;
}

inline int run_check(const std::vector<std::string>& args) {
  std::string file = "pymanager.json";
  bool strict = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kCheckUsageText;
      return 0;
    } else if ((arg == "-f" || arg == "--file") && i + 1 < args.size()) {
      file = args[++i];
    } else if (arg.rfind("--file=", 0) == 0) {
      file = arg.substr(7);
    } else if (arg == "--strict") {
      strict = true;
    } else {
      std::cerr << "pymanager check: " << (arg == "-f" || arg == "--file" ? "option " + arg + " needs a value" : "unrecognized argument: " + arg)
                << "\n"
                << kCheckUsageText;
      return 2;
    }
  }
  // What a start would say, in the same words and on the same stream.
  const auto say = pymanager::log_to_stderr;
  pymanager::LoadedConfig loaded;
  try {
    loaded = pymanager::load_config(file, pymanager::builtin_verifiers());
  } catch (const pymanager::Error& e) {
    say(e.what());
    return pymanager::exit_code_for(e.kind());
  }
  for (const auto& warning : loaded.warnings()) say(warning);
  const pymanager::Config& config = loaded.config;
  const auto environment = loaded.ports->environment();

  // What each launch would execute, or why it could not start now.
  std::vector<std::optional<pymanager::LaunchPlan>> plans;
  int problems = 0;
  for (const auto& spec : config.processes) {
    try {
      plans.emplace_back(pymanager::make_launch_plan(spec, config, environment));
    } catch (const pymanager::Error& e) {
      plans.emplace_back(std::nullopt);
      ++problems;
      say(std::string(strict ? "" : "warning: ") + e.what() + (strict ? "" : " (a start would fail there unless an earlier step creates it)"));
    }
  }

  const std::size_t n = config.processes.size();
  std::cout << file << ": valid, " << n << (n == 1 ? " process" : " processes") << "\n";
  if (!config.ports.empty()) {
    std::cout << "ports: " << describe_ports(config.ports) << " (reserved for this check only; each run picks its own)\n";
  }
  for (const auto& plugin : config.plugins) std::cout << "plugin: " << plugin.path << " (module " << plugin.module << ")\n";
  if (config.uses_dependencies()) {
    const pymanager::LaunchScheduler graph(config);
    const std::vector<std::size_t> wave = graph.chain_depths();
    const std::size_t waves = graph.chain_length();
    std::cout << "start: a dependency graph in " << waves << (waves == 1 ? " wave" : " waves")
              << " (each process starts once its dependencies are met; a wave's processes start together)\n";
    std::vector<std::vector<std::size_t>> members(waves + 1);
    for (std::size_t i = 0; i < n; ++i) members[wave[i]].push_back(i);
    for (std::size_t w = 1; w <= waves; ++w) {
      std::cout << "  wave " << w << ":";
      bool first = true;
      for (std::size_t i : members[w]) {
        std::cout << (first ? " " : ", ") << config.processes[i].name;
        first = false;
        const auto& deps = config.processes[i].depends_on;
        if (deps && !deps->empty()) {
          std::cout << " (after";
          for (std::size_t k = 0; k < deps->size(); ++k) {
            std::cout << (k ? ", " : " ") << (*deps)[k].name;
            if ((*deps)[k].condition == pymanager::DependencyCondition::started) std::cout << " started";
          }
          std::cout << ")";
        }
      }
      std::cout << "\n";
    }
  } else {
    std::cout << "start: in file order, each once the previous one's verifier passed\n";
  }
  std::cout << "processes:\n";
  for (std::size_t i = 0; i < n; ++i) {
    const auto& spec = config.processes[i];
    std::cout << "  " << (i + 1) << ". " << spec.name << "\n";
    if (plans[i]) {
      std::cout << "     command: " << command_text(plans[i]->argv) << "\n";
      if (plans[i]->path != plans[i]->argv.front()) std::cout << "     program: " << plans[i]->path << "\n";
      if (spec.working_directory) std::cout << "     working directory: " << plans[i]->working_directory << "\n";
    } else {
      std::vector<std::string> argv = {spec.executable};
      argv.insert(argv.end(), spec.arguments.begin(), spec.arguments.end());
      std::cout << "     command: " << command_text(argv) << "  (cannot start now: see above)\n";
    }
    for (const auto& v : spec.verifiers) {
      std::cout << "     " << v.key << ": " << v.type;
      if (!v.arguments.empty()) std::cout << " " << v.arguments.dump();
      std::cout << "\n";
    }
    if (spec.verifiers.empty()) std::cout << "     ready once spawned (no verifier)\n";
  }
  if (strict && problems > 0) return 5;
  return 0;
}

/// `pymanager schema`: the config's JSON Schema on standard output.
inline int run_schema(const std::vector<std::string>& args) {
  if (!args.empty() && (args[0] == "-h" || args[0] == "--help")) {
    std::cout << "usage: pymanager schema\n\nPrints the JSON Schema (draft 2020-12) of pymanager config files.\n";
    return 0;
  }
  if (!args.empty()) {
    std::cerr << "pymanager schema: unrecognized argument: " << args[0] << "\n";
    return 2;
  }
  std::cout << pymanager::config_schema().dump(2) << "\n";
  return 0;
}

}  // namespace pymanager_tool

#endif  // PYMANAGER_TOOLS_CHECK_HPP
