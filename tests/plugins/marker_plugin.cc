// A test plugin: MarkerFileVerifier passes once the file `path` (relative
// to the process's working directory) exists. Built as libgood_plugin.so,
// and again with PYMANAGER_PLUGIN_REPORTED_ABI=2 as libabi2_plugin.so.
#include <sys/stat.h>

#include <memory>
#include <string>

#include "pymanager/plugin.hpp"
#include "pymanager/verifier.hpp"

namespace {

class MarkerFileVerifier : public pymanager::Verifier {
 public:
  MarkerFileVerifier(std::string path, double timeout) : path_(std::move(path)), timeout_(timeout) {}

  static std::shared_ptr<const pymanager::Verifier> from_arguments(const nlohmann::json& arguments,
                                                                   const std::string& path) {
    pymanager::ArgumentReader reader(arguments, path);
    std::string file = reader.required_string("path");
    double timeout = reader.seconds("timeout").value_or(30);
    reader.finish();
    return std::make_shared<MarkerFileVerifier>(file, timeout);
  }

  pymanager::VerifyResult verify(pymanager::VerifyContext& context) const override {
    std::string dir = context.working_directory();
    std::string full = path_[0] == '/' || dir.empty() ? path_ : dir + "/" + path_;
    return pymanager::poll_until(context, timeout_, pymanager::PollSchedule::with_interval(0.1),
                                 [&](pymanager::Clock::duration) {
                                   struct stat st {};
                                   if (::stat(full.c_str(), &st) == 0) return pymanager::VerifyResult::ok();
                                   return pymanager::VerifyResult::failure("no file " + full);
                                 });
  }

 private:
  std::string path_;
  double timeout_;
};

}  // namespace

PYMANAGER_VERIFIER_PLUGIN(registrar) {
  registrar.add("MarkerFileVerifier", &MarkerFileVerifier::from_arguments);
}
