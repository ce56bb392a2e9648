// pymanager: pymanager.verifiers.FileVerifier — passes once a path exists
// (a pid file, a unix socket, a "ready" marker), or, with `non_empty`, once
// it is a file with something in it. Looked at every millisecond for the
// first 10 s (a stat costs about a microsecond), then less often.
#ifndef PYMANAGER_VERIFIERS_FILE_VERIFIER_HPP
#define PYMANAGER_VERIFIERS_FILE_VERIFIER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

class FileVerifier : public Verifier {
 public:
  static constexpr const char* kName = "pymanager.verifiers.FileVerifier";

  /// `path` (required): relative to the process's working directory;
  /// `non_empty`: also wait until it has something in it (default false);
  /// `timeout`: seconds (default 30); `interval`: the longest pause between
  /// looks after the first 10 s (default 1).
  FileVerifier(std::string path, bool non_empty, double timeout, double interval)
      : path_(std::move(path)), non_empty_(non_empty), timeout_(timeout), interval_(interval) {}

  static std::shared_ptr<const Verifier> from_arguments(const nlohmann::json& arguments, const std::string& path) {
    detail::ObjectReader<nlohmann::json> reader(arguments, path);
    std::string file = reader.required_string("path");
    if (file.empty()) detail::throw_config_error(reader.path_of("path"), "must not be empty");
    bool non_empty = reader.boolean("non_empty").value_or(false);
    double timeout = reader.seconds("timeout").value_or(30.0);
    double interval = reader.seconds("interval").value_or(1.0);
    reader.finish();
    return std::make_shared<FileVerifier>(file, non_empty, timeout, interval);
  }

  VerifyResult verify(VerifyContext& context) const override {
    std::string where = path_;
    if (where[0] != '/') {
      const std::string base = context.working_directory();
      if (!base.empty()) where = base + (base.back() == '/' ? "" : "/") + where;
    }
    context.log(MessageCategory::verifier_verbose, "waiting for " + where + (non_empty_ ? " to have contents" : " to exist"));
    return poll_until(context, timeout_, PollSchedule::with_interval(interval_), [&](Clock::duration) {
      struct stat st {};
      if (::stat(where.c_str(), &st) != 0) return VerifyResult::failure(where + ": " + std::strerror(errno));
      if (!non_empty_) return VerifyResult::ok(where + " exists");
      if (!S_ISREG(st.st_mode)) return VerifyResult::failure(where + " is not a regular file");
      if (st.st_size == 0) return VerifyResult::failure(where + " is empty");
      return VerifyResult::ok(where + " has " + std::to_string(st.st_size) + " bytes");
    });
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool non_empty_;
  double timeout_;
  double interval_;
};

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_VERIFIERS_FILE_VERIFIER_HPP
