#include "trainer/optimizer.h"

#include <torch/torch.h>

#include <cmath>

#include "parallel/gradient_sync.h"

namespace moe::trainer {

std::unique_ptr<torch::optim::AdamW> make_adamw(model::CausalLM& lm, const OptimOptions& o) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : lm->named_parameters()) (p.value().dim() >= 2 ? decay : no_decay).push_back(p.value());
  auto options = [&](double weight_decay) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(weight_decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(o.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return std::make_unique<torch::optim::AdamW>(std::move(groups), torch::optim::AdamWOptions(o.lr));
}

double lr_at(const OptimOptions& o, int64_t step, int64_t total_steps) {
  if (step < o.warmup_steps) return o.lr * double(step + 1) / double(o.warmup_steps);
  const int64_t decay_steps = total_steps - 1 - o.warmup_steps;
  if (decay_steps <= 0) return o.lr;
  const double progress = std::min(1.0, double(step - o.warmup_steps) / double(decay_steps));
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * progress));
}

void set_lr(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
}

double global_grad_norm(model::CausalLM& lm, const parallel::ParallelGroups& groups) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> dense_sq, expert_sq;
  for (const auto& p : lm->named_parameters()) {
    const auto& g = p.value().grad();
    if (!g.defined()) continue;
    (parallel::is_expert_parameter(p.key()) ? expert_sq : dense_sq).push_back(g.to(torch::kFloat64).square().sum());
  }
  const auto device = lm->parameters().front().device();
  // float64 sums of squares: [dense, this rank's experts].
  auto total = torch::zeros({2}, torch::TensorOptions(torch::kFloat64).device(device));
  if (!dense_sq.empty()) total[0] = torch::stack(dense_sq).sum();
  if (!expert_sq.empty()) total[1] = torch::stack(expert_sq).sum();
  auto experts = total.narrow(0, 1, 1).clone();
  if (groups.ep->size() > 1) groups.ep->all_reduce(experts, parallel::ReduceOp::kSum);
  return std::sqrt((total[0] + experts[0]).item<double>());
}

double clip_gradients(model::CausalLM& lm, double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.0;
  const double factor = max_norm / (norm + 1e-6);
  torch::NoGradGuard no_grad;
  for (auto& p : lm->parameters()) {
    if (p.grad().defined()) p.mutable_grad().mul_(factor);
  }
  return factor;
}

}  // namespace moe::trainer
