// libFuzzer target: bytes in, a Config or a clean pymanager::Error out.
// Never a crash, a hang or an exception of another kind.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "pymanager/config.hpp"
#include "pymanager/verifiers/builtin.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const pymanager::VerifierRegistry registry = pymanager::builtin_verifiers();
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    nlohmann::ordered_json json = pymanager::detail::parse_json_text(text);
    // ${port:...} is not expanded here: that reserves real ports.
    pymanager::Config config = pymanager::parse_config(json, registry);
    (void)config;
  } catch (const pymanager::Error&) {
    // A clean refusal.
  }
  return 0;
}
