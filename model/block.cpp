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

BlockOutput BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
                               const torch::Tensor& attn_mask, LayerKVCache* cache) {
  ScopedRegion attention("attention");
  const auto h = x + self_attn(input_layernorm(x), cos, signed_sin, attn_mask, cache);
  const auto normed = post_attention_layernorm(h);
  attention.close();
  if (moe_mlp) {
    auto moe = moe_mlp(normed);
    return {h + moe.hidden, moe.aux_loss, moe.z_loss, moe.load};
  }
  return {h + dense_mlp(normed), torch::zeros({}, h.options()), torch::zeros({}, h.options()), {}};
}

}  // namespace moe::model
