// The sequence-level aux loss (model/moe_gate.h's sequence_aux_loss, MiniMind's seq_aux) as one
// operator each way: per sequence the copies per expert and, the loss being linear in the scores,
// scale / T * sum over tokens and experts of count x score, where the operators ran a ones, a
// zero-fill, a scatter-add, a mean, a dot product and a scale forward and three kernels backward.
// CUDA: a block per sequence (model/kernels/aux_loss_kernels.cu) and the sum of the partials; the
// backward one elementwise pass. The CPU: the same sums in a loop (float64 accumulation).
#pragma once
#include <ATen/core/Tensor.h>

namespace moe::model {

/// Whether the operator serves scores [B, T, E] float32 (B, T >= 1; E at most 1,024:
/// kernels/expert_limits.h) with topk_idx [B, T*k] int64: on CUDA, or on the CPU where the fused
/// operators stand in for a GPU, while the fused kernels are enabled (model/fused_kernels.h).
bool fused_sequence_aux_loss_serves(const at::Tensor& scores, const at::Tensor& topk_idx);

/// scale * sum_b sum_e counts[b, e] * mean_t scores[b, t, e], counts[b, e] the copies of sequence b
/// routed to expert e; differentiable in the scores (the dispatcher's moe::sequence_aux_loss and
/// moe::sequence_aux_loss_backward under one autograd function). A float32 scalar.
at::Tensor fused_sequence_aux_loss(const at::Tensor& scores, const at::Tensor& topk_idx, double scale);

}  // namespace moe::model
