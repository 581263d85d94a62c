// The rotary embedding (model/functional.h's apply_rope: x * cos + roll(x, D/2) * signed_sin, in
// float32, returned in x's dtype) as one CUDA kernel (model/kernels/rotary_kernels.cu), forward and
// backward alike (the backward is the rotation by the opposite angle, sign -1), where ATen's
// operators take a product, a roll, an addcmul and a cast, two of them writing float32: what
// torch.compile fuses for the baseline. On the CPU the same element math runs row by row (the
// reference; what the proxies count for the GPU). Values: the operators' (x * cos rounded alone,
// as they store it).
#pragma once
#include <ATen/core/Tensor.h>

namespace moe::model {

/// Whether apply_rope runs the fused operator for x [B, T, heads, D] with float32 tables of
/// exactly [B, T, D] (not broadcast): while the fused kernels are enabled (model/fused_kernels.h),
/// on a CUDA tensor of float32, bfloat16 or float16, or on a CPU tensor of bfloat16 or float16
/// where the CPU stands in for a GPU (fused_kernels_on_cpu).
bool fused_rotary_serves(const at::Tensor& x, const at::Tensor& cos);

/// x * cos + roll(x, D/2, -1) * signed_sin * sign over the heads (the dispatcher's moe::rotary);
/// returns a contiguous tensor of x's dtype. No autograd of its own.
at::Tensor fused_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin, double sign);

}  // namespace moe::model
