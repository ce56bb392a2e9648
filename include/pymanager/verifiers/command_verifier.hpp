// pymanager: pymanager.verifiers.CommandVerifier — passes once a command
// exits 0 (`pg_isready -p ${port:db}`, `redis-cli -p ${port:redis} ping`).
// The command runs through the keeper like every other child: in the
// process's working directory and environment, in a process group of its
// own, killed with that group when an attempt takes longer than
// `attempt_timeout`, and whatever it leaves behind is killed too.
#ifndef PYMANAGER_VERIFIERS_COMMAND_VERIFIER_HPP
#define PYMANAGER_VERIFIERS_COMMAND_VERIFIER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

class CommandVerifier : public Verifier {
 public:
  static constexpr const char* kName = "pymanager.verifiers.CommandVerifier";

  /// `command` (required): a list of arguments (the first one found in PATH
  /// or relative to pymanager's directory), or one string run by the
  /// config's `default_shell` with `-c`; `attempt_timeout`: seconds one run
  /// may take before it is killed (default 5); `interval`: the longest
  /// pause between runs (default 1); `timeout`: seconds (default 30).
  CommandVerifier(std::vector<std::string> argv, bool shell, double attempt_timeout, double interval, double timeout)
      : argv_(std::move(argv)), shell_(shell), attempt_timeout_(attempt_timeout), interval_(interval), timeout_(timeout) {}

  static std::shared_ptr<const Verifier> from_arguments(const nlohmann::json& arguments, const std::string& path) {
    detail::ObjectReader<nlohmann::json> reader(arguments, path);
    const nlohmann::json* command = reader.member("command");
    const std::string command_path = reader.path_of("command");
    std::vector<std::string> argv;
    bool shell = false;
    if (command == nullptr) reader.missing("command", "required key is missing");
    if (command->is_string()) {
      argv = {command->get<std::string>()};
      detail::check_no_nul(argv[0], command_path);
      shell = true;
    } else if (command->is_array()) {
      for (std::size_t k = 0; k < command->size(); ++k) {
        const auto& item = (*command)[k];
        const std::string item_path = command_path + "[" + std::to_string(k) + "]";
        if (!item.is_string()) detail::throw_config_error(item_path, "expected a string, got " + detail::describe_json_type(item));
        detail::check_no_nul(item.get_ref<const std::string&>(), item_path);
        argv.push_back(item.get<std::string>());
      }
    } else {
      detail::throw_config_error(command_path, "expected a list of arguments or a shell command string, got " +
                                                   detail::describe_json_type(*command));
    }
    if (argv.empty() || argv[0].empty()) detail::throw_config_error(command_path, "must not be empty");
    double attempt_timeout = reader.seconds("attempt_timeout").value_or(5.0);
    if (!(attempt_timeout > 0)) detail::throw_config_error(reader.path_of("attempt_timeout"), "must be more than 0");
    double interval = reader.seconds("interval").value_or(1.0);
    double timeout = reader.seconds("timeout").value_or(30.0);
    reader.finish();
    return std::make_shared<CommandVerifier>(std::move(argv), shell, attempt_timeout, interval, timeout);
  }

  VerifyResult verify(VerifyContext& context) const override {
    ProbeCommand command;
    command.argv = shell_ ? std::vector<std::string>{context.default_shell(), "-c", argv_[0]} : argv_;
    const auto deadline = Clock::now() + seconds_to_duration(timeout_);
    context.log(MessageCategory::verifier_verbose, "running " + describe());
    // A run costs a fork and an exec (milliseconds of CPU), not a connect:
    // the pause starts at 5 ms and doubles to 100 ms (or `interval`).
    PollSchedule schedule = PollSchedule::with_interval(interval_);
    schedule.fast_pause = std::min<Clock::duration>(std::chrono::milliseconds(5), schedule.interval);
    schedule.fast_max = std::min<Clock::duration>(std::chrono::milliseconds(100), schedule.interval);
    std::string previous;  // what the attempt before saw
    return poll_until(context, timeout_, schedule, [&](Clock::duration) {
      const auto own_end = Clock::now() + seconds_to_duration(attempt_timeout_);
      const bool cut = deadline < own_end;  // the verifier's timeout ends this run first
      ProbeResult result = context.run_in_process_environment(command, std::min(own_end, deadline));
      if (result.exit && !result.exit->signaled && result.exit->value == 0) return VerifyResult::ok(describe() + " exited 0");
      // A run cut short by the verifier's own timeout says nothing about the
      // command: report what the run before it saw.
      if (result.timed_out && cut && !previous.empty()) return VerifyResult::failure(previous);
      std::string what;
      if (result.cancelled) {
        what = "cancelled";
      } else if (result.timed_out && cut) {
        what = "still running at the verifier's timeout, killed";
      } else if (result.timed_out) {
        what = "still running after " + format_seconds(attempt_timeout_) + ", killed";
      } else if (result.exit) {
        what = result.exit->describe();
      } else {
        what = result.error;
      }
      previous = describe() + ": " + what + last_lines(result.output);
      return VerifyResult::failure(previous);
    });
  }

 private:
  std::string describe() const {
    if (shell_) return "'" + argv_[0] + "'";
    std::string out;
    for (const auto& arg : argv_) out += (out.empty() ? "" : " ") + arg;
    return "'" + out + "'";
  }

  /// The last three lines of a run's output, each cut at 200 bytes.
  static std::string last_lines(const std::string& output) {
    std::vector<std::string> lines;
    std::size_t at = 0;
    while (at < output.size()) {
      std::size_t end = output.find('\n', at);
      if (end == std::string::npos) end = output.size();
      if (end > at) lines.push_back(output.substr(at, std::min<std::size_t>(end - at, 200)));
      at = end + 1;
    }
    if (lines.empty()) return "";
    std::string out = "; last output:";
    for (std::size_t k = lines.size() > 3 ? lines.size() - 3 : 0; k < lines.size(); ++k) out += " " + lines[k] + " |";
    out.pop_back();
    out.pop_back();
    return out;
  }

  std::vector<std::string> argv_;
  bool shell_;
  double attempt_timeout_;
  double interval_;
  double timeout_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_COMMAND_VERIFIER_HPP
