// The element math of the fused router (model/fused_route.h) that the CUDA kernels and the CPU loop
// share: the top-k weights' gradient back to the chosen scores, and a score's gradient back to its
// logit. In float32, as model/moe_gate.cpp's operators compute it.
#pragma once

#include "model/kernels/host_device.h"

namespace moe::model::kernels {

/// The most choices per token the fused router takes (its kernels keep them in registers).
constexpr int kMaxRouteTopK = 16;

/// The added epsilon of the renormalisation w_j = s_j / (sum_i s_i + eps), as MiniMind writes it.
constexpr float kRenormaliseEpsilon = 1e-20f;

/// The chosen scores' gradients from the weights': w_j = scale * s_j / S with S = sum_i s_i + eps
/// where renormalised (d w_j / d s_i = scale * (delta_ij / S - s_j / S^2)), w_j = scale * s_j
/// otherwise. s, grad_weight, grad_score: k values each.
MOE_HOST_DEVICE inline void chosen_score_gradients(const float* s, const float* grad_weight, int k, bool renormalise,
                                                   float scale, float* grad_score) {
  if (!renormalise) {
    for (int j = 0; j < k; ++j) grad_score[j] = grad_weight[j] * scale;
    return;
  }
  float sum = 0.f, dot = 0.f;
  for (int j = 0; j < k; ++j) sum += s[j];
  sum += kRenormaliseEpsilon;
  for (int j = 0; j < k; ++j) dot += grad_weight[j] * s[j];
  for (int j = 0; j < k; ++j) grad_score[j] = scale * (grad_weight[j] / sum - dot / (sum * sum));
}

/// A logit's gradient from its score's p and the score's gradient g: softmax p (g - sum_e g_e p_e),
/// with `dot` that sum; sigmoid g p (1 - p).
MOE_HOST_DEVICE inline float logit_gradient(float g, float p, float dot, bool sigmoid) {
  return sigmoid ? g * p * (1.f - p) : p * (g - dot);
}

/// Whether choice (value, index) ranks before (best, best_index): larger first, ties to the lower
/// expert; best_index < 0 is no choice yet.
MOE_HOST_DEVICE inline bool ranks_before(float value, int index, float best, int best_index) {
  return best_index < 0 || value > best || (value == best && index < best_index);
}

}  // namespace moe::model::kernels
