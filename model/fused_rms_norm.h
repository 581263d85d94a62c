// RMSNorm written in the dtype of the products that read it, optionally after
// the residual's add, as one CUDA kernel forward and one backward
// (model/kernels/rms_norm_kernels.cu). Under autocast ATen's norm writes
// float32 and every product after it casts that to bf16 on its own (three casts
// of the MoE layer's input: gate, shared experts, routed experts), and the
// backward casts each product's gradient back to float32 and adds them before
// the norm's own kernel: what torch.compile fuses for the baseline. Here the
// norm writes bf16 once (the values the casts gave), and its backward reads the
// gradient in bf16. The residual's add before a norm (h = x + attention(...))
// runs in the same pass: the sum is written once and not read back; backward,
// the gradient h gets from the residual is added in the norm's pass, which also
// writes it in the branch's dtype (bf16 for the attention's output). One
// difference: the products' gradients of the normalised x are added by autograd
// in that dtype (bf16), not in float32 (as bf16 training keeps activation
// gradients, Megatron's included). On the CPU the same element math runs row by
// row (the reference; what the proxies count for a GPU).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace moe::model {

/// Whether fused_rms_norm serves x with weight, written in out_dtype: float32 x
/// and weight with a bfloat16 or float16 out_dtype, while the fused kernels are
/// enabled (model/fused_kernels.h), on a CUDA tensor, or on the CPU where it
/// stands in for a GPU (fused_kernels_on_cpu).
bool fused_rms_norm_serves(const at::Tensor& x, const at::Tensor& weight, c10::ScalarType out_dtype);

/// weight * (x * rstd), rstd = 1 / sqrt(mean(x^2, -1) + eps), written in
/// out_dtype, with autograd (the gradients of x and weight in float32). x:
/// float32 [..., dim]; weight: float32 [dim].
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, c10::ScalarType out_dtype);

/// Whether fused_add_rms_norm serves: as fused_rms_norm_serves, and delta of
/// x's shape and device in float32, bfloat16 or float16.
bool fused_add_rms_norm_serves(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                               c10::ScalarType out_dtype);

struct SumAndNormed {
  at::Tensor sum;     // x + delta, float32 (ATen's add of the two)
  at::Tensor normed;  // fused_rms_norm(sum, ...), in out_dtype
};

/// The residual's add and the norm after it, one pass each way, with autograd
/// (delta's gradient in its own dtype).
SumAndNormed fused_add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps,
                                c10::ScalarType out_dtype);

}  // namespace moe::model
