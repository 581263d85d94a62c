// The router in one pass each way, a warp per token. Forward: the scores (softmax or sigmoid), the
// top k of scores + bias by k warp-wide arg-max rounds, and the chosen scores renormalised and
// scaled, where the operators run a softmax, an add, a top-k, a gather, a sum, an add, a division
// and a product. Backward: the weights' gradient through the renormalisation, added to the scores'
// at the chosen experts, and back through the softmax or sigmoid.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "model/kernels/element_convert.cuh"
#include "model/kernels/grid.cuh"
#include "model/kernels/route_kernels.h"
#include "model/kernels/route_math.h"

namespace moe::model::kernels {

namespace {

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

__device__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}

// The warp's best (value, index, score) by ranks_before; every lane gets it.
__device__ void warp_best(float& value, int& index, float& score) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other_value = __shfl_xor_sync(kFullWarp, value, offset);
    const int other_index = __shfl_xor_sync(kFullWarp, index, offset);
    const float other_score = __shfl_xor_sync(kFullWarp, score, offset);
    if (other_index >= 0 && ranks_before(other_value, other_index, value, index)) {
      value = other_value, index = other_index, score = other_score;
    }
  }
}

__device__ bool taken(int e, const int* chosen, int count) {
  for (int j = 0; j < count; ++j) {
    if (chosen[j] == e) return true;
  }
  return false;
}

template <typename T>
__global__ void route_kernel(const T* __restrict__ logits, const float* __restrict__ bias, float* __restrict__ scores,
                             int64_t* __restrict__ topk_idx, float* __restrict__ topk_weight, RouteShape s) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; n < s.tokens; n += warps) {
    const T* row = logits + n * s.experts;
    float* score = scores + n * s.experts;
    // Each lane writes and later reads only its own experts' scores: no sync needed between.
    if (s.sigmoid) {
      for (int e = lane; e < s.experts; e += 32) score[e] = 1.f / (1.f + expf(-to_float(row[e])));
    } else {
      float top = -INFINITY;
      for (int e = lane; e < s.experts; e += 32) top = fmaxf(top, to_float(row[e]));
      top = warp_max(top);
      float sum = 0.f;
      for (int e = lane; e < s.experts; e += 32) sum += expf(to_float(row[e]) - top);
      sum = warp_sum(sum);
      for (int e = lane; e < s.experts; e += 32) score[e] = expf(to_float(row[e]) - top) / sum;
    }
    int chosen[kMaxRouteTopK];
    float chosen_score[kMaxRouteTopK];
    for (int j = 0; j < s.top_k; ++j) {
      float best = 0.f, best_score = 0.f;
      int best_index = -1;
      for (int e = lane; e < s.experts; e += 32) {
        if (taken(e, chosen, j)) continue;
        const float value = score[e] + (bias != nullptr ? bias[e] : 0.f);
        if (ranks_before(value, e, best, best_index)) best = value, best_index = e, best_score = score[e];
      }
      warp_best(best, best_index, best_score);
      chosen[j] = best_index, chosen_score[j] = best_score;
    }
    if (lane == 0) {
      float sum = 0.f;
      for (int j = 0; j < s.top_k; ++j) sum += chosen_score[j];
      sum += kRenormaliseEpsilon;
      for (int j = 0; j < s.top_k; ++j) {
        topk_idx[n * s.top_k + j] = chosen[j];
        topk_weight[n * s.top_k + j] = (s.renormalise ? chosen_score[j] / sum : chosen_score[j]) * s.scale;
      }
    }
  }
}

template <typename T>
__global__ void route_backward_kernel(const float* __restrict__ grad_scores, const float* __restrict__ grad_weight,
                                      const float* __restrict__ scores, const int64_t* __restrict__ topk_idx,
                                      T* __restrict__ grad_logits, RouteShape s) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; n < s.tokens; n += warps) {
    const float* score = scores + n * s.experts;
    int chosen[kMaxRouteTopK];
    float chosen_score[kMaxRouteTopK], grad_w[kMaxRouteTopK], grad_chosen[kMaxRouteTopK];
    for (int j = 0; j < s.top_k; ++j) {
      chosen[j] = static_cast<int>(topk_idx[n * s.top_k + j]);
      chosen_score[j] = score[chosen[j]];
      grad_w[j] = grad_weight != nullptr ? grad_weight[n * s.top_k + j] : 0.f;
    }
    chosen_score_gradients(chosen_score, grad_w, s.top_k, s.renormalise, s.scale, grad_chosen);
    // The score's whole gradient: its own (the aux loss) plus the weights' where it was chosen.
    auto grad_of = [&](int e) {
      float g = grad_scores != nullptr ? grad_scores[n * s.experts + e] : 0.f;
      for (int j = 0; j < s.top_k; ++j) g += chosen[j] == e ? grad_chosen[j] : 0.f;
      return g;
    };
    float dot = 0.f;
    if (!s.sigmoid) {
      for (int e = lane; e < s.experts; e += 32) dot += grad_of(e) * score[e];
      dot = warp_sum(dot);
    }
    for (int e = lane; e < s.experts; e += 32) {
      grad_logits[n * s.experts + e] = from_float<T>(logit_gradient(grad_of(e), score[e], dot, s.sigmoid));
    }
  }
}

bool valid(const RouteShape& s) {
  return s.experts > 0 && s.top_k > 0 && s.top_k <= kMaxRouteTopK && s.top_k <= s.experts;
}

}  // namespace

cudaError_t launch_route(ElementType type, const void* logits, const float* bias, float* scores, int64_t* topk_idx,
                         float* topk_weight, const RouteShape& shape, cudaStream_t stream) {
  if (!valid(shape)) return cudaErrorInvalidValue;
  if (shape.tokens == 0) return cudaSuccess;
  return with_element_type(type, [&](auto tag) {
    using T = decltype(tag);
    route_kernel<T><<<blocks_for(shape.tokens * 32), kThreads, 0, stream>>>(static_cast<const T*>(logits), bias, scores,
                                                                            topk_idx, topk_weight, shape);
    return cudaGetLastError();
  });
}

cudaError_t launch_route_backward(ElementType type, const float* grad_scores, const float* grad_weight,
                                  const float* scores, const int64_t* topk_idx, void* grad_logits,
                                  const RouteShape& shape, cudaStream_t stream) {
  if (!valid(shape)) return cudaErrorInvalidValue;
  if (shape.tokens == 0) return cudaSuccess;
  return with_element_type(type, [&](auto tag) {
    using T = decltype(tag);
    route_backward_kernel<T><<<blocks_for(shape.tokens * 32), kThreads, 0, stream>>>(
        grad_scores, grad_weight, scores, topk_idx, static_cast<T*>(grad_logits), shape);
    return cudaGetLastError();
  });
}

}  // namespace moe::model::kernels
