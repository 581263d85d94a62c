// The experts' load in the loop: each step's choice counts of every MoE layer, summed over the
// micro-batches here and over the ranks as int64 (never in a float type: at tens of thousands of
// tokens bf16 cannot count by ones), the load violation they show, and the auxiliary-loss-free
// balancing update they drive (model::routing_bias_delta), once per optimizer step.
#pragma once
#include <torch/types.h>

#include <vector>

#include "model/causal_lm.h"
#include "parallel/communicator.h"

namespace moe::trainer {

class StepExpertCounts {
 public:
  /// Adds one micro-batch's routed counts (one ExpertLoad per MoE layer).
  void add(const std::vector<model::ExpertLoad>& load);
  /// [L, E] int64: this step's counts summed over every rank (all-reduced on the first call of
  /// the step; collective). Undefined for a dense model.
  const torch::Tensor& global(parallel::Communicator& world);
  /// Starts the next step.
  void reset();

 private:
  torch::Tensor local_, global_;
};

/// MaxVio of each layer (max count / mean count - 1; 0 = perfectly balanced). counts: [L, E]. [L] float64.
torch::Tensor max_violation(const torch::Tensor& counts);

/// Moves each MoE layer's e_score_correction_bias by routing_bias_delta(its row of global_counts, rate).
void update_routing_biases(model::CausalLM& lm, const torch::Tensor& global_counts, double rate);

}  // namespace moe::trainer
