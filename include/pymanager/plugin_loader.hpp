// pymanager: loading verifier plugins (plugin.hpp) named by a config's
// `modules.<name>.library`. parse_config calls load_plugin for each module
// that names a library, before any verifier is made; a program of its own
// can call it to fill a VerifierRegistry.
#ifndef PYMANAGER_PLUGIN_LOADER_HPP
#define PYMANAGER_PLUGIN_LOADER_HPP

#include "pymanager/detail/cxx17.hpp"  // first: a pre-C++17 build stops with one clear error

#include <dlfcn.h>

#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pymanager/error.hpp"
#include "pymanager/plugin.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {

/// A dlopen handle, closed when the last owner lets go: each factory
/// registered from the library and each verifier such a factory made holds
/// one, since their code (and vtables) live in the library.
class PluginLibrary {
 public:
  PluginLibrary(void* handle, std::string path) : handle_(handle), path_(std::move(path)) {}
  ~PluginLibrary() {
    if (handle_ != nullptr) ::dlclose(handle_);
  }
  PluginLibrary(const PluginLibrary&) = delete;
  PluginLibrary& operator=(const PluginLibrary&) = delete;

  void* handle() const { return handle_; }
  const std::string& path() const { return path_; }

 private:
  void* handle_;
  std::string path_;
};

/// A library loaded for a module of the config.
struct LoadedPlugin {
  std::string module;  ///< `mytests.db`
  std::string path;    ///< the library's absolute path
  std::vector<std::string> classes;  ///< the class names it registered, in order
  std::shared_ptr<PluginLibrary> library;
};

namespace detail {

/// A verifier made by a plugin's factory, with the library it came from:
/// `verifier` is released before `library` (members are destroyed in
/// reverse order), so its destructor still has its code.
struct PluginVerifierHolder {
  std::shared_ptr<PluginLibrary> library;
  std::shared_ptr<const Verifier> verifier;
};

/// A plugin's factory as the registry keeps it: the factory (code of the
/// library) is destroyed before the library handle it holds.
class PluginFactory {
 public:
  PluginFactory(std::shared_ptr<PluginLibrary> library, VerifierFactory factory)
      : library_(std::move(library)), factory_(std::make_shared<VerifierFactory>(std::move(factory))) {}

  std::shared_ptr<const Verifier> operator()(const nlohmann::json& arguments, const std::string& path) const {
    // An exception thrown by the library's code has its vtable there: one
    // that outlives the library (the last handle may go while it unwinds
    // through the parser) would crash whoever reads it. It is copied into
    // one made here.
    std::shared_ptr<const Verifier> made;
    try {
      made = (*factory_)(arguments, path);
    } catch (const Error& e) {
      throw Error(e.kind(), e.what());
    } catch (const std::exception& e) {
      throw Error(ErrorKind::config_invalid, path + ": " + e.what());
    } catch (...) {
      throw Error(ErrorKind::config_invalid, path + ": the plugin " + library_->path() + " threw an unknown exception");
    }
    if (!made) throw Error(ErrorKind::config_invalid, path + ": the plugin " + library_->path() + " made no verifier");
    auto holder = std::make_shared<PluginVerifierHolder>(PluginVerifierHolder{library_, std::move(made)});
    const Verifier* raw = holder->verifier.get();
    return std::shared_ptr<const Verifier>(holder, raw);
  }

 private:
  std::shared_ptr<PluginLibrary> library_;
  // Shared so that copies of this factory (std::function copies it) share
  // one; released before library_.
  std::shared_ptr<const VerifierFactory> factory_;
};

class CollectingRegistrar final : public PluginRegistrar {
 public:
  explicit CollectingRegistrar(std::string module) : module_(std::move(module)) {}
  void add(const std::string& class_name, VerifierFactory factory) override {
    if (class_name.empty()) {
      failure_ = "registered a class with an empty name";
      return;
    }
    for (const auto& entry : added_) {
      if (entry.first == class_name) {
        failure_ = "registered class " + class_name + " twice";
        return;
      }
    }
    if (!factory) {
      failure_ = "registered class " + class_name + " without a factory";
      return;
    }
    added_.emplace_back(class_name, std::move(factory));
  }
  const std::string& module_name() const override { return module_; }
  void fail(const std::string& message) override {
    if (failure_.empty()) failure_ = message.empty() ? std::string("failed without a message") : message;
  }

  std::string module_;
  std::vector<std::pair<std::string, VerifierFactory>> added_;
  std::string failure_;
};

}  // namespace detail

using PluginEntryPoint = int (*)(int host_abi, PluginRegistrar* registrar);

/// Loads the library at `path` (absolute, or relative to the current
/// directory) for module `module` and registers its classes in `registry`
/// as `<module>.<Class>`. Every class of `expected_classes` (the module's
/// `verifiers` list) must be registered by the library. Throws Error
/// (config_invalid) naming `json_path` (`modules.mytests.db.library`) when
/// the file cannot be loaded, has no entry point, was built for another ABI
/// version, fails, or does not register a listed class; nothing is added to
/// `registry` then.
inline LoadedPlugin load_plugin(const std::string& module, const std::string& path,
                                const std::vector<std::string>& expected_classes, const std::string& json_path,
                                VerifierRegistry& registry) {
  auto fail = [&](const std::string& why) { throw Error(ErrorKind::config_invalid, json_path + ": " + why); };
  // A path without a slash would be looked up in LD_LIBRARY_PATH and the
  // system's folders: always give dlopen one with a slash.
  const std::string open_path = path.find('/') == std::string::npos ? "./" + path : path;
  ::dlerror();
  void* handle = ::dlopen(open_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    fail("cannot load " + path + ": " + (why != nullptr ? why : "unknown dlopen error"));
  }
  auto library = std::make_shared<PluginLibrary>(handle, path);
  ::dlerror();
  void* symbol = ::dlsym(handle, kPluginEntryPoint);
  if (symbol == nullptr) {
    fail(path + " is not a pymanager plugin: it has no entry point " + std::string(kPluginEntryPoint) +
         " (define it with PYMANAGER_VERIFIER_PLUGIN from pymanager/plugin.hpp)");
  }
  PluginEntryPoint entry = nullptr;
  static_assert(sizeof(entry) == sizeof(symbol), "function and object pointers differ in size");
  std::memcpy(&entry, &symbol, sizeof(entry));
  detail::CollectingRegistrar registrar(module);
  const int plugin_abi = entry(kPluginAbiVersion, &registrar);
  if (plugin_abi != kPluginAbiVersion) {
    fail(path + ": plugin built for ABI " + std::to_string(plugin_abi) + ", this pymanager has ABI " +
         std::to_string(kPluginAbiVersion) + " (rebuild the plugin against this pymanager)");
  }
  if (!registrar.failure_.empty()) fail(path + ": the plugin failed to register its verifiers: " + registrar.failure_);
  for (const auto& expected : expected_classes) {
    bool found = false;
    for (const auto& entry_added : registrar.added_) found = found || entry_added.first == expected;
    if (!found) {
      std::string registered;
      for (const auto& entry_added : registrar.added_) registered += (registered.empty() ? "" : ", ") + entry_added.first;
      fail(path + " does not register verifier " + expected + ", listed in " + json_path.substr(0, json_path.rfind('.')) +
           ".verifiers (it registers: " + (registered.empty() ? std::string("nothing") : registered) + ")");
    }
  }
  LoadedPlugin loaded;
  loaded.module = module;
  loaded.path = path;
  loaded.library = library;
  for (auto& added : registrar.added_) {
    const std::string name = module + "." + added.first;
    if (registry.contains(name)) fail(path + " registers " + name + ", which is already registered");
  }
  for (auto& added : registrar.added_) {
    loaded.classes.push_back(added.first);
    registry.add(module + "." + added.first, detail::PluginFactory(library, std::move(added.second)));
  }
  return loaded;
}

}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_PLUGIN_LOADER_HPP
