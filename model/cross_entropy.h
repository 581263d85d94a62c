// Mean cross entropy of logits in any dtype, computed in float32 a block of rows at a time: the
// float32 logits of the whole batch (a cast copy, log_softmax's output kept for the backward, and
// the gradient, each [tokens, vocab] in float32: 1.3 GB on config a) never exist at once. Only the
// per-row log-sum-exp is kept; the backward recomputes softmax per block and writes the gradient
// straight in the logits' dtype. The loss is torch's: the mean of -log_softmax at the targets.
#pragma once
#include <ATen/core/Tensor.h>

namespace moe::model {

/// logits [N, V] (any floating dtype), targets [N] int64; rows whose target is ignore_index do not
/// count. The mean over the counted rows, in compute_dtype(logits) (NaN when none counts, as
/// torch's cross_entropy). block_rows: rows per float32 block (0: about 32 Mi elements a block).
at::Tensor blockwise_cross_entropy(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index,
                                   int64_t block_rows = 0);

}  // namespace moe::model
