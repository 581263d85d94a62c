// AdamW whose update is ATen's fused multi-tensor kernel (_fused_adamw_, CUDA and CPU): a few
// kernel launches for the whole model instead of about ten per parameter. Same options, same
// per-parameter state (AdamWParamState: step, exp_avg, exp_avg_sq) and the same update as
// torch::optim::AdamW (tests/trainer/fused_adamw_test.cpp), so set_lr and param_groups() work
// unchanged.
#pragma once
#include <torch/optim/adamw.h>

#include <unordered_map>

namespace moe::trainer {

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  /// Updates every parameter with a gradient; amsgrad is not supported (refused).
  torch::Tensor step(LossClosure closure = nullptr) override;
  /// The next step() uses every gradient times `factor` (gradient clipping inside the kernel, which
  /// divides each gradient by its grad_scale as it reads it: no separate pass over the gradients).
  /// The gradients themselves are left as they are.
  void scale_next_gradients(double factor) { grad_factor_ = factor; }

 private:
  double grad_factor_ = 1.0;
  // Per parameter: its step count as the float32 scalar on its device that the kernel reads.
  std::unordered_map<void*, torch::Tensor> step_tensors_;
};

}  // namespace moe::trainer
