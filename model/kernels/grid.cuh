// The launch shape our elementwise kernels share: blocks of kThreads threads, enough blocks to fill
// the GPU several times over (at most 65,536); the kernels' grid-stride loops cover the rest.
#pragma once
#include <algorithm>
#include <cstdint>

namespace moe::model::kernels {

constexpr int kThreads = 256;

/// Blocks for `threads` threads of work (at least one).
inline unsigned int blocks_for(int64_t threads) {
  const int64_t needed = (threads + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(1) << 16)));
}

}  // namespace moe::model::kernels
