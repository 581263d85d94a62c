// Independent float64 references for the model's parts, written from the seed documents and the
// formulas, sharing no code with model/. Used only by tests.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace moe::reference {

/// One SwiGLU expert's weights: gate_proj/up_proj [I, H], down_proj [H, I].
struct ExpertWeights {
  torch::Tensor gate_proj, up_proj, down_proj;
};

/// down(silu(gate x) * up x) with silu(z) = z / (1 + exp(-z)). x: [..., H].
torch::Tensor swiglu_expert(const torch::Tensor& x, const ExpertWeights& w);

/// Gate of the seeds: softmax(x W^T), top-k (unsorted), optional renormalisation. x: [N, H].
struct Routing {
  torch::Tensor scores, topk_idx, topk_weight;
};
Routing route(const torch::Tensor& x, const torch::Tensor& gate_weight, int64_t top_k, bool norm_topk_prob);

/// The seeds' training path: repeat_interleave the tokens k times, boolean mask per expert, weighted
/// sum over the k slots; plus shared experts. Differentiable. x: [B, T, H].
torch::Tensor moe_training_path(const torch::Tensor& x, const torch::Tensor& gate_weight,
                                const std::vector<ExpertWeights>& experts, const std::vector<ExpertWeights>& shared,
                                int64_t top_k, bool norm_topk_prob);

/// The seeds' inference path: argsort + bincount + scatter_add_, plus shared experts. x: [B, T, H].
torch::Tensor moe_inference_path(const torch::Tensor& x, const torch::Tensor& gate_weight,
                                 const std::vector<ExpertWeights>& experts, const std::vector<ExpertWeights>& shared,
                                 int64_t top_k, bool norm_topk_prob);

/// Rotary embedding by explicit 2x2 rotations of the pairs (i, i + D/2) by angle pos * theta^(-2i/D).
/// x: [B, T, heads, D]; positions: [T].
torch::Tensor rope_by_rotation(const torch::Tensor& x, const torch::Tensor& positions, double theta);

/// softmax(Q K^T / sqrt(d) + causal mask) V, with each kv head repeated for its group of query heads.
/// q: [B, T, Hq, D]; k, v: [B, T, Hkv, D]. Returns [B, T, Hq, D].
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

}  // namespace moe::reference
