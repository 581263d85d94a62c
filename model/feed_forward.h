// SwiGLU feed-forward: down_proj(act(gate_proj(x)) * up_proj(x)), as MiniMind2 (also each expert).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "model/model_config.h"

namespace moe::model {

class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(const ModelConfig& config);
  /// x: [..., hidden] -> [..., hidden].
  torch::Tensor forward(const torch::Tensor& x);
  const std::string& activation_name() const { return act_; }
  /// Whether the backward recomputes act(gate) * up instead of keeping it (train.recompute act;
  /// model/recomputed_activation.h). The grouped experts read it from their first expert.
  bool recomputes_activation() const { return recompute_activation_; }
  void set_recompute_activation(bool on) { recompute_activation_ = on; }
  /// Whether the grouped experts cast their weights again in the backward instead of keeping the
  /// forward's bf16 stack (train.recompute weights; model/expert_stack.h). Read from the first expert.
  bool recasts_weights() const { return recast_weights_; }
  void set_recast_weights(bool on) { recast_weights_ = on; }

  torch::nn::Linear gate_proj = nullptr, up_proj = nullptr, down_proj = nullptr;
  torch::nn::Dropout dropout = nullptr;

 private:
  std::string act_;
  bool recompute_activation_ = false;
  bool recast_weights_ = false;
};
TORCH_MODULE(FeedForward);

/// Sets recompute_activation on every FeedForward in `root` (routed and shared experts, dense layers).
void set_activation_recompute(torch::nn::Module& root, bool on);
/// Sets recast_weights on every FeedForward in `root` (the grouped experts read it).
void set_weight_recast(torch::nn::Module& root, bool on);

}  // namespace moe::model
