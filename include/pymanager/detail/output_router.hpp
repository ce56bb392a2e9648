// pymanager: where the children's output goes. The process core hands over
// each run's bytes (for its redirect_output file, which gets them as they
// came) and each line (an OutputLine event); the router passes every line
// to its subscribers: the tail kept for diagnosis, the prefixed terminal
// output and ManagerOptions::on_output. It also owns the Manager's own log.
//
// Everything here runs on the event loop's thread, except log() and tail(),
// which are thread-safe. Nothing blocks: the terminal output and the default
// log go through StreamWriters, which drop whole lines (counted and said)
// when nobody reads them.
#ifndef PYMANAGER_DETAIL_OUTPUT_ROUTER_HPP
#define PYMANAGER_DETAIL_OUTPUT_ROUTER_HPP

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pymanager/config.hpp"
#include "pymanager/detail/fd.hpp"
#include "pymanager/detail/process_table.hpp"
#include "pymanager/error.hpp"
#include "pymanager/output.hpp"
#include "pymanager/verifier.hpp"

namespace pymanager {
inline namespace v1 {
namespace detail {

/// Where one run's output bytes go besides the events: its redirect_output
/// file. Touched by the event loop only, once the run is launched.
struct RunOutput {
  std::size_t index = 0;
  UniqueFd file;  ///< redirect_output, or none
  /// redirect_output to something that can block (a FIFO, /dev/stdout as a
  /// pipe, a terminal): written without blocking, like the terminal output.
  std::unique_ptr<StreamWriter> file_writer;
  std::string file_path;
  bool file_failed = false;
  /// Every line, for the verifiers that read output (or none).
  std::shared_ptr<LineFeed> feed;
};

class OutputRouter {
 public:
  /// `specs` must outlive the router. `output_fd` < 0: no terminal output.
  /// `log`: empty for "pymanager: <message>" on standard error.
  OutputRouter(const std::vector<ProcessSpec>& specs, int output_fd, std::optional<bool> color,
               std::function<void(const std::string&)> log, OutputSubscriber on_output, std::size_t lines_kept)
      : specs_(specs), output_fd_(output_fd), on_output_(std::move(on_output)), tails_(specs.size(), lines_kept) {
    if (output_fd >= 0) out_writer_ = std::make_unique<StreamWriter>(output_fd);
    if (log) {
      log_ = std::move(log);
    } else {
      log_writer_ = std::make_unique<StreamWriter>(STDERR_FILENO);
      StreamWriter* writer = log_writer_.get();
      log_ = [writer](const std::string& message) { writer->write("pymanager: " + message + "\n"); };
    }
    std::size_t name_width = 0;
    for (const auto& spec : specs) name_width = std::max(name_width, spec.name.size());
    if (out_writer_) {
      printer_ = std::make_unique<TerminalPrinter>(*out_writer_, name_width, color.value_or(::isatty(output_fd) == 1));
    }
  }

  /// The Manager's own messages (thread-safe).
  void log(const std::string& message) const { log_(message); }
  /// The writers the event loop keeps flowing (either may be null).
  StreamWriter* output_writer() const { return out_writer_.get(); }
  StreamWriter* log_writer() const { return log_writer_.get(); }

  /// The last `lines` lines of process i, oldest first (thread-safe).
  std::vector<std::string> tail(std::size_t i, std::size_t lines) const { return tails_.last(i, lines); }

  /// Opens process i's redirect_output file `path` for a new run: the first
  /// launch starts it afresh, restarts append. Throws spawn_failed.
  std::shared_ptr<RunOutput> open_run(std::size_t i, const std::optional<std::string>& path, bool first_launch) const {
    auto output = std::make_shared<RunOutput>();
    output->index = i;
    if (!path) return output;
    // O_NONBLOCK: opening a FIFO nobody reads must not wait (it fails).
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (first_launch ? O_TRUNC : O_APPEND);
    output->file.reset(::open(path->c_str(), flags, 0644));
    output->file_path = *path;
    if (!output->file) {
      throw Error(ErrorKind::spawn_failed, "cannot start process " + quote(specs_[i].name) + ": redirect_output " +
                                               *path + ": " + std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(output->file.get(), &st) == 0 && !S_ISREG(st.st_mode)) {
      output->file_writer = std::make_unique<StreamWriter>(output->file.get());
    }
    return output;
  }

  /// redirect_output gets the bytes as they came, so nothing is lost and
  /// nothing waits for a newline.
  void write_run(RunOutput& output, std::string_view bytes) const {
    if (output.file_writer) {
      output.file_writer->write(bytes);
      if (!output.file_failed && output.file_writer->broken()) {
        output.file_failed = true;
        say_cannot_write(output, output.file_writer->error());
      }
    } else if (output.file && !output.file_failed) {
      if (!write_all(output.file.get(), bytes.data(), bytes.size())) {
        // A full disk: said once per run, and the child goes on (its output
        // is still read, and kept in the tail).
        output.file_failed = true;
        say_cannot_write(output, errno);
      }
    }
  }

  /// One line of process i, to every subscriber.
  void deliver(std::size_t i, OutputStream stream, std::string_view text, bool complete) {
    const ProcessSpec& spec = specs_[i];
    tails_.add(i, text);
    OutputLine line;
    line.process = i;
    line.name = spec.name;
    line.stream = stream;
    line.text = text;
    line.complete = complete;
    if (printer_ && !spec.suppress_output && !spec.redirect_output) printer_->print(line);
    if (on_output_) on_output_(line);
  }

  /// On every turn of the event loop: keeps the writers flowing and says
  /// when lines are dropped: as soon as it begins, every 10 s while it
  /// lasts, and once the reader is back.
  void service() {
    if (log_writer_) log_writer_->on_writable();
    if (!out_writer_) return;
    out_writer_->on_writable();
    if (std::size_t dropped = out_writer_->take_dropped()) {
      log(std::to_string(dropped) + " lines not shown, " + output_name() + " was not being read");
      next_drop_notice_ = Clock::time_point{};
    } else if (out_writer_->dropped() > 0 && Clock::now() >= next_drop_notice_) {
      log(std::to_string(out_writer_->take_dropped(true)) + " lines not shown, " + output_name() +
          (out_writer_->broken() ? " was closed by its reader" : " is not being read"));
      next_drop_notice_ = Clock::now() + std::chrono::seconds(10);
    }
  }

  /// At the end (the event loop has stopped): what can still be written
  /// within half a second each, and a last word on what was dropped.
  void finish() {
    if (out_writer_) {
      out_writer_->flush(std::chrono::milliseconds(500));
      if (std::size_t dropped = out_writer_->take_dropped(true)) {
        log(std::to_string(dropped) + " lines not shown, " + output_name() +
            (out_writer_->broken() ? " was closed by its reader"
                                   : out_writer_->backlog() > 0 ? " is not being read" : " was not being read"));
      }
    }
    if (log_writer_) log_writer_->flush(std::chrono::milliseconds(500));
  }

 private:
  std::string output_name() const {
    return output_fd_ == STDOUT_FILENO ? "stdout" : "the output (fd " + std::to_string(output_fd_) + ")";
  }
  void say_cannot_write(const RunOutput& output, int err) const {
    log("warning: " +
        errno_message("cannot write the output of " + quote(specs_[output.index].name) + " to " + output.file_path, err) +
        " (its output is no longer written there; this is said once)");
  }

  const std::vector<ProcessSpec>& specs_;
  int output_fd_;
  OutputSubscriber on_output_;
  std::unique_ptr<StreamWriter> out_writer_;
  std::unique_ptr<StreamWriter> log_writer_;  ///< for the default log only
  std::function<void(const std::string&)> log_;
  std::unique_ptr<TerminalPrinter> printer_;
  TailBuffers tails_;
  Clock::time_point next_drop_notice_{};  ///< event thread only
};

}  // namespace detail
}  // namespace v1
}  // namespace pymanager

#endif  // PYMANAGER_DETAIL_OUTPUT_ROUTER_HPP
