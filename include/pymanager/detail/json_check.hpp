// pymanager: typed reading of JSON objects with errors that name the JSON path.
#ifndef PYMANAGER_DETAIL_JSON_CHECK_HPP
#define PYMANAGER_DETAIL_JSON_CHECK_HPP

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pymanager/error.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

/// Edit distance for "did you mean" suggestions: insertions, deletions,
/// substitutions and swaps of two adjacent characters each count one (the
/// optimal string alignment distance), so that `SIGTREM` is nearer to
/// `SIGTERM` than to `SIGTRAP`.
inline std::size_t edit_distance(const std::string& a, const std::string& b) {
  // Three rows of the table: the one before the previous, the previous, this one.
  std::vector<std::size_t> before(b.size() + 1), previous(b.size() + 1), row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) previous[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      row[j] = std::min({previous[j] + 1, row[j - 1] + 1, substitution});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) row[j] = std::min(row[j], before[j - 2] + 1);
    }
    std::swap(before, previous);
    std::swap(previous, row);
  }
  return previous[b.size()];
}

/// The closest candidate within a third of the word's length (at least 2 edits), or "".
inline std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_distance = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& candidate : candidates) {
    std::size_t d = edit_distance(word, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best;
}

/// The JSON type name used in error messages ("a string", "a number", ...).
template <class Json>
std::string describe_json_type(const Json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::boolean: return value.template get<bool>() ? "true" : "false";
    case nlohmann::json::value_t::string: return "a string";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float: return value.dump();
    case nlohmann::json::value_t::object: return "an object";
    case nlohmann::json::value_t::array: return "an array";
    default: return "an unsupported value";
  }
}

/// `path.key`, or `key` at the root.
inline std::string join_path(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

[[noreturn]] inline void throw_config_error(const std::string& path, const std::string& problem) {
  throw Error(ErrorKind::config_invalid, path + ": " + problem);
}

/// The longest time a config may give (graceful times, verifier timeouts
/// and intervals): one week. Larger values are refused by the parser, so
/// that no deadline arithmetic can overflow; code that takes seconds
/// directly clamps to it (seconds_to_duration).
constexpr double kMaxSeconds = 7 * 24 * 3600.0;

/// The deepest nesting of objects and arrays a config may have (a real one
/// needs about six levels); deeper input is refused before any recursive
/// walk could exhaust the stack.
constexpr std::size_t kMaxJsonDepth = 64;

/// Throws config_invalid, naming the path, when `root` nests objects and
/// arrays deeper than kMaxJsonDepth. Iterative: any depth is safe to check.
template <class Json>
void check_nesting(const Json& root) {
  struct Frame {
    const Json* node;
    typename Json::const_iterator next;
    typename Json::const_iterator current;
    std::size_t index;
  };
  std::vector<Frame> stack;
  auto path = [&] {
    std::string out;
    for (std::size_t k = 0; k < stack.size() && k < 16; ++k) {
      const Frame& f = stack[k];
      out += f.node->is_object() ? (out.empty() ? "" : ".") + f.current.key() : "[" + std::to_string(f.index - 1) + "]";
    }
    return stack.size() > 16 ? out + "..." : out;
  };
  auto push = [&](const Json& node) {
    if (!node.is_structured() || node.empty()) return;
    if (stack.size() >= kMaxJsonDepth) {
      throw_config_error(path(), "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels of objects and arrays");
    }
    stack.push_back(Frame{&node, node.cbegin(), node.cbegin(), 0});
  };
  push(root);
  while (!stack.empty()) {
    Frame& frame = stack.back();
    if (frame.next == frame.node->cend()) {
      stack.pop_back();
      continue;
    }
    frame.current = frame.next++;
    ++frame.index;
    push(*frame.current);  // may reallocate the stack: `frame` is not used after this
  }
}

/// Throws config_invalid naming `path` when `text` holds a NUL byte: no name,
/// path, argument or environment value that reaches the kernel can.
inline void check_no_nul(const std::string& text, const std::string& path) {
  if (text.find('\0') != std::string::npos) {
    // The path may hold the NUL itself (a key): shown escaped, as JSON writes it.
    std::string shown;
    for (char c : path) shown += c == '\0' ? std::string("\\u0000") : std::string(1, c);
    throw_config_error(shown.empty() ? "(top level)" : shown,
                       "contains a NUL byte (\\u0000), which no name, path, argument or environment value can hold");
  }
}

/// Reads the members of one JSON object by name and type; `finish()` rejects
/// every member that was not read, with a suggestion for a near miss.
/// Works with nlohmann::json and nlohmann::ordered_json.
/// When set, every key an ObjectReader is asked for (present or not) is
/// added as (the object's JSON path, the key): what the parser knows, for
/// the test that keeps it and the schema (config_schema.hpp) in agreement.
/// One per thread; null (the default) records nothing.
inline std::vector<std::pair<std::string, std::string>>*& key_log() {
  static thread_local std::vector<std::pair<std::string, std::string>>* log = nullptr;
  return log;
}

template <class Json>
class ObjectReader {
 public:
  ObjectReader(const Json& object, std::string path) : object_(object), path_(std::move(path)) {
    if (!object_.is_object()) {
      throw_config_error(path_.empty() ? "(top level)" : path_,
                         "expected an object, got " + describe_json_type(object_));
    }
  }

  const std::string& path() const { return path_; }
  std::string path_of(const std::string& key) const { return join_path(path_, key); }

  /// Marks `key` as known (also when absent) and returns the member, if present.
  const Json* member(const std::string& key) {
    known_.push_back(key);
    if (auto* log = key_log()) log->emplace_back(path_, key);
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }

  /// A key with two spellings (`keep-alive`, `keep_alive`): each one given is
  /// read and checked by `read(key)`. When both are given, the second one
  /// (`preferred`) wins, as the original reads only that spelling; if their
  /// values differ, a warning naming both keys and both values is added to
  /// `warnings`. Giving both is not an error: the original runs such a file.
  template <class T, class Read>
  std::optional<T> either_spelling(const std::string& other, const std::string& preferred, Read read,
                                   std::vector<std::string>& warnings) {
    std::optional<T> other_value = read(other);
    std::optional<T> preferred_value = read(preferred);
    if (!preferred_value) return other_value;
    if (other_value && !(*other_value == *preferred_value)) {
      warnings.push_back(path_of(other) + " is " + member_text(other) + " but " + path_of(preferred) + " is " +
                         member_text(preferred) + ": using " + path_of(preferred) + " (" + member_text(preferred) +
                         "), the spelling the original reads");
    }
    return preferred_value;
  }

  std::optional<bool> boolean(const std::string& key) {
    const Json* m = member(key);
    if (m == nullptr) return std::nullopt;
    if (!m->is_boolean()) expected(key, "true or false", *m);
    return m->template get<bool>();
  }

  std::optional<std::string> string(const std::string& key) {
    const Json* m = member(key);
    if (m == nullptr) return std::nullopt;
    if (!m->is_string()) expected(key, "a string", *m);
    check_no_nul(m->template get_ref<const std::string&>(), path_of(key));
    return m->template get<std::string>();
  }

  std::string required_string(const std::string& key) {
    auto value = string(key);
    if (!value) missing(key, "required key is missing");
    return *value;
  }

  /// Reports that the required `key` is absent. A member not read so far that
  /// looks like a misspelling of it is named instead, so that a typo is
  /// reported where it is: `executabel: unknown key (did you mean executable?)`.
  [[noreturn]] void missing(const std::string& key, const std::string& problem) const {
    for (auto it = object_.begin(); it != object_.end(); ++it) {
      if (std::find(known_.begin(), known_.end(), it.key()) != known_.end()) continue;
      if (closest_match(it.key(), {key}) == key) {
        throw_config_error(path_of(it.key()), "unknown key (did you mean " + key + "?)");
      }
    }
    throw_config_error(path_of(key), problem);
  }

  /// A duration in seconds: a number from 0 to kMaxSeconds (a week).
  std::optional<double> seconds(const std::string& key) {
    std::optional<double> value = number_at(member(key), key, 0.0);
    if (value && *value > kMaxSeconds) {
      throw_config_error(path_of(key), "must be at most " + std::to_string(static_cast<long long>(kMaxSeconds)) +
                                           " seconds (a week), got " + object_.find(key)->dump());
    }
    return value;
  }

  /// A finite number, at least `minimum`.
  std::optional<double> number(const std::string& key, double minimum = -HUGE_VAL) {
    return number_at(member(key), key, minimum);
  }

  std::optional<long long> integer(const std::string& key, long long minimum, long long maximum) {
    const Json* m = member(key);
    if (m == nullptr) return std::nullopt;
    if (!m->is_number_integer() && !m->is_number_unsigned()) expected(key, "an integer", *m);
    if (m->is_number_unsigned() && m->template get<unsigned long long>() > static_cast<unsigned long long>(maximum)) {
      throw_config_error(path_of(key), "must be at most " + std::to_string(maximum) + ", got " + m->dump());
    }
    long long v = m->template get<long long>();
    if (v < minimum || v > maximum) {
      throw_config_error(path_of(key), "must be between " + std::to_string(minimum) + " and " +
                                           std::to_string(maximum) + ", got " + m->dump());
    }
    return v;
  }

  /// An object whose values are all strings (e.g. HTTP headers).
  std::optional<std::vector<std::pair<std::string, std::string>>> string_map(const std::string& key) {
    const Json* m = member(key);
    if (m == nullptr) return std::nullopt;
    if (!m->is_object()) expected(key, "an object of strings", *m);
    std::vector<std::pair<std::string, std::string>> out;
    for (auto it = m->begin(); it != m->end(); ++it) {
      if (!it->is_string()) {
        throw_config_error(join_path(path_of(key), it.key()), "expected a string, got " + describe_json_type(*it));
      }
      check_no_nul(it.key(), join_path(path_of(key), it.key()));
      check_no_nul(it->template get_ref<const std::string&>(), join_path(path_of(key), it.key()));
      out.emplace_back(it.key(), it->template get<std::string>());
    }
    return out;
  }

  std::optional<std::vector<std::string>> string_list(const std::string& key) {
    const Json* m = member(key);
    if (m == nullptr) return std::nullopt;
    if (!m->is_array()) expected(key, "a list of strings", *m);
    std::vector<std::string> out;
    for (std::size_t i = 0; i < m->size(); ++i) {
      const Json& item = (*m)[i];
      if (!item.is_string()) {
        throw_config_error(path_of(key) + "[" + std::to_string(i) + "]",
                           "expected a string, got " + describe_json_type(item));
      }
      check_no_nul(item.template get_ref<const std::string&>(), path_of(key) + "[" + std::to_string(i) + "]");
      out.push_back(item.template get<std::string>());
    }
    return out;
  }

  /// Rejects every member that no accessor asked for.
  void finish() const {
    for (auto it = object_.begin(); it != object_.end(); ++it) {
      if (std::find(known_.begin(), known_.end(), it.key()) != known_.end()) continue;
      std::string suggestion = closest_match(it.key(), known_);
      throw_config_error(path_of(it.key()),
                         suggestion.empty() ? "unknown key" : "unknown key (did you mean " + suggestion + "?)");
    }
  }

  /// The JSON text of a present member, as written (`true`, `5`, `"x"`).
  std::string member_text(const std::string& key) const {
    auto it = object_.find(key);
    return it == object_.end() ? std::string("absent") : it->dump();
  }

  [[noreturn]] void expected(const std::string& key, const std::string& what, const Json& got) const {
    throw_config_error(path_of(key), "expected " + what + ", got " + describe_json_type(got));
  }

 private:
  std::optional<double> number_at(const Json* m, const std::string& key, double minimum) {
    if (m == nullptr) return std::nullopt;
    if (!m->is_number()) expected(key, "a number", *m);
    double v = m->template get<double>();
    if (!std::isfinite(v) || v < minimum) {
      throw_config_error(path_of(key), "must be at least " + nlohmann::json(minimum).dump() + ", got " + m->dump());
    }
    return v;
  }

  const Json& object_;
  std::string path_;
  std::vector<std::string> known_;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_JSON_CHECK_HPP
