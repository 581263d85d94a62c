// moe-prepare's progress line on stderr, at most every half second:
//   [prepare] tokenizing 45% (1203.4 / 2650.0 MB) 12.3 MB/s, 4100 docs/s, 3.1M tok/s, ETA 1m58s
// Rates count from where this run started (a resumed run has done part of the bytes before).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace moe::trainer {

class PrepareProgress {
 public:
  PrepareProgress(bool enabled, std::string stage, uint64_t total_bytes, uint64_t start_bytes = 0);
  void update(uint64_t bytes, uint64_t documents = 0, uint64_t tokens = 0, bool force = false);
  /// The last line, then a newline.
  void done(uint64_t bytes, uint64_t documents = 0, uint64_t tokens = 0);

 private:
  using Clock = std::chrono::steady_clock;
  bool enabled_;
  std::string stage_;
  uint64_t total_, start_bytes_;
  Clock::time_point start_ = Clock::now(), last_{};
};

/// "1h02m", "3m05s", "42s".
std::string format_duration(double seconds);

}  // namespace moe::trainer
