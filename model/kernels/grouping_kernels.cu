// The copies' grouping by expert as a counting sort in two kernels, where the operators ran a radix
// sort (several kernels), a count (zero-fill, ones, scatter-add), a division and an inverse
// permutation (arange, scatter). The copies are cut into at most kMaxBlocks contiguous chunks, a
// block each. count_kernel: each block's copies per expert. place_kernel: each block sums the counts
// into the experts' totals (scanned into their starts) and the earlier blocks' share of each expert,
// then walks its chunk in tiles of kThreads copies: a copy's place is its expert's next free place
// plus the same expert's copies before it in the tile (earlier warps' counts and the lanes below it
// in its warp, from __match_any_sync), so ties keep index order as a stable sort's.
#include <algorithm>
#include <cub/block/block_scan.cuh>

#include "model/kernels/grouping_kernels.h"

namespace moe::model::kernels {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kExpertsPerThread = kMaxCountedExperts / kThreads;
constexpr int64_t kMaxBlocks = 128;  // the place kernel reads blocks x experts counts in every block
constexpr unsigned kFullWarp = 0xffffffffu;

struct Chunks {
  int blocks;
  int64_t size;  // copies per block (the last may have fewer)
};

Chunks chunks_of(int64_t copies) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (copies + kThreads - 1) / kThreads));
  return {static_cast<int>(blocks), (copies + blocks - 1) / blocks};
}

__global__ void count_kernel(const int64_t* __restrict__ ids, int* __restrict__ block_counts, GroupingShape s,
                             int64_t chunk) {
  extern __shared__ int counts[];  // [experts]
  for (int e = threadIdx.x; e < s.experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const int64_t begin = blockIdx.x * chunk, end = min(begin + chunk, s.copies);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) atomicAdd(&counts[ids[i]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < s.experts; e += blockDim.x)
    block_counts[int64_t(blockIdx.x) * s.experts + e] = counts[e];
}

__global__ void __launch_bounds__(kThreads)
    place_kernel(const int64_t* __restrict__ ids, const int* __restrict__ block_counts,
                 int64_t* __restrict__ copy_order, int64_t* __restrict__ token_of_copy,
                 int64_t* __restrict__ position_of_copy, int64_t* __restrict__ routed, GroupingShape s, int64_t chunk) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  extern __shared__ int shared[];
  int* next = shared;                     // [experts]: the next free place of each expert in this block
  int* warp_counts = shared + s.experts;  // [kWarps, experts]: a tile's copies per warp and expert

  // Experts tid * kExpertsPerThread + j (a blocked arrangement, as the scan takes them).
  int total[kExpertsPerThread], before[kExpertsPerThread], start[kExpertsPerThread];
  for (int j = 0; j < kExpertsPerThread; ++j) {
    const int e = threadIdx.x * kExpertsPerThread + j;
    total[j] = 0, before[j] = 0;
    if (e >= s.experts) continue;
    for (int b = 0; b < gridDim.x; ++b) {
      const int c = block_counts[int64_t(b) * s.experts + e];
      total[j] += c;
      before[j] += b < blockIdx.x ? c : 0;
    }
  }
  Scan(scan_storage).ExclusiveSum(total, start);
  for (int j = 0; j < kExpertsPerThread; ++j) {
    const int e = threadIdx.x * kExpertsPerThread + j;
    if (e >= s.experts) continue;
    next[e] = start[j] + before[j];
    if (blockIdx.x == 0) routed[e] = total[j];
  }
  for (int i = threadIdx.x; i < kWarps * s.experts; i += kThreads) warp_counts[i] = 0;
  __syncthreads();

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t begin = blockIdx.x * chunk, end = min(begin + chunk, s.copies);
  for (int64_t tile = begin; tile < end; tile += kThreads) {  // the same trip count in every thread
    const int64_t i = tile + threadIdx.x;
    const bool valid = i < end;
    const int e = valid ? static_cast<int>(ids[i]) : -1;
    const unsigned peers = __match_any_sync(kFullWarp, e);
    const bool leader = __ffs(peers) - 1 == lane;
    if (valid && leader) warp_counts[warp * s.experts + e] = __popc(peers);
    __syncthreads();
    if (valid) {
      int place = next[e] + __popc(peers & ((1u << lane) - 1u));
      for (int w = 0; w < warp; ++w) place += warp_counts[w * s.experts + e];
      copy_order[place] = i;
      token_of_copy[place] = i / s.top_k;
      position_of_copy[i] = place;
    }
    __syncthreads();
    if (valid && leader) {
      atomicAdd(&next[e], __popc(peers));
      warp_counts[warp * s.experts + e] = 0;
    }
    __syncthreads();
  }
}

bool valid(const GroupingShape& s) {
  return s.copies >= 0 && s.copies < (int64_t(1) << 31) && s.top_k > 0 && s.experts > 0 &&
         s.experts <= kMaxCountedExperts;
}

}  // namespace

int64_t grouping_workspace_ints(const GroupingShape& shape) {
  return int64_t(chunks_of(shape.copies).blocks) * shape.experts;
}

cudaError_t launch_group_copies(const int64_t* ids, int64_t* copy_order, int64_t* token_of_copy,
                                int64_t* position_of_copy, int64_t* routed, int* workspace, const GroupingShape& shape,
                                cudaStream_t stream) {
  if (!valid(shape)) return cudaErrorInvalidValue;
  if (shape.copies == 0) return cudaMemsetAsync(routed, 0, sizeof(int64_t) * shape.experts, stream);
  const auto chunks = chunks_of(shape.copies);
  count_kernel<<<chunks.blocks, kThreads, sizeof(int) * shape.experts, stream>>>(ids, workspace, shape, chunks.size);
  const auto error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  place_kernel<<<chunks.blocks, kThreads, sizeof(int) * (1 + kWarps) * shape.experts, stream>>>(
      ids, workspace, copy_order, token_of_copy, position_of_copy, routed, shape, chunks.size);
  return cudaGetLastError();
}

}  // namespace moe::model::kernels
