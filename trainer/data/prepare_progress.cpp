#include "trainer/data/prepare_progress.h"

#include <algorithm>
#include <cstdio>

namespace moe::trainer {

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char text[32];
  if (s >= 3600) {
    std::snprintf(text, sizeof text, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
  } else if (s >= 60) {
    std::snprintf(text, sizeof text, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  } else {
    std::snprintf(text, sizeof text, "%llds", (long long)s);
  }
  return text;
}

PrepareProgress::PrepareProgress(bool enabled, std::string stage, uint64_t total_bytes, uint64_t start_bytes)
    : enabled_(enabled), stage_(std::move(stage)), total_(std::max<uint64_t>(1, total_bytes)),
      start_bytes_(start_bytes) {}

void PrepareProgress::update(uint64_t bytes, uint64_t documents, uint64_t tokens, bool force) {
  if (!enabled_) return;
  const auto now = Clock::now();
  if (!force && now - last_ < std::chrono::milliseconds(500)) return;
  last_ = now;
  const double secs = std::max(1e-9, std::chrono::duration<double>(now - start_).count());
  const double rate = (bytes - std::min(bytes, start_bytes_)) / secs;
  std::string rates;
  char text[160];
  std::snprintf(text, sizeof text, " %.1f MB/s", rate / 1e6);
  rates += text;
  if (documents > 0) {
    std::snprintf(text, sizeof text, ", %.0f docs/s, %.2fM tok/s", documents / secs, tokens / secs / 1e6);
    rates += text;
  }
  if (rate > 0 && bytes < total_) rates += ", ETA " + format_duration((total_ - bytes) / rate);
  std::fprintf(stderr, "\r[prepare] %s %3.0f%% (%.1f / %.1f MB)%s   ", stage_.c_str(),
               100.0 * std::min(bytes, total_) / total_, bytes / 1e6, total_ / 1e6, rates.c_str());
  std::fflush(stderr);
}

void PrepareProgress::done(uint64_t bytes, uint64_t documents, uint64_t tokens) {
  update(bytes, documents, tokens, true);
  if (enabled_) std::fprintf(stderr, "\n");
}

}  // namespace moe::trainer
