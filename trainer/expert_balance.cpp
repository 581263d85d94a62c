#include "trainer/expert_balance.h"

#include <torch/torch.h>

#include "common/check.h"
#include "model/moe_gate.h"

namespace moe::trainer {

void StepExpertCounts::add(const std::vector<model::ExpertLoad>& load) {
  if (load.empty()) return;
  std::vector<torch::Tensor> rows;
  for (const auto& layer : load) rows.push_back(layer.routed);
  const auto counts = torch::stack(rows);
  if (local_.defined()) {
    local_ += counts;
  } else {
    local_ = counts.clone();
  }
}

const torch::Tensor& StepExpertCounts::global(parallel::Communicator& world) {
  if (!global_.defined() && local_.defined()) {
    global_ = local_.clone();  // the local counts stay local (an in-place reduce would make them global)
    world.all_reduce(global_, parallel::ReduceOp::kSum);
  }
  return global_;
}

void StepExpertCounts::reset() {
  if (local_.defined()) local_.zero_();
  global_ = torch::Tensor();
}

torch::Tensor max_violation(const torch::Tensor& counts) {
  const auto c = counts.to(torch::kFloat64);
  return c.amax(-1) / c.mean(-1).clamp_min(1e-12) - 1.0;
}

void update_routing_biases(model::CausalLM& lm, const torch::Tensor& global_counts, double rate) {
  torch::NoGradGuard no_grad;
  const auto layers = lm->moe_layers();
  MOE_CHECK(global_counts.size(0) == int64_t(layers.size()), "routing bias update: counts of ", global_counts.size(0),
            " layers for ", layers.size(), " MoE layers");
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& bias = layers[l]->gate->e_score_correction_bias;
    MOE_CHECK(bias.defined(), "routing bias update: MoE layer ", l, " has no e_score_correction_bias");
    bias.add_(model::routing_bias_delta(global_counts[int64_t(l)], rate).to(bias.device()));
  }
}

}  // namespace moe::trainer
