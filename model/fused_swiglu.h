// SwiGLU (silu(gate) * up on hidden = [gate | up]) as one CUDA kernel forward and one backward
// (model/kernels/swiglu_kernels.cu), where ATen's operators take two and four passes, each writing a
// [rows, I] intermediate: what torch.compile fuses for the baseline. Same values as the operators:
// the kernels round where the operators store (model/kernels/swiglu_math.h). gated_activation
// (model/functional.h) calls them where they serve and ATen's operators elsewhere. On the CPU the
// same element math runs row by row: the reference, and what the proxies count for the GPU.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace moe::model {

/// Whether gated_activation runs the fused operators for `hidden` with activation `name`: silu
/// with an even last dimension, while enabled (model/fused_kernels.h), on a CUDA tensor of float32,
/// bfloat16 or float16 (in a build with CUDA LibTorch), or on a CPU tensor of bfloat16 or float16
/// where the CPU stands in for a GPU (fused_kernels_on_cpu).
bool fused_swiglu_serves(const at::Tensor& hidden, const std::string& name);

/// silu(gate) * up: [..., 2I] -> [..., I], float32/bfloat16/float16 on the CPU or a GPU (the
/// dispatcher's operator moe::fused_swiglu; no autograd of its own).
at::Tensor fused_swiglu(const at::Tensor& hidden);

/// The gradient with respect to hidden, [..., 2I], from the output's gradient [..., I] (same dtype
/// and device); where `product` is given, it receives the forward's value again, for a caller that
/// recomputes it (moe::fused_swiglu_backward).
at::Tensor fused_swiglu_backward(const at::Tensor& grad, const at::Tensor& hidden, at::Tensor* product = nullptr);

}  // namespace moe::model
