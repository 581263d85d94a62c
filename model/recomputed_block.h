// A block whose activations the backward recomputes (train.recompute block): the forward runs the
// block without building a graph and keeps only its input; the backward runs the block's forward
// again from that input, with autograd, and differentiates it. Memory: one block's activations at a
// time instead of every block's, for one more forward per step (activation checkpointing, as
// Megatron-Core's full recompute and torch.utils.checkpoint).
#pragma once
#include "model/block.h"

namespace moe::model {

/// block.run(x, ...) whose backward recomputes it. The same outputs and gradients as block.run
/// (the same operators run twice); what the recomputation cannot replay it refuses earlier
/// (dropout: BlockImpl::set_recompute). The region recorder is off while the backward
/// recomputes: its work counts in the backward.
BlockOutput run_recomputed(BlockImpl& block, const Residual& x, const torch::Tensor& cos,
                           const torch::Tensor& signed_sin, const torch::Tensor& attn_mask);

}  // namespace moe::model
