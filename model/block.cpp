#include "model/block.h"

#include <torch/torch.h>

#include "common/check.h"
#include "common/step_regions.h"
#include "model/recomputed_block.h"

namespace moe::model {

BlockImpl::BlockImpl(const ModelConfig& c, int64_t id, ExpertRange local_experts) : layer_id(id), dropout_(c.dropout) {
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

void BlockImpl::set_recompute(bool on) {
  MOE_CHECK(!on || dropout_ == 0.0,
            "recompute block needs model.dropout 0 (the recomputed forward would draw other "
            "dropout masks than the first), got ",
            dropout_);
  recompute_ = on;
}

BlockOutput BlockImpl::forward(const Residual& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
                               const torch::Tensor& attn_mask, LayerKVCache* cache) {
  if (recompute_ && is_training() && cache == nullptr && torch::GradMode::is_enabled()) {
    return run_recomputed(*this, x, cos, signed_sin, attn_mask);
  }
  return run(x, cos, signed_sin, attn_mask, cache);
}

BlockOutput BlockImpl::run(const Residual& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
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

void set_recompute(torch::nn::Module& root, const RecomputeChoice& choice) {
  set_activation_recompute(root, choice.activation);
  set_weight_recast(root, choice.weights);
  for (const auto& module : root.modules()) {
    if (auto block = std::dynamic_pointer_cast<BlockImpl>(module)) block->set_recompute(choice.block);
  }
}

}  // namespace moe::model
