// The MoE combine in one pass each way. Forward: each thread sums one element of a token's output
// over its k copies (gathered through their positions), where the operators gather the copies,
// multiply by the weights, sum and cast, each pass writing its result. Backward: a warp per copy
// writes that copy's gradient row at its position and reduces its weight's gradient.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "model/kernels/combine_kernels.h"
#include "model/kernels/combine_math.h"
#include "model/kernels/element_convert.cuh"
#include "model/kernels/grid.cuh"

namespace moe::model::kernels {

namespace {

template <typename T, typename O>
__global__ void combine_kernel(const T* __restrict__ expert_out, const int64_t* __restrict__ position,
                               const float* __restrict__ weights, const T* __restrict__ shared, O* __restrict__ out,
                               CombineShape s) {
  const RoundTo<T> round;
  const int64_t items = s.tokens * s.hidden;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = item / s.hidden, h = item - n * s.hidden;
    float sum = 0.f;
    for (int64_t j = 0; j < s.slots; ++j) {
      const int64_t copy = n * s.slots + j;
      const float weight = weights != nullptr ? weights[copy] : 1.f;
      sum += combine_term(to_float(expert_out[position[copy] * s.hidden + h]), weight, round);
    }
    // The routed sum as the operators store it, then the shared experts' output added in out's dtype.
    out[item] = from_float<O>(shared != nullptr ? round(sum) + to_float(shared[item]) : round(sum));
  }
}

template <typename T, typename O>
__global__ void combine_backward_kernel(const O* __restrict__ grad, const T* __restrict__ expert_out,
                                        const int64_t* __restrict__ position, const float* __restrict__ weights,
                                        T* __restrict__ grad_expert_out, float* __restrict__ grad_weights,
                                        T* __restrict__ grad_shared, CombineShape s) {
  const RoundTo<T> round;
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t copies = s.tokens * s.slots;
  for (int64_t copy = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; copy < copies; copy += warps) {
    const int64_t n = copy / s.slots, row = position[copy];
    const float weight = weights[copy];
    const O* g = grad + n * s.hidden;
    const T* value = expert_out + row * s.hidden;
    T* grad_row = grad_expert_out + row * s.hidden;
    // The shared experts' gradient is the output's in their dtype: written once, by the token's slot 0.
    T* grad_shared_row = grad_shared != nullptr && copy % s.slots == 0 ? grad_shared + n * s.hidden : nullptr;
    float dot = 0.f;
    for (int64_t h = lane; h < s.hidden; h += 32) {
      const float g_t = round(to_float(g[h]));  // the output's gradient in the experts' dtype
      grad_row[h] = from_float<T>(combine_term(g_t, weight, round));
      if (grad_shared_row != nullptr) grad_shared_row[h] = from_float<T>(g_t);
      dot += round(g_t * to_float(value[h]));
    }
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_down_sync(0xffffffffu, dot, offset);
    if (lane == 0) grad_weights[copy] = round(dot);
  }
}

template <typename T, typename O>
cudaError_t combine_as(const void* expert_out, const int64_t* position, const float* weights, const void* shared,
                       void* out, const CombineShape& s, cudaStream_t stream) {
  combine_kernel<T, O><<<blocks_for(s.tokens * s.hidden), kThreads, 0, stream>>>(
      static_cast<const T*>(expert_out), position, weights, static_cast<const T*>(shared), static_cast<O*>(out), s);
  return cudaGetLastError();
}

template <typename T, typename O>
cudaError_t combine_backward_as(const void* grad, const void* expert_out, const int64_t* position, const float* weights,
                                void* grad_expert_out, float* grad_weights, void* grad_shared, const CombineShape& s,
                                cudaStream_t stream) {
  combine_backward_kernel<T, O><<<blocks_for(s.tokens * s.slots * 32), kThreads, 0, stream>>>(
      static_cast<const O*>(grad), static_cast<const T*>(expert_out), position, weights,
      static_cast<T*>(grad_expert_out), grad_weights, static_cast<T*>(grad_shared), s);
  return cudaGetLastError();
}

// The output is the experts' dtype or float32 (the residual stream under autocast).
template <template <typename, typename> class Launch, typename... Args>
cudaError_t dispatch(ElementType type, ElementType out_type, Args... args) {
  const bool same = out_type == type;
  if (!same && out_type != ElementType::kFloat32) return cudaErrorInvalidValue;
  switch (type) {
    case ElementType::kFloat32:
      return Launch<float, float>::run(args...);
    case ElementType::kBFloat16:
      return same ? Launch<__nv_bfloat16, __nv_bfloat16>::run(args...) : Launch<__nv_bfloat16, float>::run(args...);
    case ElementType::kFloat16:
      return same ? Launch<__half, __half>::run(args...) : Launch<__half, float>::run(args...);
  }
  return cudaErrorInvalidValue;
}

template <typename T, typename O>
struct Forward {
  static cudaError_t run(const void* e, const int64_t* p, const float* w, const void* sh, void* out, CombineShape s,
                         cudaStream_t st) {
    return combine_as<T, O>(e, p, w, sh, out, s, st);
  }
};

template <typename T, typename O>
struct Backward {
  static cudaError_t run(const void* g, const void* e, const int64_t* p, const float* w, void* ge, float* gw, void* gs,
                         CombineShape s, cudaStream_t st) {
    return combine_backward_as<T, O>(g, e, p, w, ge, gw, gs, s, st);
  }
};

}  // namespace

cudaError_t launch_combine(ElementType type, ElementType out_type, const void* expert_out, const int64_t* position,
                           const float* weights, const void* shared, void* out, const CombineShape& shape,
                           cudaStream_t stream) {
  if (shape.tokens * shape.hidden == 0) return cudaSuccess;
  return dispatch<Forward>(type, out_type, expert_out, position, weights, shared, out, shape, stream);
}

cudaError_t launch_combine_backward(ElementType type, ElementType out_type, const void* grad, const void* expert_out,
                                    const int64_t* position, const float* weights, void* grad_expert_out,
                                    float* grad_weights, void* grad_shared, const CombineShape& shape,
                                    cudaStream_t stream) {
  if (shape.tokens * shape.slots == 0) return cudaSuccess;
  return dispatch<Backward>(type, out_type, grad, expert_out, position, weights, grad_expert_out, grad_weights,
                            grad_shared, shape, stream);
}

}  // namespace moe::model::kernels
