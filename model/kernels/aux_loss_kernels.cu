// The sequence-level aux loss (DeepSeek's seq_aux, MiniMind's default) in one pass per sequence,
// where the operators ran a ones, a zero-fill, a scatter-add, a mean, a dot product and a scale
// forward and three more kernels backward. Since the loss is linear in the scores,
//   loss = scale / T * sum_{b,t,e} counts[b, e] * scores[b, t, e],
// a block per sequence counts its copies per expert in shared memory, then reads its scores once
// (coalesced, each weighted by its expert's count) and reduces them to the sequence's partial sum.
// The backward is one elementwise pass: the gradient of scores[b, t, e] is scale / T * counts[b, e].
#include "model/kernels/aux_loss_kernels.h"
#include "model/kernels/grid.cuh"

namespace moe::model::kernels {

namespace {

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = 0.f;
  if (warp == 0) {
    v = lane < kThreads / 32 ? warp_sums[lane] : 0.f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  }
  return v;  // in thread 0
}

__global__ void __launch_bounds__(kThreads)
    sequence_aux_loss_kernel(const float* __restrict__ scores, const int64_t* __restrict__ ids,
                             float* __restrict__ counts_out, float* __restrict__ partial, AuxLossShape s,
                             float scale_over_seq) {
  extern __shared__ float counts[];  // [experts]
  const int64_t b = blockIdx.x;
  for (int e = threadIdx.x; e < s.experts; e += kThreads) counts[e] = 0.f;
  __syncthreads();
  const int64_t* row_ids = ids + b * s.copies_per_sequence;
  for (int i = threadIdx.x; i < s.copies_per_sequence; i += kThreads) atomicAdd(&counts[row_ids[i]], 1.f);
  __syncthreads();
  for (int e = threadIdx.x; e < s.experts; e += kThreads) counts_out[b * s.experts + e] = counts[e];
  const int elements = s.seq * s.experts;
  const float* row = scores + b * elements;
  float sum = 0.f;
  for (int j = threadIdx.x; j < elements; j += kThreads) sum += row[j] * counts[j % s.experts];
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[b] = sum * scale_over_seq;
}

__global__ void sequence_aux_loss_backward_kernel(const float* __restrict__ grad_loss, const float* __restrict__ counts,
                                                  float* __restrict__ grad_scores, AuxLossShape s,
                                                  float scale_over_seq) {
  const float g = grad_loss[0] * scale_over_seq;
  const int64_t per_sequence = int64_t(s.seq) * s.experts, total = s.batch * per_sequence;
  for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < total; n += int64_t(gridDim.x) * blockDim.x) {
    grad_scores[n] = g * counts[(n / per_sequence) * s.experts + n % s.experts];
  }
}

bool valid(const AuxLossShape& s) {
  return s.batch >= 0 && s.batch < (int64_t(1) << 31) && s.seq >= 0 && s.experts > 0 &&
         s.experts <= kMaxCountedExperts && s.copies_per_sequence >= 0 &&
         int64_t(s.seq) * s.experts < (int64_t(1) << 31);
}

}  // namespace

cudaError_t launch_sequence_aux_loss(const float* scores, const int64_t* ids, float* counts, float* partial,
                                     const AuxLossShape& shape, float scale, cudaStream_t stream) {
  if (!valid(shape)) return cudaErrorInvalidValue;
  if (shape.batch == 0) return cudaSuccess;
  const float scale_over_seq = shape.seq > 0 ? scale / static_cast<float>(shape.seq) : 0.f;
  sequence_aux_loss_kernel<<<static_cast<unsigned int>(shape.batch), kThreads, sizeof(float) * shape.experts, stream>>>(
      scores, ids, counts, partial, shape, scale_over_seq);
  return cudaGetLastError();
}

cudaError_t launch_sequence_aux_loss_backward(const float* grad_loss, const float* counts, float* grad_scores,
                                              const AuxLossShape& shape, float scale, cudaStream_t stream) {
  if (!valid(shape)) return cudaErrorInvalidValue;
  const int64_t total = shape.batch * shape.seq * shape.experts;
  if (total == 0) return cudaSuccess;
  sequence_aux_loss_backward_kernel<<<blocks_for(total), kThreads, 0, stream>>>(grad_loss, counts, grad_scores, shape,
                                                                                scale / static_cast<float>(shape.seq));
  return cudaGetLastError();
}

}  // namespace moe::model::kernels
