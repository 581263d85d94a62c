#include "trainer/optim/training_optimizer.h"

#include <torch/torch.h>

#include "common/check.h"
#include "trainer/optim/sharded_adamw.h"

namespace moe::trainer {

namespace {

// Every rank holds and updates the whole state of the parameters it holds: FusedAdamW after an
// all-reduce of the gradients.
class ReplicatedAdamW : public TrainingOptimizer {
 public:
  ReplicatedAdamW(model::CausalLM lm, const parallel::ParallelGroups& groups, const OptimOptions& options)
      : lm_(std::move(lm)), groups_(groups), options_(options), adamw_(make_adamw(lm_, options)) {
    for (const auto& p : lm_->named_parameters()) params_.emplace(p.key(), p.value());
  }
  void zero_grad() override { adamw_->zero_grad(); }
  UpdateResult update(double lr) override { return apply_update(lm_, groups_, *adamw_, options_, lr); }
  std::map<std::string, AdamMoments> gather_moments(const std::function<bool(const std::string&)>& wanted) override {
    std::map<std::string, AdamMoments> out;
    for (const auto& [name, p] : params_) {
      if (!wanted(name)) continue;
      if (auto m = adamw_->moments_of(p)) out[name] = std::move(*m);
    }
    return out;
  }
  void set_moments(const std::string& name, const AdamMoments& moments) override {
    const auto it = params_.find(name);
    MOE_CHECK(it != params_.end(), "optimizer state for ", name, ", which this model does not have");
    adamw_->set_moments(it->second, moments);
  }
  StateBytes state_bytes() const override {
    StateBytes bytes;
    for (const auto& [_, p] : params_) {
      bytes.weights += int64_t(p.nbytes());
      if (p.grad().defined()) bytes.gradients += int64_t(p.grad().nbytes());
      if (const auto m = adamw_->moments_of(p)) bytes.moments += int64_t(m->exp_avg.nbytes() + m->exp_avg_sq.nbytes());
    }
    return bytes;
  }
  std::string kind() const override { return "replicated"; }

 private:
  model::CausalLM lm_;
  parallel::ParallelGroups groups_;
  OptimOptions options_;
  std::unique_ptr<FusedAdamW> adamw_;
  std::map<std::string, torch::Tensor> params_;
};

}  // namespace

parallel::GradientReduction gradient_reduction(const OptimOptions& options) {
  if (!options.shard_state) return parallel::GradientReduction::kAllReduce;
  return options.shard_grads ? parallel::GradientReduction::kReduceScatterAndFree
                             : parallel::GradientReduction::kReduceScatter;
}

std::unique_ptr<TrainingOptimizer> make_training_optimizer(model::CausalLM lm, parallel::GradientSync& sync,
                                                           const OptimOptions& options) {
  MOE_CHECK(sync.reduction() == gradient_reduction(options),
            "the gradient sync's reduction does not match --optim.shard_state/--optim.shard_grads");
  if (options.shard_state) return std::make_unique<ShardedAdamW>(std::move(lm), sync, options);
  return std::make_unique<ReplicatedAdamW>(std::move(lm), sync.groups(), options);
}

}  // namespace moe::trainer
