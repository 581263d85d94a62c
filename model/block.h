// One transformer layer (MiniMind2's MiniMindBlock): pre-norm attention and pre-norm feed-forward,
// each with a residual; the feed-forward is dense or MoE.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "model/attention.h"
#include "model/feed_forward.h"
#include "model/moe_feed_forward.h"
#include "model/rms_norm.h"

namespace moe::model {

/// The residual stream between blocks, `stream + pending`: a block leaves its last add to the next
/// block's first norm, which makes it in the same pass (RMSNorm::add_then_forward_for_products).
struct Residual {
  torch::Tensor stream;   // [B, T, hidden]
  torch::Tensor pending;  // [B, T, hidden] or undefined (nothing left to add)
  /// stream + pending.
  torch::Tensor value() const;
};

struct BlockOutput {
  Residual hidden;
  torch::Tensor aux_loss;  // scalar, 0 for a dense layer
  torch::Tensor z_loss;    // scalar, 0 for a dense layer
  ExpertLoad load;         // a MoE layer's expert load; undefined tensors for a dense one
};

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ModelConfig& config, int64_t layer_id, ExpertRange local_experts = {});
  /// See AttentionImpl::forward for cos, signed_sin, attn_mask and cache.
  BlockOutput forward(const Residual& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
                      const torch::Tensor& attn_mask = {}, LayerKVCache* cache = nullptr);

  Attention self_attn = nullptr;
  RMSNorm input_layernorm = nullptr, post_attention_layernorm = nullptr;
  FeedForward dense_mlp = nullptr;  // registered as "mlp" when !use_moe
  MoEFeedForward moe_mlp = nullptr;  // registered as "mlp" when use_moe

  int64_t layer_id;
};
TORCH_MODULE(Block);

}  // namespace moe::model
