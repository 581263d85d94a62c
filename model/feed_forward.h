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

  torch::nn::Linear gate_proj = nullptr, up_proj = nullptr, down_proj = nullptr;
  torch::nn::Dropout dropout = nullptr;

 private:
  std::string act_;
};
TORCH_MODULE(FeedForward);

}  // namespace moe::model
