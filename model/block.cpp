#include "model/block.h"

#include <torch/torch.h>

#include "common/step_regions.h"

namespace moe::model {

BlockImpl::BlockImpl(const ModelConfig& c, int64_t id, ExpertRange local_experts) : layer_id(id) {
  self_attn = register_module("self_attn", Attention(c));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  if (c.use_moe) {
    moe_mlp = register_module("mlp", MoEFeedForward(c, local_experts));
  } else {
    dense_mlp = register_module("mlp", FeedForward(c));
  }
}

torch::Tensor Residual::value() const { return pending.defined() ? stream + pending : stream; }

BlockOutput BlockImpl::forward(const Residual& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
                               const torch::Tensor& attn_mask, LayerKVCache* cache) {
  ScopedRegion attention("attention");
  const auto input = input_layernorm->add_then_forward_for_products(x.stream, x.pending);
  const auto attended = self_attn(input.normed, cos, signed_sin, attn_mask, cache);
  const auto h = post_attention_layernorm->add_then_forward_for_products(input.sum, attended);
  attention.close();
  if (moe_mlp) {
    auto moe = moe_mlp(h.normed);
    return {{h.sum, moe.hidden}, moe.aux_loss, moe.z_loss, moe.load};
  }
  const auto zero = torch::zeros({}, h.sum.options());
  return {{h.sum, dense_mlp(h.normed)}, zero, zero, {}};
}

}  // namespace moe::model
