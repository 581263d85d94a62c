#include "trainer/optim/fused_adamw.h"

#include <ATen/ops/_fused_adamw.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "common/check.h"

namespace moe::trainer {

namespace {

// The kernel takes tensors of one device and dtype per call.
struct Bucket {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
};

}  // namespace

torch::Tensor FusedAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    MOE_CHECK(!o.amsgrad(), "FusedAdamW: amsgrad is not supported");
    std::map<std::string, Bucket> buckets;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      MOE_CHECK(!p.grad().is_sparse(), "FusedAdamW: sparse gradients are not supported");
      void* key = p.unsafeGetTensorImpl();
      auto& state = state_[key];
      if (!state) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        state = std::move(fresh);
        step_tensors_[key] = torch::zeros({}, p.options().dtype(torch::kFloat32));
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*state);
      s.step(s.step() + 1);
      auto& b = buckets[p.device().str() + "/" + std::string(c10::toString(p.scalar_type()))];
      b.params.push_back(p);
      b.grads.push_back(p.grad());
      b.exp_avgs.push_back(s.exp_avg());
      b.exp_avg_sqs.push_back(s.exp_avg_sq());
      b.steps.push_back(step_tensors_.at(key));
    }
    const auto [beta1, beta2] = o.betas();
    for (auto& [_, b] : buckets) {
      torch::_foreach_add_(b.steps, 1);  // the kernel reads the step count; the caller advances it
      std::optional<torch::Tensor> divisor;
      if (grad_factor_ != 1.0) divisor = torch::full({}, 1.0 / grad_factor_, b.steps.front().options());
      at::_fused_adamw_(b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, /*max_exp_avg_sqs=*/{}, b.steps, o.lr(), beta1,
                        beta2, o.weight_decay(), o.eps(), /*amsgrad=*/false, /*maximize=*/false, divisor);
    }
  }
  grad_factor_ = 1.0;
  return loss;
}

std::optional<AdamMoments> FusedAdamW::moments_of(const torch::Tensor& param) const {
  const auto it = state_.find(param.unsafeGetTensorImpl());
  if (it == state_.end() || !it->second) return std::nullopt;
  const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
  return AdamMoments{s.exp_avg(), s.exp_avg_sq(), s.step()};
}

void FusedAdamW::set_moments(const torch::Tensor& param, const AdamMoments& moments) {
  MOE_CHECK(moments.exp_avg.sizes() == param.sizes() && moments.exp_avg_sq.sizes() == param.sizes(),
            "optimizer state of shape ", moments.exp_avg.sizes(), " for a parameter of shape ", param.sizes());
  MOE_CHECK(moments.step >= 0, "optimizer step count ", moments.step, " is negative");
  void* key = param.unsafeGetTensorImpl();
  auto state = std::make_unique<torch::optim::AdamWParamState>();
  state->exp_avg(moments.exp_avg.to(param.options()).clone(torch::MemoryFormat::Preserve));
  state->exp_avg_sq(moments.exp_avg_sq.to(param.options()).clone(torch::MemoryFormat::Preserve));
  state->step(moments.step);
  state_[key] = std::move(state);
  step_tensors_[key] = torch::full({}, double(moments.step), param.options().dtype(torch::kFloat32));
}

}  // namespace moe::trainer
