// MoE router: softmax scores, top-k experts per token, norm_topk_prob, and the load-balancing aux
// loss (sequence-level seq_aux or batch-level), as MiniMind2's MoEGate. Routing math runs in
// compute_dtype (float32 for half/bfloat16 inputs).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>

#include "model/model_config.h"

namespace moe::model {

/// The router's decision for N = B*T tokens.
struct RoutingDecision {
  torch::Tensor topk_idx;     // [N, k] int64 global expert ids
  torch::Tensor topk_weight;  // [N, k] compute_dtype, normalised to sum 1 when norm_topk_prob and k > 1
  torch::Tensor aux_loss;     // scalar; 0 unless training with aux_loss_alpha > 0
};

/// Sums per-expert choice counts over the data-parallel ranks (returns a new tensor).
using CountReducer = std::function<torch::Tensor(const torch::Tensor&)>;

class MoEGateImpl : public torch::nn::Module {
 public:
  explicit MoEGateImpl(const ModelConfig& config);
  /// x: [B, T, hidden] (B and T give the sequences of the sequence-level aux loss).
  RoutingDecision forward(const torch::Tensor& x);
  /// With seq_aux = false: take the batch-level aux loss's expert shares from the global batch
  /// (counts summed by `reduce`) instead of the local one. Empty = local.
  void set_count_reducer(CountReducer reduce) { reduce_counts_ = std::move(reduce); }

  torch::Tensor weight;  // [n_routed_experts, hidden]

 private:
  ModelConfig config_;
  CountReducer reduce_counts_;
};
TORCH_MODULE(MoEGate);

/// Sequence-level aux loss. scores: [B, T, E]; topk_idx: [B, T*k]. For each sequence, the share of its
/// k*T choices that went to each expert, scaled by E, dotted with the mean score; mean over B; times alpha.
torch::Tensor sequence_aux_loss(const torch::Tensor& scores, const torch::Tensor& topk_idx, int64_t top_k,
                                double alpha);

/// Batch-level aux loss. scores: [N, E]; topk_idx: [N, k]. E * sum_e mean_score_e * share_of_choices_e * alpha.
/// With reduce_counts, share_of_choices counts every rank's choices: averaged over ranks (as the
/// gradient sync does), the loss and its gradient equal one process's on the global batch.
torch::Tensor batch_aux_loss(const torch::Tensor& scores, const torch::Tensor& topk_idx, double alpha,
                             const CountReducer& reduce_counts = nullptr);

}  // namespace moe::model
