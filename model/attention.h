// Grouped-query causal self-attention with rotary embeddings and a KV cache (MiniMind2's Attention).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <tuple>

#include "model/model_config.h"

namespace moe::model {

/// One layer's cached keys and values, [B, T_past, kv_heads, head_dim] each; undefined when empty.
struct LayerKVCache {
  torch::Tensor k;
  torch::Tensor v;
  int64_t length() const { return k.defined() ? k.size(1) : 0; }
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& config);

  /// x: [B, T, hidden]. cos, signed_sin: [B, T, head_dim] for the T new positions (RopeTables).
  /// attn_mask: bool [B or 1, 1, T, T_past + T], true = may attend; undefined means plain causal
  ///   attention over the T new tokens (then the cache must be empty or T == 1).
  /// cache: when given, the new keys/values are appended to it and attention covers past + new.
  /// Returns [B, T, hidden].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
                        const torch::Tensor& attn_mask = {}, LayerKVCache* cache = nullptr);

  torch::nn::Linear q_proj = nullptr, k_proj = nullptr, v_proj = nullptr, o_proj = nullptr;
  torch::nn::Dropout resid_dropout = nullptr;

 private:
  /// q, k, v projections of x: [..., heads x head_dim], [..., kv_heads x head_dim] twice.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> project_qkv(const torch::Tensor& x);
  /// q: [B, heads, T, D]; k, v: [B, kv_heads, T_past + T, D].
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& attn_mask);

  int64_t num_heads_, num_kv_heads_, head_dim_;
  double dropout_;
  bool flash_;
};
TORCH_MODULE(Attention);

}  // namespace moe::model
