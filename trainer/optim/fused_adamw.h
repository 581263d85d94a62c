// AdamW whose update is ATen's fused multi-tensor kernel (_fused_adamw_, CUDA and CPU): a few
// kernel launches for the whole model instead of about ten per parameter. Same options, same
// per-parameter state (AdamWParamState: step, exp_avg, exp_avg_sq) and the same update as
// torch::optim::AdamW (tests/trainer/optim/fused_adamw_test.cpp), so set_lr and param_groups() work
// unchanged.
#pragma once
#include <torch/optim/adamw.h>

#include <optional>
#include <unordered_map>

namespace moe::trainer {

/// One parameter's AdamW state: what a checkpoint saves under the parameter's name.
struct AdamMoments {
  torch::Tensor exp_avg, exp_avg_sq;  // like the parameter
  int64_t step = 0;                   // updates taken
};

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  /// Updates every parameter with a gradient; amsgrad is not supported (refused).
  torch::Tensor step(LossClosure closure = nullptr) override;
  /// The next step() uses every gradient times `factor` (gradient clipping inside the kernel, which
  /// divides each gradient by its grad_scale as it reads it: no separate pass over the gradients).
  /// The gradients themselves are left as they are.
  void scale_next_gradients(double factor) { grad_factor_ = factor; }

  /// The state of `param` (one of this optimiser's parameters); nullopt before its first update.
  std::optional<AdamMoments> moments_of(const torch::Tensor& param) const;
  /// Replaces the state of `param` (copies onto its device and dtype), as if it had taken
  /// `moments.step` updates with these moments.
  void set_moments(const torch::Tensor& param, const AdamMoments& moments);

 private:
  double grad_factor_ = 1.0;
  // Per parameter: its step count as the float32 scalar on its device that the kernel reads.
  std::unordered_map<void*, torch::Tensor> step_tensors_;
};

}  // namespace moe::trainer
