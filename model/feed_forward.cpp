#include "model/feed_forward.h"

#include <torch/torch.h>

#include "model/functional.h"
#include "model/fused_projection.h"
#include "model/recomputed_activation.h"

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
  const bool casts = projection_casts(x, gate_proj->weight.scalar_type());
  if (!casts && !recompute_activation_) return dropout(down_proj(activation(gate_proj(x), act_) * up_proj(x)));
  // [gate | up]: one product where the weights are cast anyway (autocast), else the two side by side.
  const auto hidden = casts ? fused_projection(x, {gate_proj->weight, up_proj->weight})
                            : torch::cat({gate_proj(x), up_proj(x)}, -1);
  if (!recompute_activation_) return dropout(down_proj(gated_activation(hidden, act_)));
  // The cast autocast would make for down_proj; its backward hands the parameter its own dtype.
  return dropout(recomputed_gated_linear(hidden, down_proj->weight.to(hidden.scalar_type()), act_));
}

namespace {

template <typename F>
void for_each_feed_forward(torch::nn::Module& root, F f) {
  for (const auto& module : root.modules()) {
    if (auto feed_forward = std::dynamic_pointer_cast<FeedForwardImpl>(module)) f(*feed_forward);
  }
}

}  // namespace

void set_activation_recompute(torch::nn::Module& root, bool on) {
  for_each_feed_forward(root, [on](FeedForwardImpl& ff) { ff.set_recompute_activation(on); });
}

void set_weight_recast(torch::nn::Module& root, bool on) {
  for_each_feed_forward(root, [on](FeedForwardImpl& ff) { ff.set_recast_weights(on); });
}


}  // namespace moe::model
