// libFuzzer target: the API server's request parser. Any bytes give a
// complete request within the buffer, a refusal with a status, or "need
// more" only while the input is within the bounds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "pymanager/detail/http_message.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  pymanager::detail::HttpLimits limits;
  limits.max_request_line = 256;
  limits.max_header_bytes = 512;
  limits.max_headers = 8;
  limits.max_body = 256;
  const std::string text(reinterpret_cast<const char*>(data), size);
  pymanager::detail::HttpRequest request;
  auto parse = pymanager::detail::parse_http_request(text, limits, request);
  switch (parse.outcome) {
    case pymanager::detail::HttpParse::complete:
      if (parse.consumed == 0 || parse.consumed > text.size() || request.body.size() > limits.max_body) std::abort();
      if (request.headers.size() > limits.max_headers || request.path.empty()) std::abort();
      (void)request.query_param("lines");
      break;
    case pymanager::detail::HttpParse::failed:
      if (parse.status < 400 || parse.status > 599 || parse.message.empty()) std::abort();
      break;
    case pymanager::detail::HttpParse::incomplete:
      // Never "need more" for more than a head and a body can hold.
      if (text.size() > 2 * limits.max_request_line + 2 + limits.max_header_bytes + limits.max_body) std::abort();
      break;
  }
  return 0;
}
