// Verifier plugins (modules.<name>.library): a plugin built by Bazel loaded
// and used on a real process through the Manager, and each way a plugin is
// refused before anything is launched, with the module's JSON path.
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "pymanager/pymanager.hpp"
#include "tests/capture.hpp"
#include "tests/test_util.hpp"

namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;
using pymanager::ErrorKind;
using pymanager::ProcessState;
using testutil::Capture;

std::string plugin(const std::string& name) { return testutil::runfile("tests/plugins/" + name); }

/// A config with module mytests.files loading `library`, listing `classes`
/// (JSON text), and one process `db` with `verifier` (JSON text).
std::string config_text(const std::string& library, const std::string& classes, const std::string& process) {
  return R"J({"modules": {"mytests.files": {"library": ")J" + library + R"J(", "verifiers": )J" + classes +
         R"J(}}, "processes": {"db": )J" + process + "}}";
}

const char* kMarkerProcess = R"J({"executable": "sh", "arguments": ["-c", "touch ready.flag; exec sleep 1000"],
    "verifier": {"type": "mytests.files.MarkerFileVerifier", "arguments": {"path": "ready.flag", "timeout": 60}}})J";

pymanager::Config parse(const std::string& text, const std::string& directory = "") {
  return pymanager::parse_config(nlohmann::ordered_json::parse(text), pymanager::builtin_verifiers(), directory);
}

std::string parse_error(const std::string& text, const std::string& directory = "") {
  try {
    parse(text, directory);
  } catch (const pymanager::Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::config_invalid);
    return e.what();
  }
  return "parsed";
}

bool loaded_now(const std::string& path) {
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return false;
  ::dlclose(handle);
  return true;
}

TEST(Plugin, ItsVerifierVerifiesARealProcessThroughTheManager) {
  const std::string dir = testutil::make_temp_dir();
  auto config = parse(config_text(plugin("libgood_plugin.so"), R"(["MarkerFileVerifier"])", kMarkerProcess));
  ASSERT_EQ(config.plugins.size(), 1u);
  EXPECT_EQ(config.plugins[0].module, "mytests.files");
  EXPECT_EQ(config.plugins[0].classes, std::vector<std::string>{"MarkerFileVerifier"});
  config.base_directory = dir;
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  ASSERT_NO_THROW(manager.start()) << capture.log();
  EXPECT_EQ(manager.process(0).state, ProcessState::ready);
  manager.shutdown();
  EXPECT_TRUE(manager.wait_finished(30s));
}

TEST(Plugin, AProcessWhoseMarkerNeverComesFailsWithWhatTheVerifierSaw) {
  const std::string dir = testutil::make_temp_dir();
  auto config = parse(config_text(plugin("libgood_plugin.so"), R"(["MarkerFileVerifier"])",
                                  R"J({"executable": "sh", "arguments": ["-c", "exit 3"],
      "verifier": {"type": "mytests.files.MarkerFileVerifier", "arguments": {"path": "never.flag"}}})J"));
  config.base_directory = dir;
  Capture capture;
  pymanager::Manager manager(config, capture.options());
  try {
    manager.start();
    ADD_FAILURE() << "start() did not fail";
  } catch (const pymanager::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no file " + dir + "/never.flag"));
  }
}

TEST(Plugin, TheLibraryStaysLoadedAsLongAsAVerifierMadeFromItLives) {
  const std::string path = plugin("libgood_plugin.so");
  std::shared_ptr<const pymanager::Verifier> verifier;
  {
    auto config = parse(config_text(path, R"(["MarkerFileVerifier"])", kMarkerProcess));
    verifier = config.processes[0].verifiers.at(0).verifier;
  }
  // The config, its plugin list and the registry are gone; the verifier
  // (whose vtable lives in the library) still works.
  EXPECT_TRUE(loaded_now(path));
  EXPECT_FALSE(verifier->expects_exit());
  EXPECT_FALSE(verifier->reads_output());
}

TEST(Plugin, ARelativeLibraryPathIsTakenRelativeToTheConfigFilesFolder) {
  const std::string dir = testutil::make_temp_dir();
  ASSERT_EQ(::mkdir((dir + "/plugins").c_str(), 0700), 0);
  ASSERT_EQ(::symlink(plugin("libgood_plugin.so").c_str(), (dir + "/plugins/libdb.so").c_str()), 0);
  testutil::write_file(dir + "/cfg.json", config_text("plugins/libdb.so", R"(["MarkerFileVerifier"])", kMarkerProcess));
  // The test runs elsewhere (in its runfiles): only the config's folder has plugins/.
  ASSERT_NE(pymanager::current_directory(), dir);
  auto loaded = pymanager::load_config(dir + "/cfg.json", pymanager::builtin_verifiers());
  ASSERT_EQ(loaded.config.plugins.size(), 1u);
  EXPECT_EQ(loaded.config.plugins[0].path, dir + "/plugins/libdb.so");
  EXPECT_EQ(loaded.config.processes[0].verifiers.at(0).type, "mytests.files.MarkerFileVerifier");
  // And the same config as JSON without its folder: not found, from here.
  std::string error = parse_error(testutil::read_file(dir + "/cfg.json"));
  EXPECT_THAT(error, HasSubstr("modules.mytests.files.library: cannot load plugins/libdb.so"));
}

TEST(Plugin, AMissingFileIsAnErrorNamingTheModule) {
  std::string error = parse_error(config_text("/nonexistent/libx.so", R"(["MarkerFileVerifier"])", kMarkerProcess));
  EXPECT_THAT(error, HasSubstr("modules.mytests.files.library: cannot load /nonexistent/libx.so: "));
  EXPECT_THAT(error, HasSubstr("No such file"));
}

TEST(Plugin, ALibraryWithoutTheEntryPointIsRefused) {
  std::string error = parse_error(config_text(plugin("libno_entry_plugin.so"), R"(["MarkerFileVerifier"])", kMarkerProcess));
  EXPECT_THAT(error, HasSubstr("modules.mytests.files.library: "));
  EXPECT_THAT(error, HasSubstr("is not a pymanager plugin: it has no entry point pymanager_verifier_plugin"));
}

TEST(Plugin, APluginBuiltForAnotherAbiIsRefusedNamingBothVersions) {
  std::string error = parse_error(config_text(plugin("libabi2_plugin.so"), R"(["MarkerFileVerifier"])", kMarkerProcess));
  EXPECT_THAT(error, HasSubstr("modules.mytests.files.library: "));
  EXPECT_THAT(error, HasSubstr("plugin built for ABI 2, this pymanager has ABI 1"));
}

TEST(Plugin, AListedClassTheLibraryDoesNotRegisterIsRefused) {
  std::string error =
      parse_error(config_text(plugin("libgood_plugin.so"), R"(["MarkerFileVerifier", "PingVerifier"])", kMarkerProcess));
  EXPECT_THAT(error, HasSubstr("modules.mytests.files.library: "));
  EXPECT_THAT(error, HasSubstr("does not register verifier PingVerifier, listed in modules.mytests.files.verifiers "
                               "(it registers: MarkerFileVerifier)"));
}

TEST(Plugin, ARegistrationThatThrowsIsRefusedWithItsMessage) {
  std::string error = parse_error(config_text(plugin("libfailing_plugin.so"), R"([])", R"({"executable": "true", "arguments": []})"));
  EXPECT_THAT(error, HasSubstr("modules.mytests.files.library: "));
  EXPECT_THAT(error, HasSubstr("the database client library is missing"));
}

TEST(Plugin, ArgumentErrorsOfAPluginVerifierNameTheirJsonPath) {
  // The plugin throws them; the library is closed while they unwind through
  // the parser (nothing else holds it), so the error read here must not be
  // the library's object.
  std::string error = parse_error(config_text(plugin("libgood_plugin.so"), R"(["MarkerFileVerifier"])",
                                              R"J({"executable": "true", "arguments": [],
      "verifier": {"type": "mytests.files.MarkerFileVerifier", "arguments": {"timeout": 5}}})J"));
  EXPECT_THAT(error, HasSubstr("processes.db.verifier.arguments.path: "));
  error = parse_error(config_text(plugin("libgood_plugin.so"), R"(["MarkerFileVerifier"])",
                                  R"J({"executable": "true", "arguments": [],
      "verifier": {"type": "mytests.files.MarkerFileVerifier", "arguments": {"path": "x", "timout": 5}}})J"));
  EXPECT_THAT(error, HasSubstr("processes.db.verifier.arguments.timout: "));
  EXPECT_THAT(error, HasSubstr("timeout"));
}

TEST(Plugin, AnEmptyLibraryPathIsRefused) {
  std::string error = parse_error(config_text("", R"([])", R"({"executable": "true", "arguments": []})"));
  EXPECT_THAT(error, HasSubstr("modules.mytests.files.library: must not be empty"));
}

}  // namespace
