// The MoE layer's combine as one operator each way: y[n] = sum over its k copies of
// weights[n, j] * expert_out[position_of_copy[n * k + j]], in the experts' dtype, returned in
// out_dtype (the residual stream's). The operators it replaces (model/moe_feed_forward.cpp): the
// gather back to (token, slot) order, the product with the weights, the sum over the slots and the
// cast, each writing its result, and as many again backward. Same values (the kernels round where
// the operators store; the weights' gradient sums over the hidden size in another order). CUDA
// kernels in model/kernels/combine_kernels.cu, a CPU loop over the same element math.
#pragma once
#include <ATen/core/Tensor.h>

namespace moe::model {

/// Whether the MoE layer combines through the fused operator: expert_out [N*k, H] of float32,
/// bfloat16 or float16 (CUDA, or the CPU standing in for a GPU in bf16/fp16), weights [N, k] of
/// one of those (read as float32), out_dtype expert_out's or float32, shared (if defined) in
/// expert_out's dtype, while the fused kernels are enabled (model/fused_kernels.h).
bool fused_combine_serves(const at::Tensor& expert_out, const at::Tensor& weights, c10::ScalarType out_dtype,
                          const at::Tensor& shared = {});

/// [N, H] in out_dtype, differentiable in expert_out, weights and shared (the dispatcher's
/// moe::combine and moe::combine_backward under one autograd function). position_of_copy: [N*k]
/// int64, a permutation of the rows of expert_out. shared: the shared experts' output [N, H] in
/// expert_out's dtype, added in the same pass (its gradient, the output's in its dtype, written by
/// the backward's), or undefined: where the layer added it after, an add forward and a cast back.
at::Tensor fused_combine(const at::Tensor& expert_out, const at::Tensor& position_of_copy, const at::Tensor& weights,
                         c10::ScalarType out_dtype, const at::Tensor& shared = {});

/// The combine with every weight 1 in the copies' own dtype: y[n] = sum_j copies[position_of_copy[n*k + j]],
/// summed in float32 and stored once, where the operators gather the copies back to slot order and
/// sum them ([N*k, H] written and read back). The dispatch's backward (model/copy_permutation.h).
/// The dispatcher's moe::sum_copies (the combine's kernels); not differentiable. Served for
/// copies [N*k, H] of the fused kernels' dtypes on CUDA, bf16/fp16 on the CPU standing in for a GPU.
bool fused_sum_copies_serves(const at::Tensor& copies, int64_t slots);
at::Tensor fused_sum_copies(const at::Tensor& copies, const at::Tensor& position_of_copy, int64_t slots);

}  // namespace moe::model
