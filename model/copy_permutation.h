// Moving token copies into expert order and back, as gathers in both directions. Each token has k
// copies (token * k + slot); grouping puts them in expert order by a permutation (copy_order) whose
// inverse is position_of_copy. Plain index_select would take its backward through index_add
// (atomic adds, run-to-run nondeterministic on CUDA); these take it through the inverse gather
// and a sum over the k slots: deterministic, and no atomics.
#pragma once
#include <torch/types.h>

namespace moe::model {

/// The inverse of a permutation of [0, n): inverse[order[i]] = i. order: [n] int64 (any device).
torch::Tensor inverse_permutation(const torch::Tensor& order);

/// tokens: [N, H]; token_of_copy: [N*k] (token of each grouped copy); position_of_copy: [N*k]
/// (where flat copy token*k + slot sits in the grouping). Returns [N*k, H], grouped[i] =
/// tokens[token_of_copy[i]]. Differentiable in tokens.
torch::Tensor gather_copies(const torch::Tensor& tokens, const torch::Tensor& token_of_copy,
                            const torch::Tensor& position_of_copy);

/// grouped: [N*k, ...] in grouped order; returns it in flat copy order (token*k + slot):
/// out[c] = grouped[position_of_copy[c]]. copy_order is the inverse permutation. Differentiable.
torch::Tensor ungroup_copies(const torch::Tensor& grouped, const torch::Tensor& copy_order,
                             const torch::Tensor& position_of_copy);

}  // namespace moe::model
