// pymanager: pymanager.verifiers.OutputVerifier — passes once the process
// printed `count` lines matching a regular expression ("ready to accept
// connections"). It sees every line of the run from the first byte (the
// manager keeps them for it from before the spawn), whether the output is
// shown, suppressed or redirected, and is woken by each line: no polling.
#ifndef PYMANAGER_VERIFIERS_OUTPUT_VERIFIER_HPP
#define PYMANAGER_VERIFIERS_OUTPUT_VERIFIER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <deque>
#include <memory>
#include <regex>
#include <string>
#include <utility>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

class OutputVerifier : public Verifier {
 public:
  static constexpr const char* kName = "pymanager.verifiers.OutputVerifier";
  /// The pattern is searched in the first this many bytes of each line, so
  /// that a huge line cannot make the search run for ever.
  static constexpr std::size_t kSearchedBytes = 4096;

  enum class Streams { out, err, both };

  /// `pattern` (required): an ECMAScript regular expression searched in each
  /// line; `stream`: "stdout", "stderr" or "both" (default); `count`: that
  /// many matching lines (default 1); `timeout`: seconds (default 30).
  OutputVerifier(std::string pattern, Streams streams, long long count, double timeout)
      : pattern_(std::move(pattern)), regex_(pattern_, std::regex::ECMAScript), streams_(streams), count_(count),
        timeout_(timeout) {}

  static std::shared_ptr<const Verifier> from_arguments(const nlohmann::json& arguments, const std::string& path) {
    detail::ObjectReader<nlohmann::json> reader(arguments, path);
    std::string pattern = reader.required_string("pattern");
    std::string stream = reader.string("stream").value_or("both");
    long long count = reader.integer("count", 1, 1000000).value_or(1);
    double timeout = reader.seconds("timeout").value_or(30.0);
    reader.finish();
    Streams streams = Streams::both;
    if (stream == "stdout") {
      streams = Streams::out;
    } else if (stream == "stderr") {
      streams = Streams::err;
    } else if (stream != "both") {
      detail::throw_config_error(reader.path_of("stream"), "expected \"stdout\", \"stderr\" or \"both\", got \"" + stream + "\"");
    }
    try {
      return std::make_shared<OutputVerifier>(pattern, streams, count, timeout);
    } catch (const std::regex_error& e) {
      detail::throw_config_error(reader.path_of("pattern"), "not a valid regular expression: " + std::string(e.what()));
    }
  }

  bool reads_output() const override { return true; }

  VerifyResult verify(VerifyContext& context) const override {
    const auto deadline = Clock::now() + seconds_to_duration(timeout_);
    context.log(MessageCategory::verifier_verbose, "waiting for " + describe_goal());
    long long matched = 0;
    std::deque<std::string> last;  // the last lines seen, for the messages
    for (;;) {
      std::optional<SeenLine> line = context.next_line(deadline);
      if (line) {
        const bool watched = streams_ == Streams::both || (streams_ == Streams::out) == (line->stream == OutputStream::out);
        last.push_back(std::string(to_string(line->stream)) + ": " + line->text.substr(0, 200));
        if (last.size() > 5) last.pop_front();
        if (!watched) continue;
        const std::string& text = line->text;
        const auto end = text.size() > kSearchedBytes ? text.begin() + kSearchedBytes : text.end();
        if (std::regex_search(text.begin(), end, regex_) && ++matched >= count_) {
          return VerifyResult::ok("matched: " + text.substr(0, 200));
        }
        continue;
      }
      const std::string seen = seen_text(matched, last, context.lines_missed());
      if (context.cancelled()) return VerifyResult::failure("shutdown began while verifying (" + seen + ")");
      auto exited = context.exit_status();
      if (exited && (exited->signaled || exited->value != 0)) {
        return VerifyResult::failure("process exited with " + exited->describe() + " before printing " + describe_goal() +
                                     " (" + seen + ")");
      }
      if (Clock::now() >= deadline) {
        return VerifyResult::failure("timed out after " + format_seconds(timeout_) + " waiting for " + describe_goal() +
                                     " (" + seen + ")" + (exited ? "; the process had exited with exit code 0" : ""));
      }
    }
  }

  const std::string& pattern() const { return pattern_; }

 private:
  std::string describe_goal() const {
    std::string where = streams_ == Streams::both ? "" : streams_ == Streams::out ? " on stdout" : " on stderr";
    return (count_ == 1 ? "a line" : std::to_string(count_) + " lines") + " matching /" + pattern_ + "/" + where;
  }

  std::string seen_text(long long matched, const std::deque<std::string>& last, std::size_t missed) const {
    std::string out = std::to_string(matched) + " of " + std::to_string(count_) + " matching lines";
    if (missed > 0) out += "; " + std::to_string(missed) + " lines were printed too fast to be examined";
    if (last.empty()) return out + "; no output";
    out += "; last lines:";
    for (const auto& line : last) out += "\n    " + line;
    return out;
  }

  std::string pattern_;
  std::regex regex_;
  Streams streams_;
  long long count_;
  double timeout_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_OUTPUT_VERIFIER_HPP
