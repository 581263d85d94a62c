// Small statistics the benchmark programs share: median and mean of timings, elapsed seconds.
#pragma once
#include <algorithm>
#include <chrono>
#include <numeric>
#include <vector>

namespace moe::bench {

/// The middle element (the upper one of an even count); 0 for none.
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

inline double mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace moe::bench
