// MoE router. Scores: softmax (MiniMind2's MoEGate) or sigmoid (DeepSeek-V3). The experts are chosen
// by top-k over the scores plus, with auxiliary-loss-free balancing, a per-expert bias
// (e_score_correction_bias), within the token's best topk_group of n_group expert groups; their
// weights are the unbiased scores, renormalised (norm_topk_prob) and scaled (routed_scaling_factor).
// Training losses: the load-balancing aux loss (sequence- or batch-level, MiniMind2's) and the
// router z-loss. Routing math runs in compute_dtype (float32 for half/bfloat16 inputs).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <tuple>

#include "model/model_config.h"

namespace moe::model {

/// The router's decision for N = B*T tokens.
struct RoutingDecision {
  torch::Tensor topk_idx;     // [N, k] int64 global expert ids
  torch::Tensor topk_weight;  // [N, k] compute_dtype
  torch::Tensor aux_loss;     // scalar; 0 unless training with aux_loss_alpha > 0 (the gate's constant zero:
  torch::Tensor z_loss;       // scalar; 0 unless training with router_z_loss_coef > 0   never write it in place)
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
  /// [n_routed_experts] float32, a parameter without gradient (so that checkpoints, resharding and
  /// export carry it like any other); defined only when config.has_score_bias().
  torch::Tensor e_score_correction_bias;

 private:
  // The scores [N, E] (softmax or sigmoid of the logits), the chosen experts [N, k] and their
  // weights [N, k]: one fused operator each way where it serves (model/fused_route.h).
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> choose(const torch::Tensor& logits) const;
  // The training losses the config asks for (aux, z) into out; those not asked for stay undefined.
  void add_losses(RoutingDecision& out, const torch::Tensor& logits, const torch::Tensor& scores, int64_t b, int64_t t);
  ModelConfig config_;
  CountReducer reduce_counts_;
  torch::Tensor zero_;  // the losses not computed (a constant: never written in place)
};
TORCH_MODULE(MoEGate);

/// The experts' scores from the router logits [N, E]: softmax or sigmoid (scoring_func).
torch::Tensor routing_scores(const torch::Tensor& logits, const std::string& scoring_func);

/// choice [N, E] with every expert outside the token's best `topk_group` of `n_group` groups of
/// consecutive ids set to -inf. A group ranks by the sum of its two best choice values (DeepSeek-V3;
/// its one value for groups of one expert).
torch::Tensor limit_to_groups(const torch::Tensor& choice, int64_t n_group, int64_t topk_group);

/// Router z-loss (ST-MoE): coef * mean over tokens of logsumexp(logits)^2. logits: [N, E].
torch::Tensor router_z_loss(const torch::Tensor& logits, double coef);

/// Sequence-level aux loss. scores: [B, T, E]; topk_idx: [B, T*k]. For each sequence, the share of its
/// k*T choices that went to each expert, scaled by E, dotted with the mean score; mean over B; times alpha.
torch::Tensor sequence_aux_loss(const torch::Tensor& scores, const torch::Tensor& topk_idx, int64_t top_k,
                                double alpha);

/// Batch-level aux loss. scores: [N, E]; topk_idx: [N, k]. E * sum_e mean_score_e * share_of_choices_e * alpha.
/// With reduce_counts, share_of_choices counts every rank's choices: averaged over ranks (as the
/// gradient sync does), the loss and its gradient equal one process's on the global batch.
torch::Tensor batch_aux_loss(const torch::Tensor& scores, const torch::Tensor& topk_idx, double alpha,
                             const CountReducer& reduce_counts = nullptr);

/// Auxiliary-loss-free balancing (DeepSeek-V3), one update from the global batch's choice counts
/// [E] int64 (every micro-batch of every rank, summed as integers): each expert's bias moves by
/// `rate` toward balance, up below the mean count and down above it, then the moves are centred
/// on zero. Centring keeps the biases summing to 0 (a common shift changes no choice), so their
/// range stays a readable measure of the correction. Computed from integers and exact signs: the
/// same bits on every rank and device. Returns the float32 delta to add.
torch::Tensor routing_bias_delta(const torch::Tensor& counts, double rate);

}  // namespace moe::model
