// Launcher of the fused rotary kernel (rotary_kernels.cu) on raw device pointers: plain C++, no
// LibTorch. model/fused_rotary.h is what the model calls.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/kernels/element_type.h"

namespace moe::model::kernels {

/// x: [B, T, H, D] at the given element strides (the last dimension contiguous); cos and
/// signed_sin: float32 [B, T, D] contiguous; out: contiguous [B, T, H, D] of x's type.
/// out = x * cos + roll(x, D/2) * signed_sin * sign, computed in float32. D even.
struct RotaryShape {
  int64_t batch, time, heads, dim;
  int64_t stride_batch, stride_time, stride_head;  // of x, in elements
};
cudaError_t launch_rotary(ElementType type, const void* x, const float* cos, const float* signed_sin, float sign,
                          void* out, const RotaryShape& shape, cudaStream_t stream);

}  // namespace moe::model::kernels
