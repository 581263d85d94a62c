#include "trainer/optim/optimizer.h"

#include <torch/torch.h>

#include <cmath>

#include "parallel/gradient_sync.h"
#include "trainer/optim/fused_adamw.h"

namespace moe::trainer {

std::unique_ptr<FusedAdamW> make_adamw(model::CausalLM& lm, const OptimOptions& o) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : lm->named_parameters()) {
    if (!p.value().requires_grad()) continue;  // the routing bias: moved by its own rule, after the step
    (has_weight_decay(p.value()) ? decay : no_decay).push_back(p.value());
  }
  auto options = [&](double weight_decay) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(weight_decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(o.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return std::make_unique<FusedAdamW>(std::move(groups), torch::optim::AdamWOptions(o.lr));
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
  std::vector<torch::Tensor> dense, expert;
  for (const auto& p : lm->named_parameters()) {
    const auto& g = p.value().grad();
    if (g.defined()) (parallel::is_expert_parameter(p.key()) ? expert : dense).push_back(g);
  }
  const auto device = lm->parameters().front().device();
  // Sum of squares of one list: per-tensor norms in one multi-tensor kernel, summed in float64.
  auto squares = [&](const std::vector<torch::Tensor>& grads) {
    if (grads.empty()) return torch::zeros({1}, torch::TensorOptions(torch::kFloat64).device(device));
    return torch::stack(torch::_foreach_norm(grads, 2)).to(torch::kFloat64).square().sum().reshape({1});
  };
  auto experts = squares(expert);  // this rank's experts: summed over the EP group
  if (groups.ep->size() > 1) groups.ep->all_reduce(experts, parallel::ReduceOp::kSum);
  return std::sqrt((squares(dense) + experts).item<double>());
}

double clip_factor(double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.0;
  return max_norm / (norm + 1e-6);
}

double clip_gradients(model::CausalLM& lm, double norm, double max_norm) {
  const double factor = clip_factor(norm, max_norm);
  if (factor == 1.0) return 1.0;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (auto& p : lm->parameters()) {
    if (p.grad().defined()) grads.push_back(p.mutable_grad());
  }
  torch::_foreach_mul_(grads, factor);
  return factor;
}

UpdateResult apply_update(model::CausalLM& lm, const parallel::ParallelGroups& groups, torch::optim::Optimizer& optimizer,
                          const OptimOptions& options, double lr) {
  UpdateResult result;
  result.grad_norm = global_grad_norm(lm, groups);
  result.skipped = !std::isfinite(result.grad_norm);
  if (result.skipped) {
    optimizer.zero_grad(/*set_to_none=*/false);  // in place: a CUDA graph may own the gradients
    return result;
  }
  set_lr(optimizer, lr);
  if (auto* fused = dynamic_cast<FusedAdamW*>(&optimizer)) {
    fused->scale_next_gradients(clip_factor(result.grad_norm, options.grad_clip));  // inside the update kernel
  } else {
    clip_gradients(lm, result.grad_norm, options.grad_clip);
  }
  optimizer.step();
  return result;
}

}  // namespace moe::trainer
