// The cross entropy's rows as one operator each way (model/cross_entropy.h's blockwise_cross_entropy
// takes it where it serves): per row the log-sum-exp and the loss, lse - logit at the target, from
// one read of the logits in their own dtype; backward, softmax minus the target's one-hot times the
// row's gradient, written in the logits' dtype. No float32 copy of any block of logits, no
// log_softmax written. CUDA: model/kernels/cross_entropy_kernels.cu (a block per row); the CPU: a
// loop over the same math.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace moe::model {

/// Whether the operator serves logits [N, V] of float32, bfloat16 or float16 with targets [N]
/// int64: on CUDA, or on the CPU standing in for a GPU (bf16/fp16), while the fused kernels are
/// enabled (model/fused_kernels.h).
bool fused_cross_entropy_serves(const at::Tensor& logits, const at::Tensor& targets);

/// [N] float32: log sum_v exp(logits[n, v]) - logits[n, targets[n]], 0 where targets[n] is
/// ignore_index; differentiable in the logits (the dispatcher's moe::cross_entropy_rows and
/// moe::cross_entropy_rows_backward under one autograd function). A target outside the vocabulary
/// is refused on the CPU and gives NaN on CUDA (no host synchronisation to check it).
at::Tensor fused_cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index);

}  // namespace moe::model
