// One transformer layer (MiniMind2's MiniMindBlock): pre-norm attention and pre-norm feed-forward,
// each with a residual; the feed-forward is dense or MoE.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "model/attention.h"
#include "model/feed_forward.h"
#include "model/moe_feed_forward.h"
#include "model/recompute_choice.h"
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
  /// run(), or in training with the recomputation on, the same through model/recomputed_block.h.
  BlockOutput forward(const Residual& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
                      const torch::Tensor& attn_mask = {}, LayerKVCache* cache = nullptr);
  /// The block's computation itself, never recomputed.
  BlockOutput run(const Residual& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
                  const torch::Tensor& attn_mask = {}, LayerKVCache* cache = nullptr);
  /// Recompute the whole block in the backward (train.recompute block): its activations are not
  /// kept, only its input. Refused with dropout (the recomputation would draw other masks).
  void set_recompute(bool on);

  Attention self_attn = nullptr;
  RMSNorm input_layernorm = nullptr, post_attention_layernorm = nullptr;
  FeedForward dense_mlp = nullptr;  // registered as "mlp" when !use_moe
  MoEFeedForward moe_mlp = nullptr;  // registered as "mlp" when use_moe

  int64_t layer_id;

 private:
  double dropout_;
  bool recompute_ = false;
};
TORCH_MODULE(Block);

/// Sets what every block and feed-forward under `root` recomputes in the backward.
void set_recompute(torch::nn::Module& root, const RecomputeChoice& choice);

}  // namespace moe::model
