#include "model/feed_forward.h"

#include <torch/torch.h>

#include "model/functional.h"

namespace moe::model {

namespace nn = torch::nn;

FeedForwardImpl::FeedForwardImpl(const ModelConfig& c) : act_(c.hidden_act) {
  const auto h = c.hidden_size, i = c.resolved_intermediate_size();
  gate_proj = register_module("gate_proj", nn::Linear(nn::LinearOptions(h, i).bias(false)));
  down_proj = register_module("down_proj", nn::Linear(nn::LinearOptions(i, h).bias(false)));
  up_proj = register_module("up_proj", nn::Linear(nn::LinearOptions(h, i).bias(false)));
  dropout = register_module("dropout", nn::Dropout(c.dropout));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  return dropout(down_proj(activation(gate_proj(x), act_) * up_proj(x)));
}

}  // namespace moe::model
