// pymanager: the one header a verifier plugin includes (with verifier.hpp).
//
// A plugin is a shared object that registers verifier classes for a module of
// the config. The config names the library and the classes it provides:
//
//   "modules": {"mytests.db": {"library": "plugins/libdb_verifiers.so",
//                              "verifiers": ["PingVerifier"]}}
//
// (the path relative to the config file's folder), and a process then uses
// `"type": "mytests.db.PingVerifier"`. The binary and the GoogleTest
// environment dlopen the library before anything is launched, call its entry
// point, and refuse a library that is missing, has no entry point, was built
// against another kPluginAbiVersion, or does not register a listed class.
//
// A complete plugin (build it with Bazel as
// `cc_binary(name = "libdb_verifiers.so", linkshared = True, srcs = [...],
// deps = ["@pymanager//:plugin_api"])`):
//
//   #include "pymanager/plugin.hpp"
//   #include "pymanager/verifier.hpp"
//
//   class PingVerifier : public pymanager::Verifier {
//    public:
//     PingVerifier(int port, double timeout) : port_(port), timeout_(timeout) {}
//     // Reads {"port": 5432, "timeout": 10}; argument errors name their JSON
//     // path, e.g. processes.db.verifier.arguments.port: expected an integer.
//     static std::shared_ptr<const pymanager::Verifier> from_arguments(const nlohmann::json& arguments,
//                                                                      const std::string& path) {
//       pymanager::ArgumentReader reader(arguments, path);
//       std::optional<long long> port = reader.integer("port", 1, 65535);
//       if (!port) {
//         throw pymanager::Error(pymanager::ErrorKind::config_invalid,
//                                reader.path_of("port") + ": required key is missing");
//       }
//       double timeout = reader.seconds("timeout").value_or(10);
//       reader.finish();  // refuses unknown members ("did you mean ...?")
//       return std::make_shared<PingVerifier>(static_cast<int>(*port), timeout);
//     }
//     pymanager::VerifyResult verify(pymanager::VerifyContext& context) const override {
//       return pymanager::poll_until(context, timeout_, pymanager::PollSchedule::with_interval(1),
//                                    [&](pymanager::Clock::duration) { return ping(); });
//     }
//
//    private:
//     pymanager::VerifyResult ping() const;  // VerifyResult::ok() or ::failure("what it saw")
//     int port_;
//     double timeout_;
//   };
//
//   PYMANAGER_VERIFIER_PLUGIN(registrar) {
//     // Registered as "<module>.PingVerifier"; registrar.module_name() is
//     // the module the config loads this library for.
//     registrar.add("PingVerifier", &PingVerifier::from_arguments);
//   }
//
// Rules for a verifier: verify() may run on any thread and must not keep
// state between calls (one instance serves every run of its process); it
// returns when the context is cancelled. An exception thrown by the body of
// PYMANAGER_VERIFIER_PLUGIN is reported as a load error of the module (or
// call registrar.fail("why") to refuse to load). The library stays loaded
// as long as any verifier made from it lives.
//
// The host and the plugin share C++ types (std::function, std::string,
// nlohmann::json): build both with the same compiler, standard library and
// pymanager version. kPluginAbiVersion changes whenever these types change.
#ifndef PYMANAGER_PLUGIN_HPP
#define PYMANAGER_PLUGIN_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <exception>
#include <string>

#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

/// The version of the interface between pymanager and its plugins (this
/// header, verifier.hpp and the types they use). A plugin built for another
/// version is refused with a message naming both.
constexpr int kPluginAbiVersion = 1;

/// What a plugin's entry point registers its verifier classes with.
class PluginRegistrar {
 public:
  /// Registers `factory` as `<module_name()>.<class_name>`.
  virtual void add(const std::string& class_name, VerifierFactory factory) = 0;
  /// The module the config loads this library for (`mytests.db`).
  virtual const std::string& module_name() const = 0;
  /// Refuses to load: the config is rejected with `message`.
  virtual void fail(const std::string& message) = 0;

 protected:
  ~PluginRegistrar() = default;
};

/// The entry point's name, as the loader looks it up.
constexpr const char* kPluginEntryPoint = "pymanager_verifier_plugin";

}  // namespace v1
}  // namespace pymanager

// The ABI version the entry point reports; only tests of the loader define
// it to something else (to build a plugin of "another version").
#ifndef PYMANAGER_PLUGIN_REPORTED_ABI
#define PYMANAGER_PLUGIN_REPORTED_ABI ::pymanager::kPluginAbiVersion
#endif

/// Defines the plugin's entry point, `extern "C" int
/// pymanager_verifier_plugin(int host_abi, pymanager::PluginRegistrar*)`,
/// followed by the body that registers the classes, with `registrar` a
/// pymanager::PluginRegistrar&:
///   PYMANAGER_VERIFIER_PLUGIN(registrar) { registrar.add("PingVerifier", &PingVerifier::from_arguments); }
/// The entry point returns the plugin's ABI version; when the host's differs
/// it returns without running the body. Exceptions do not leave it: they
/// become registrar.fail(what).
// `registrar` names a parameter: it cannot be parenthesized.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define PYMANAGER_VERIFIER_PLUGIN(registrar)                                                                     \
  static void pymanager_plugin_register(::pymanager::PluginRegistrar& registrar);                               \
  extern "C" __attribute__((visibility("default"))) int pymanager_verifier_plugin(                              \
      int host_abi, ::pymanager::PluginRegistrar* pymanager_registrar) {                                        \
    if (host_abi != (PYMANAGER_PLUGIN_REPORTED_ABI) || pymanager_registrar == nullptr) {                        \
      return PYMANAGER_PLUGIN_REPORTED_ABI;                                                                      \
    }                                                                                                            \
    try {                                                                                                        \
      pymanager_plugin_register(*pymanager_registrar);                                                           \
    } catch (const std::exception& pymanager_error) {                                                            \
      pymanager_registrar->fail(pymanager_error.what());                                                         \
    } catch (...) {                                                                                              \
      pymanager_registrar->fail("unknown exception while registering");                                          \
    }                                                                                                            \
    return PYMANAGER_PLUGIN_REPORTED_ABI;                                                                        \
  }                                                                                                              \
  static void pymanager_plugin_register(::pymanager::PluginRegistrar& registrar)
// NOLINTEND(bugprone-macro-parentheses)

#endif  // PYMANAGER_PLUGIN_HPP
