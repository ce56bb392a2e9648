// pymanager: pymutils.exited_verifier.ExitedVerifier — passes when the process
// exits with the expected code within the timeout (a one-shot set-up step).
#ifndef PYMANAGER_VERIFIERS_EXITED_VERIFIER_HPP
#define PYMANAGER_VERIFIERS_EXITED_VERIFIER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <memory>
#include <string>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

class ExitedVerifier : public Verifier {
 public:
  static constexpr const char* kName = "pymutils.exited_verifier.ExitedVerifier";

  /// `timeout`: seconds to wait for the exit (default 30).
  /// `expect_code`: the exit code that passes (default 0; negative: killed by that signal, as in Python).
  ExitedVerifier(double timeout, int expect_code) : timeout_(timeout), expect_code_(expect_code) {}

  static std::shared_ptr<const Verifier> from_arguments(const nlohmann::json& arguments, const std::string& path) {
    detail::ObjectReader<nlohmann::json> reader(arguments, path);
    double timeout = reader.seconds("timeout").value_or(30.0);
    auto code = reader.integer("expect_code", -255, 255).value_or(0);
    reader.finish();
    return std::make_shared<ExitedVerifier>(timeout, static_cast<int>(code));
  }

  VerifyResult verify(VerifyContext& context) const override {
    auto deadline = Clock::now() + seconds_to_duration(timeout_);
    context.log(MessageCategory::verifier_verbose,
                "waiting up to " + format_seconds(timeout_) + " for exit code " + std::to_string(expect_code_));
    auto status = context.wait_exit(deadline);
    if (!status) {
      if (context.cancelled()) return VerifyResult::failure("shutdown began before the process exited");
      return VerifyResult::failure("still running after " + format_seconds(timeout_) + " (expected exit code " +
                                   std::to_string(expect_code_) + ")");
    }
    if (status->code() == expect_code_) return VerifyResult::ok("exited with " + status->describe());
    return VerifyResult::failure("exited with " + status->describe() + ", expected exit code " +
                                 std::to_string(expect_code_));
  }

  bool expects_exit() const override { return true; }

 private:
  double timeout_;
  int expect_code_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_EXITED_VERIFIER_HPP
