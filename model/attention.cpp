#include "model/attention.h"

#include <torch/torch.h>

#include <cmath>

#include "common/check.h"
#include "model/functional.h"
#include "model/fused_projection.h"

namespace moe::model {

namespace nn = torch::nn;

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : num_heads_(c.num_attention_heads),
      num_kv_heads_(c.num_key_value_heads),
      head_dim_(c.head_dim()),
      dropout_(c.dropout),
      flash_(c.flash_attn) {
  const auto h = c.hidden_size;
  q_proj = register_module("q_proj", nn::Linear(nn::LinearOptions(h, num_heads_ * head_dim_).bias(false)));
  k_proj = register_module("k_proj", nn::Linear(nn::LinearOptions(h, num_kv_heads_ * head_dim_).bias(false)));
  v_proj = register_module("v_proj", nn::Linear(nn::LinearOptions(h, num_kv_heads_ * head_dim_).bias(false)));
  o_proj = register_module("o_proj", nn::Linear(nn::LinearOptions(num_heads_ * head_dim_, h).bias(false)));
  resid_dropout = register_module("resid_dropout", nn::Dropout(c.dropout));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& signed_sin,
                                     const torch::Tensor& attn_mask, LayerKVCache* cache) {
  const auto b = x.size(0), t = x.size(1);
  auto [q, k, v] = project_qkv(x);
  q = q.view({b, t, num_heads_, head_dim_});
  k = k.view({b, t, num_kv_heads_, head_dim_});
  v = v.view({b, t, num_kv_heads_, head_dim_});
  q = apply_rope(q, cos, signed_sin);
  k = apply_rope(k, cos, signed_sin);
  if (cache != nullptr) {
    if (cache->length() > 0) {
      k = torch::cat({cache->k, k}, 1);
      v = torch::cat({cache->v, v}, 1);
    } else {
      v = v.contiguous();  // a view of the fused product would keep all of q, k and v in the cache
    }
    cache->k = k;
    cache->v = v;
  }
  MOE_CHECK(attn_mask.defined() || t == 1 || k.size(1) == t,
            "attention over a non-empty KV cache with ", t, " new tokens needs an explicit mask");
  // [B, heads, T, D] for the kernel; k and v keep their kv_heads (attend repeats them if it must).
  const auto out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask);
  return resid_dropout(o_proj(out.transpose(1, 2).reshape({b, t, num_heads_ * head_dim_})));
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> AttentionImpl::project_qkv(const torch::Tensor& x) {
  if (!projection_casts(x, q_proj->weight.scalar_type())) return {q_proj(x), k_proj(x), v_proj(x)};
  // One product where autocast casts the weights anyway; the split's backward concatenates the
  // three gradients in one pass.
  const auto qkv = fused_projection(x, {q_proj->weight, k_proj->weight, v_proj->weight})
                       .split_with_sizes({q_proj->weight.size(0), k_proj->weight.size(0), v_proj->weight.size(0)}, -1);
  return {qkv[0], qkv[1], qkv[2]};
}

torch::Tensor AttentionImpl::attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    const torch::Tensor& attn_mask) {
  const double p = is_training() ? dropout_ : 0.0;
  const bool causal = !attn_mask.defined() && q.size(2) > 1;
  const auto n_rep = num_heads_ / num_kv_heads_;
  if (flash_ && !attn_mask.defined()) {
    // Grouped-query attention inside the kernel: no copy of k and v per query head.
    return at::scaled_dot_product_attention(q, k, v, std::nullopt, p, causal, std::nullopt, /*enable_gqa=*/n_rep > 1);
  }
  // [B, kv_heads, T, D] -> [B, heads, T, D], each kv head repeated n_rep times in place.
  const auto k_all = repeat_kv(k.transpose(1, 2), n_rep).transpose(1, 2);
  const auto v_all = repeat_kv(v.transpose(1, 2), n_rep).transpose(1, 2);
  if (flash_) return at::scaled_dot_product_attention(q, k_all, v_all, attn_mask, p, causal);
  auto scores = torch::matmul(q, k_all.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim_));
  if (causal) {
    const auto t = q.size(2);
    scores = scores.masked_fill(torch::ones({t, t}, q.options().dtype(torch::kBool)).triu(1), -INFINITY);
  } else if (attn_mask.defined()) {
    scores = scores.masked_fill(attn_mask.logical_not(), -INFINITY);
  }
  auto probs = torch::softmax(scores.to(compute_dtype(q.scalar_type())), -1).to(q.scalar_type());
  probs = torch::dropout(probs, p, is_training());
  return torch::matmul(probs, v_all);
}

}  // namespace moe::model
