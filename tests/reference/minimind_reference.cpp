#include "tests/reference/minimind_reference.h"

#include <cmath>

namespace moe::reference {

torch::Tensor swiglu_expert(const torch::Tensor& x, const ExpertWeights& w) {
  const auto g = torch::matmul(x, w.gate_proj.t());
  const auto silu = g / (1 + torch::exp(-g));
  return torch::matmul(silu * torch::matmul(x, w.up_proj.t()), w.down_proj.t());
}

Routing route(const torch::Tensor& x, const torch::Tensor& gate_weight, int64_t top_k, bool norm_topk_prob) {
  const auto logits = torch::matmul(x, gate_weight.t());
  const auto exps = torch::exp(logits - std::get<0>(logits.max(-1, true)));
  const auto scores = exps / exps.sum(-1, true);
  auto [w, idx] = torch::topk(scores, top_k, -1, true, false);
  if (top_k > 1 && norm_topk_prob) w = w / (w.sum(-1, true) + 1e-20);
  return {scores, idx, w};
}

namespace {
torch::Tensor add_shared(torch::Tensor y, const torch::Tensor& x, const std::vector<ExpertWeights>& shared) {
  for (const auto& s : shared) y = y + swiglu_expert(x, s);
  return y;
}
}  // namespace

torch::Tensor moe_training_path(const torch::Tensor& x, const torch::Tensor& gate_weight,
                                const std::vector<ExpertWeights>& experts, const std::vector<ExpertWeights>& shared,
                                int64_t top_k, bool norm_topk_prob) {
  const auto h = x.size(-1);
  const auto flat_x = x.reshape({-1, h});
  const auto r = route(flat_x, gate_weight, top_k, norm_topk_prob);
  const auto flat_idx = r.topk_idx.reshape({-1});
  const auto repeated = flat_x.repeat_interleave(top_k, 0);
  auto y = torch::zeros_like(repeated);  // the seeds' buffer, in the model's dtype (not float16)
  for (size_t e = 0; e < experts.size(); ++e) {
    const auto mask = flat_idx == static_cast<int64_t>(e);
    y = y.index_put({mask}, swiglu_expert(repeated.index({mask}), experts[e]));
  }
  y = (y.view({-1, top_k, h}) * r.topk_weight.unsqueeze(-1)).sum(1).view(x.sizes());
  return add_shared(y, x, shared);
}

torch::Tensor moe_inference_path(const torch::Tensor& x, const torch::Tensor& gate_weight,
                                 const std::vector<ExpertWeights>& experts, const std::vector<ExpertWeights>& shared,
                                 int64_t top_k, bool norm_topk_prob) {
  torch::NoGradGuard no_grad;
  const auto h = x.size(-1);
  const auto flat_x = x.reshape({-1, h});
  const auto r = route(flat_x, gate_weight, top_k, norm_topk_prob);
  const auto flat_idx = r.topk_idx.reshape({-1});
  const auto flat_w = r.topk_weight.reshape({-1, 1});
  auto cache = torch::zeros_like(flat_x);
  const auto idxs = flat_idx.argsort();
  const auto ends = flat_idx.bincount().cumsum(0);
  const auto token_idxs = torch::div(idxs, top_k, "floor");
  for (int64_t e = 0; e < ends.size(0); ++e) {
    const auto start = e == 0 ? 0 : ends[e - 1].item<int64_t>(), end = ends[e].item<int64_t>();
    if (start == end) continue;
    const auto tok = token_idxs.slice(0, start, end);
    auto out = swiglu_expert(flat_x.index_select(0, tok), experts[e]);
    out.mul_(flat_w.index_select(0, idxs.slice(0, start, end)));
    cache.scatter_add_(0, tok.view({-1, 1}).repeat({1, h}), out);
  }
  return add_shared(cache.view(x.sizes()), x, shared);
}

torch::Tensor rope_by_rotation(const torch::Tensor& x, const torch::Tensor& positions, double theta) {
  const auto d = x.size(-1), half = d / 2;
  auto out = x.clone();
  for (int64_t i = 0; i < half; ++i) {
    const auto angle = positions.to(torch::kFloat64) * std::pow(theta, -2.0 * i / d);  // [T]
    const auto c = angle.cos().view({1, -1, 1}), s = angle.sin().view({1, -1, 1});
    const auto a = x.select(-1, i), b = x.select(-1, i + half);  // [B, T, heads]
    out.select(-1, i).copy_(a * c - b * s);
    out.select(-1, i + half).copy_(a * s + b * c);
  }
  return out;
}

torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const auto b = q.size(0), t = q.size(1), hq = q.size(2), d = q.size(3), hkv = k.size(2);
  auto out = torch::zeros_like(q);
  for (int64_t h = 0; h < hq; ++h) {
    const auto kv = h / (hq / hkv);  // query head h reads kv head h / group
    const auto qh = q.select(2, h), kh = k.select(2, kv), vh = v.select(2, kv);  // [B, T, D]
    auto scores = torch::bmm(qh, kh.transpose(1, 2)) / std::sqrt(double(d));
    scores = scores.masked_fill(torch::ones({t, t}, torch::kBool).triu(1), -INFINITY);
    const auto e = torch::exp(scores - std::get<0>(scores.max(-1, true)));
    out.select(2, h).copy_(torch::bmm(e / e.sum(-1, true), vh));
  }
  (void)b;
  return out;
}

}  // namespace moe::reference
