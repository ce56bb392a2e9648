// The API server's request parser on its own: bounds are enforced while the
// input is still incomplete, so that nothing a client sends is kept without
// bound. (tests/fuzz/http_fuzz.cc checks the same properties on any bytes.)
#include <string>

#include <gtest/gtest.h>

#include "pymanager/detail/http_server.hpp"

namespace {

using pymanager::detail::HttpLimits;
using pymanager::detail::HttpParse;
using pymanager::detail::HttpRequest;
using pymanager::detail::parse_http_request;

HttpParse parse(const std::string& text, HttpRequest* out = nullptr) {
  HttpRequest request;
  HttpParse result = parse_http_request(text, HttpLimits{}, request);
  if (out != nullptr) *out = request;
  return result;
}

TEST(HttpParser, ARequestIsParsedWithItsPathQueryAndHeaders) {
  HttpRequest request;
  const std::string text = "GET /processes/my%20web/output?lines=%35 HTTP/1.1\r\nHost: 127.0.0.1:5001\r\n"
                           "X-Case:  Value \r\n\r\nGET / HTTP/1.1\r\n";
  HttpParse result = parse(text, &request);
  ASSERT_EQ(result.outcome, HttpParse::complete);
  EXPECT_EQ(result.consumed, text.find("GET /", 1));
  EXPECT_EQ(request.method, "GET");
  EXPECT_EQ(request.path, "/processes/my web/output");
  EXPECT_EQ(request.query_param("lines"), std::optional<std::string>("5"));
  EXPECT_EQ(request.header("x-case"), "Value");
  EXPECT_EQ(request.header("host"), "127.0.0.1:5001");
}

TEST(HttpParser, IncompleteInputIsRefusedAsSoonAsItCrossesABound) {
  EXPECT_EQ(parse("GET /" + std::string(9000, 'a')).status, 414);
  EXPECT_EQ(parse("GET / HTTP/1.1\r\nX: " + std::string(17000, 'b')).status, 431);
  // Empty lines before a request are allowed, but not without end (found
  // while writing the fuzz target: they were skipped without a bound).
  EXPECT_EQ(parse(std::string(20000, '\r') + std::string(1, '\n')).status, 414);
  std::string crlfs;
  for (int i = 0; i < 5000; ++i) crlfs += "\r\n";
  EXPECT_EQ(parse(crlfs).status, 400);
  EXPECT_EQ(parse("\r\n\r\nGET / HTTP/1.1\r\n\r\n").outcome, HttpParse::complete);
}

TEST(HttpParser, MalformedRequestsGetTheirStatus) {
  EXPECT_EQ(parse("GET /\r\n\r\n").status, 400);
  EXPECT_EQ(parse("GET / HTTP/2.0\r\n\r\n").status, 505);
  EXPECT_EQ(parse("get / HTTP/1.1\r\n\r\n").status, 400);
  EXPECT_EQ(parse("GET http://x/ HTTP/1.1\r\n\r\n").status, 400);
  EXPECT_EQ(parse("GET / HTTP/1.1\r\nNo colon\r\n\r\n").status, 400);
  EXPECT_EQ(parse("GET / HTTP/1.1\r\n folded: x\r\n\r\n").status, 400);
  EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").status, 400);
  EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n").status, 400);
  EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n").status, 413);
  EXPECT_EQ(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").status, 501);
  // A body is waited for, then taken whole.
  HttpRequest request;
  EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab").outcome, HttpParse::incomplete);
  EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdEXTRA", &request).outcome, HttpParse::complete);
  EXPECT_EQ(request.body, "abcd");
}

TEST(HttpParser, PercentDecodingLeavesMalformedEscapesAlone) {
  EXPECT_EQ(pymanager::detail::percent_decode("%41%zz%4"), "A%zz%4");
  EXPECT_EQ(pymanager::detail::percent_decode("%ff"), std::string(1, '\xff'));
}

}  // namespace
