#include "model/moe_gate.h"

#include <torch/torch.h>

#include <cmath>

#include "model/functional.h"

namespace moe::model {

MoEGateImpl::MoEGateImpl(const ModelConfig& c) : config_(c) {
  weight = register_parameter("weight", torch::empty({c.n_routed_experts, c.hidden_size}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
}

RoutingDecision MoEGateImpl::forward(const torch::Tensor& x) {
  const auto b = x.size(0), t = x.size(1), h = x.size(2);
  const auto dtype = compute_dtype(x.scalar_type());
  const auto logits = torch::linear(x.reshape({b * t, h}).to(dtype), weight.to(dtype));
  const auto scores = logits.softmax(-1);  // [N, E]
  auto [topk_weight, topk_idx] = torch::topk(scores, config_.num_experts_per_tok, -1, /*largest=*/true,
                                             /*sorted=*/false);
  if (config_.num_experts_per_tok > 1 && config_.norm_topk_prob) {
    topk_weight = topk_weight / (topk_weight.sum(-1, /*keepdim=*/true) + 1e-20);
  }
  torch::Tensor aux;
  if (is_training() && config_.aux_loss_alpha > 0.0) {
    const auto e = config_.n_routed_experts, k = config_.num_experts_per_tok;
    aux = config_.seq_aux ? sequence_aux_loss(scores.view({b, t, e}), topk_idx.view({b, t * k}),
                                              config_.num_experts_per_tok, config_.aux_loss_alpha)
                          : batch_aux_loss(scores, topk_idx, config_.aux_loss_alpha, reduce_counts_);
  } else {
    aux = torch::zeros({}, scores.options());
  }
  return {topk_idx, topk_weight, aux};
}

torch::Tensor sequence_aux_loss(const torch::Tensor& scores, const torch::Tensor& topk_idx, int64_t top_k,
                                double alpha) {
  const auto b = scores.size(0), t = scores.size(1), e = scores.size(2);
  if (b == 0 || t == 0) return torch::zeros({}, scores.options());
  auto share = torch::zeros({b, e}, scores.options());
  share.scatter_add_(1, topk_idx, torch::ones(topk_idx.sizes(), scores.options()));
  share.div_(static_cast<double>(t * top_k) / static_cast<double>(e));
  return (share * scores.mean(1)).sum(1).mean() * alpha;
}

torch::Tensor batch_aux_loss(const torch::Tensor& scores, const torch::Tensor& topk_idx, double alpha,
                             const CountReducer& reduce_counts) {
  const auto e = scores.size(1);
  auto counts = count_ids(topk_idx, e).to(scores.scalar_type());
  if (reduce_counts) counts = reduce_counts(counts);  // NOTE: every rank joins, even with no tokens
  if (scores.size(0) == 0) return torch::zeros({}, scores.options());
  const auto share = counts / counts.sum();
  return (scores.mean(0) * share * static_cast<double>(e)).sum() * alpha;
}

}  // namespace moe::model
