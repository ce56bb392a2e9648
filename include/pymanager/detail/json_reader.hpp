// pymanager: reading a config's JSON text safely, in one linear pass.
//
// nlohmann's own parse into an ordered_json would (1) take the last of two
// equal keys silently, (2) search each object's members linearly on every
// insert, so that N processes take O(N^2), and (3) accept any nesting depth,
// which every recursive walk afterwards (copies, dumps, ${port:...}
// expansion) pays for with its stack. This SAX handler builds the same
// ordered_json and refuses, naming the JSON path: duplicate keys, nesting
// deeper than kMaxJsonDepth, and strings with a NUL byte (which no string
// that reaches the kernel may hold).
#ifndef PYMANAGER_DETAIL_JSON_READER_HPP
#define PYMANAGER_DETAIL_JSON_READER_HPP

#include <cstddef>
#include <algorithm>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pymanager/detail/json_check.hpp"
#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

/// Reads JSON text into an ordered_json (keys in the order written). Throws
/// Error: config_not_json for a syntax error (with nlohmann's id and byte
/// position), config_invalid for a duplicate key, a NUL byte in a string or
/// too deep a nesting (each naming the JSON path).
inline nlohmann::ordered_json parse_json_text(const std::string& text);

class JsonTreeBuilder {
 public:
  using Json = nlohmann::ordered_json;

  bool null() { return add(Json(nullptr)); }
  bool boolean(bool value) { return add(Json(value)); }
  bool number_integer(Json::number_integer_t value) { return add(Json(value)); }
  bool number_unsigned(Json::number_unsigned_t value) { return add(Json(value)); }
  bool number_float(Json::number_float_t value, const Json::string_t& /*text*/) { return add(Json(value)); }
  bool string(Json::string_t& value) {
    if (value.find('\0') != std::string::npos) check_no_nul(value, path());
    return add(Json(std::move(value)));
  }
  bool binary(Json::binary_t& value) { return add(Json::binary(std::move(value))); }

  bool start_object(std::size_t /*elements*/) { return open(true); }
  bool key(Json::string_t& name) {
    Frame& frame = frames_.back();
    frame.members.emplace_back(name, Json());
    if (name.find('\0') != std::string::npos) check_no_nul(name, path());
    if (!frame.keys.insert(name).second) {
      throw_config_error(path(), "duplicate key (given twice in one object; the original would silently use the last one)");
    }
    return true;
  }
  bool end_object() { return close(); }
  bool start_array(std::size_t /*elements*/) { return open(false); }
  bool end_array() { return close(); }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const nlohmann::detail::exception& e) {
    // e.what() carries nlohmann's error id and the byte position.
    throw Error(ErrorKind::config_not_json, std::string("not valid JSON: ") + e.what());
  }

  Json take() { return std::move(root_); }

 private:
  struct Frame {
    bool is_object = false;
    Json array;                                       ///< arrays: the elements so far
    std::vector<std::pair<std::string, Json>> members;  ///< objects: the members so far
    std::unordered_set<std::string> keys;             ///< objects: every key so far
  };

  /// The JSON path of what is being read (at most the first 16 levels).
  std::string path() const {
    std::string out;
    std::size_t shown = 0;
    for (const Frame& frame : frames_) {
      if (++shown > 16) return out + "...";
      if (frame.is_object) {
        out += (out.empty() ? "" : ".") + (frame.members.empty() ? std::string() : frame.members.back().first);
      } else {
        out += "[" + std::to_string(frame.array.size()) + "]";
      }
    }
    return out;
  }

  bool open(bool is_object) {
    if (frames_.size() >= kMaxJsonDepth) {
      throw_config_error(path(), "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels of objects and arrays");
    }
    frames_.emplace_back();
    frames_.back().is_object = is_object;
    if (!is_object) frames_.back().array = Json::array();
    return true;
  }

  bool close() {
    Frame& frame = frames_.back();
    Json value;
    if (frame.is_object) {
      // Built in one go: key() already refused duplicates, and
      // ordered_map's own insert would search every member again (N^2).
      value = Json::object();
      auto& members = static_cast<Json::object_t::Container&>(value.get_ref<Json::object_t&>());
      members.reserve(frame.members.size());
      for (auto& member : frame.members) members.emplace_back(std::move(member.first), std::move(member.second));
    } else {
      value = std::move(frame.array);
    }
    frames_.pop_back();
    return add(std::move(value));
  }

  bool add(Json value) {
    if (frames_.empty()) {
      root_ = std::move(value);
    } else if (frames_.back().is_object) {
      frames_.back().members.back().second = std::move(value);
    } else {
      frames_.back().array.get_ref<Json::array_t&>().push_back(std::move(value));
    }
    return true;
  }

  std::vector<Frame> frames_;
  Json root_;
};

inline nlohmann::ordered_json parse_json_text(const std::string& text) {
  // A NUL byte is never valid JSON (not even in a string, where it must be
  // written \u0000), and the parser would take it for the end of the input.
  if (const std::size_t nul = text.find('\0'); nul != std::string::npos) {
    const std::size_t line = 1 + static_cast<std::size_t>(std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(nul), '\n'));
    const std::size_t line_start = text.rfind('\n', nul == 0 ? 0 : nul - 1);
    const std::size_t column = nul - (line_start == std::string::npos || nul == 0 ? 0 : line_start + 1) + 1;
    throw Error(ErrorKind::config_not_json, "not valid JSON: a NUL byte at line " + std::to_string(line) + ", column " +
                                                std::to_string(column) + " (byte " + std::to_string(nul) + ")");
  }
  JsonTreeBuilder builder;
  try {
    nlohmann::ordered_json::sax_parse(text, &builder);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::config_not_json, std::string("not valid JSON: ") + e.what());
  }
  return builder.take();
}

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_JSON_READER_HPP
