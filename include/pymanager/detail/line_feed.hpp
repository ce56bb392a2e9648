// pymanager: the lines of one run kept for the verifiers that read output
// (OutputVerifier). Made before the spawn is queued, so the first line is
// in it however soon the process prints; filled by the event loop, read by
// the verifier's thread (VerifyContext::next_line). Both sides hold the
// Manager's mutex while they touch it: the waiter waits on the Manager's
// condition variable, which the event loop notifies, so no line and no
// exit or cancellation is missed. Closed once the verifiers are done: from
// then on the event loop only checks an atomic flag.
#ifndef PYMANAGER_DETAIL_LINE_FEED_HPP
#define PYMANAGER_DETAIL_LINE_FEED_HPP

#include <atomic>
#include <cstddef>
#include <deque>
#include <string>
#include <string_view>

#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

class LineFeed {
 public:
  /// A bounded backlog: the lines a verifier has not read yet (the process
  /// printed faster than the verifier matched). Beyond it lines are counted
  /// as missed, and the verifier says so.
  static constexpr std::size_t kMaxLines = 100000;
  static constexpr std::size_t kMaxBytes = std::size_t{16} * 1024 * 1024;

  bool closed() const { return closed_.load(std::memory_order_acquire); }
  /// No more lines are kept (under the Manager's mutex).
  void close() {
    closed_.store(true, std::memory_order_release);
    lines_.clear();
    bytes_ = 0;
  }

  /// Under the Manager's mutex.
  void push(OutputStream stream, std::string_view text) {
    if (closed()) return;
    if (lines_.size() >= kMaxLines || bytes_ + text.size() > kMaxBytes) {
      ++missed_;
      return;
    }
    bytes_ += text.size();
    lines_.push_back(SeenLine{stream, std::string(text)});
  }
  bool empty() const { return lines_.empty(); }
  SeenLine pop() {
    SeenLine line = std::move(lines_.front());
    lines_.pop_front();
    bytes_ -= line.text.size();
    return line;
  }
  std::size_t missed() const { return missed_; }

 private:
  std::atomic<bool> closed_{false};
  std::deque<SeenLine> lines_;
  std::size_t bytes_ = 0;
  std::size_t missed_ = 0;
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_LINE_FEED_HPP
