// The copies' grouping by expert as one operator: from the router's choice topk_idx [N, k], the
// stable order of the N*k copies by expert, each copy's token, each copy's place in that order and
// the copies per expert. It replaces a sort, a count (zero-fill, ones, scatter-add), a division and
// an inverse permutation (arange, scatter) per MoE layer and step. CUDA: a counting sort in two
// kernels (model/kernels/grouping_kernels.cu); the CPU: the same counting sort in a loop.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace moe::model {

struct CopyGrouping {
  at::Tensor copy_order;        // [N*k] int64: flat copy index (token*k + slot) at each grouped place
  at::Tensor token_of_copy;     // [N*k] int64: copy_order / k
  at::Tensor position_of_copy;  // [N*k] int64: the grouped place of flat copy i (copy_order's inverse)
  at::Tensor routed;            // [E] int64: copies per expert
};

/// Whether the operator serves topk_idx [N, k] int64 for num_experts experts (at most 1,024:
/// kernels/expert_limits.h) while the fused kernels are enabled (model/fused_kernels.h): on CUDA
/// and on every CPU path, since unlike the elementwise loops the counting sort beats ATen's
/// operators there too.
bool fused_grouping_serves(const at::Tensor& topk_idx, int64_t num_experts);

/// The dispatcher's moe::group_copies: copies grouped by expert id, ties in copy order (what a
/// stable sort of the flat ids gives). Ids must lie in [0, num_experts): the CPU checks them, the
/// CUDA kernels trust the router.
CopyGrouping fused_group_copies(const at::Tensor& topk_idx, int64_t num_experts);

}  // namespace moe::model
