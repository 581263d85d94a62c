// The cross entropy's rows in one pass each way. Forward: a block per row reads its logits once,
// each thread keeping a running max and the sum of exponentials below it (rescaled when the max
// grows), combined across the block into the row's log-sum-exp; the row's loss is that minus the
// target's logit. Where the operators cast each block of logits to float32, ran log_softmax
// (writing it) and gathered, this writes two floats per row. Backward: softmax minus the target's
// one-hot, times the row's gradient, written in the logits' dtype, where the operators wrote a
// float32 softmax, scattered the one-hot into it, multiplied and cast.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "model/kernels/cross_entropy_kernels.h"
#include "model/kernels/element_convert.cuh"
#include "model/kernels/grid.cuh"

namespace moe::model::kernels {

namespace {

constexpr unsigned kFullWarp = 0xffffffffu;

struct MaxSum {
  float max, sum;  // sum of exp(x - max) over the values seen
};

__device__ MaxSum merge(MaxSum a, MaxSum b) {
  const float top = fmaxf(a.max, b.max);
  if (top == -INFINITY) return {top, 0.f};  // nothing above -inf seen on either side
  return {top, a.sum * expf(a.max - top) + b.sum * expf(b.max - top)};
}

__device__ MaxSum warp_merge(MaxSum v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v = merge(v, {__shfl_xor_sync(kFullWarp, v.max, offset), __shfl_xor_sync(kFullWarp, v.sum, offset)});
  }
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets, float* __restrict__ lse,
                         float* __restrict__ loss, CrossEntropyShape s) {
  __shared__ MaxSum warp_results[kThreads / 32];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * s.vocab;
  MaxSum mine{-INFINITY, 0.f};
  for (int64_t v = threadIdx.x; v < s.vocab; v += kThreads) {
    const float value = to_float(x[v]);
    if (value > mine.max) {
      mine.sum = mine.sum * expf(mine.max - value) + 1.f;  // exp(-inf) = 0 for the first value
      mine.max = value;
    } else if (value != -INFINITY) {
      mine.sum += expf(value - mine.max);  // NaN stays NaN
    }
  }
  mine = warp_merge(mine);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_results[warp] = mine;
  __syncthreads();
  if (warp != 0) return;
  mine = lane < kThreads / 32 ? warp_results[lane] : MaxSum{-INFINITY, 0.f};
  mine = warp_merge(mine);
  if (lane != 0) return;
  const float row_lse = mine.max + logf(mine.sum);
  const int64_t target = targets[row];
  lse[row] = row_lse;
  if (target == s.ignore_index) {
    loss[row] = 0.f;
  } else {
    loss[row] = target >= 0 && target < s.vocab ? row_lse - to_float(x[target]) : NAN;
  }
}

template <typename T>
__global__ void cross_entropy_backward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                                              const float* __restrict__ lse, const float* __restrict__ grad_loss,
                                              int64_t grad_stride, T* __restrict__ grad_logits, CrossEntropyShape s) {
  const int64_t row = blockIdx.x;
  const int64_t target = targets[row];
  const bool counted = target != s.ignore_index;
  const float g = grad_loss[row * grad_stride], row_lse = lse[row];
  const T* x = logits + row * s.vocab;
  T* out = grad_logits + row * s.vocab;
  for (int64_t v = threadIdx.x; v < s.vocab; v += blockDim.x) {
    const float softmax = expf(to_float(x[v]) - row_lse);
    out[v] = from_float<T>(counted ? (softmax - (v == target ? 1.f : 0.f)) * g : 0.f);
  }
}

bool valid(const CrossEntropyShape& s) { return s.rows >= 0 && s.rows < (int64_t(1) << 31) && s.vocab > 0; }

}  // namespace

cudaError_t launch_cross_entropy(ElementType type, const void* logits, const int64_t* targets, float* lse, float* loss,
                                 const CrossEntropyShape& shape, cudaStream_t stream) {
  if (!valid(shape)) return cudaErrorInvalidValue;
  if (shape.rows == 0) return cudaSuccess;
  return with_element_type(type, [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_kernel<T><<<static_cast<unsigned int>(shape.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), targets, lse, loss, shape);
    return cudaGetLastError();
  });
}

cudaError_t launch_cross_entropy_backward(ElementType type, const void* logits, const int64_t* targets,
                                          const float* lse, const float* grad_loss, int64_t grad_stride,
                                          void* grad_logits, const CrossEntropyShape& shape, cudaStream_t stream) {
  if (!valid(shape) || grad_stride < 0) return cudaErrorInvalidValue;
  if (shape.rows == 0) return cudaSuccess;
  return with_element_type(type, [&](auto tag) {
    using T = decltype(tag);
    cross_entropy_backward_kernel<T><<<static_cast<unsigned int>(shape.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), targets, lse, grad_loss, grad_stride, static_cast<T*>(grad_logits), shape);
    return cudaGetLastError();
  });
}

}  // namespace moe::model::kernels
