// The router's choice as one operator each way: from the gate's logits [N, E], the scores (softmax
// or sigmoid, float32), the top k experts by score + the balancing bias, and their weights (the
// unbiased scores, renormalised and scaled). The operators it replaces (model/moe_gate.cpp): a
// softmax, a detach and an add, a top-k, a gather, a sum, an add, a division and a product forward,
// about as many again backward, per layer and step (small kernels: config a's routing was 184 of
// its 960 launches). Group-limited routing (DeepSeek-V3's n_group) keeps the operators. CUDA
// kernels in model/kernels/route_kernels.cu, a CPU loop over the same math.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace moe::model {

struct RouteOptions {
  int64_t top_k = 1;
  bool sigmoid = false;      // scores: sigmoid, else softmax over the experts
  bool renormalise = false;  // weights: the chosen scores over their sum (+1e-20)
  double scale = 1.0;        // weights times this (routed_scaling_factor)
};

struct FusedRouting {
  at::Tensor scores;       // [N, E] float32, differentiable
  at::Tensor topk_idx;     // [N, k] int64, best first
  at::Tensor topk_weight;  // [N, k] float32, differentiable
};

/// Whether the gate routes through the fused operator: logits [N, E] of float32, bfloat16 or
/// float16 (CUDA, or the CPU standing in for a GPU in bf16/fp16), top_k within the experts and at
/// most 16, while the fused kernels are enabled (model/fused_kernels.h).
bool fused_route_serves(const at::Tensor& logits, int64_t top_k);

/// The dispatcher's moe::route and moe::route_backward under one autograd function; gradients to
/// the logits (in their dtype). bias: [E] float32 or undefined (none); no gradient.
FusedRouting fused_route(const at::Tensor& logits, const at::Tensor& bias, const RouteOptions& options);

}  // namespace moe::model
