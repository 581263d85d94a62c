// Conversions between the kernels' element types and float32 (the type their math runs in),
// RoundTo<T>: a value stored in T and read back, the rounding an ATen operator's intermediate
// tensor of dtype T gives (round to nearest even), and the switch from ElementType to T.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "model/kernels/element_type.h"

namespace moe::model::kernels {

__host__ __device__ inline float to_float(float x) { return x; }
__host__ __device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__host__ __device__ inline float to_float(__half x) { return __half2float(x); }

template <typename T>
__host__ __device__ inline T from_float(float x);
template <>
__host__ __device__ inline float from_float<float>(float x) {
  return x;
}
template <>
__host__ __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__host__ __device__ inline __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

template <typename T>
struct RoundTo {
  __host__ __device__ float operator()(float x) const { return to_float(from_float<T>(x)); }
};

/// f(T{}) for the CUDA type of `type` (float, __nv_bfloat16, __half): a launcher's dtype switch.
template <typename F>
cudaError_t with_element_type(ElementType type, F f) {
  switch (type) {
    case ElementType::kFloat32:
      return f(float{});
    case ElementType::kBFloat16:
      return f(__nv_bfloat16{});
    case ElementType::kFloat16:
      return f(__half{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace moe::model::kernels
