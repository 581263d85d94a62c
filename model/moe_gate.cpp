#include "model/moe_gate.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "common/check.h"
#include "model/functional.h"
#include "model/fused_aux_loss.h"
#include "model/fused_route.h"

namespace moe::model {

MoEGateImpl::MoEGateImpl(const ModelConfig& c) : config_(c) {
  weight = register_parameter("weight", torch::empty({c.n_routed_experts, c.hidden_size}));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (c.has_score_bias()) {
    e_score_correction_bias = register_parameter("e_score_correction_bias", torch::zeros({c.n_routed_experts}, torch::kFloat32),
                                                 /*requires_grad=*/false);
  }
}

RoutingDecision MoEGateImpl::forward(const torch::Tensor& x) {
  const auto b = x.size(0), t = x.size(1), h = x.size(2);
  const auto dtype = compute_dtype(x.scalar_type());
  // Under autocast the product runs in its dtype whatever x's (bf16 from the fused norm): no cast to
  // float32 for autocast to undo.
  const auto input = x.reshape({b * t, h});
  const auto logits = torch::linear(autocast_on(x) ? input : input.to(dtype), weight.to(dtype));
  auto [scores, topk_idx, topk_weight] = choose(logits);
  RoutingDecision out{topk_idx, topk_weight, {}, {}};
  if (is_training()) add_losses(out, logits, scores, b, t);
  // Losses not computed are zero: one scalar kept for both (no zero-fill per layer and step).
  if (!out.aux_loss.defined() || !out.z_loss.defined()) {
    if (!zero_.defined() || zero_.device() != scores.device() || zero_.scalar_type() != scores.scalar_type()) {
      zero_ = torch::zeros({}, scores.options());
    }
    if (!out.aux_loss.defined()) out.aux_loss = zero_;
    if (!out.z_loss.defined()) out.z_loss = zero_;
  }
  return out;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> MoEGateImpl::choose(const torch::Tensor& logits) const {
  const auto k = config_.num_experts_per_tok;
  const bool sigmoid = config_.scoring_func == "sigmoid";
  // MiniMind renormalises only several choices; DeepSeek-V3's sigmoid gate (and transformers') always.
  const bool renormalise = config_.norm_topk_prob && (sigmoid || k > 1);
  torch::Tensor scores, topk_idx, topk_weight;
  if ((sigmoid || config_.scoring_func == "softmax") && !config_.limits_groups() && fused_route_serves(logits, k)) {
    // One kernel each way (model/fused_route.h).
    const auto bias = e_score_correction_bias.defined() ? e_score_correction_bias.to(torch::kFloat32) : torch::Tensor();
    const auto fused = fused_route(logits, bias, {k, sigmoid, renormalise, config_.routed_scaling_factor});
    scores = fused.scores, topk_idx = fused.topk_idx, topk_weight = fused.topk_weight;
  } else {
    scores = routing_scores(logits, config_.scoring_func);
    // The choice: scores plus the balancing bias, within the best groups; no gradient flows through
    // it (indices only), the weights below come from the unbiased scores.
    auto choice = scores.detach();
    if (e_score_correction_bias.defined()) {
      choice = choice + e_score_correction_bias.to(compute_dtype(logits.scalar_type()));
    }
    if (config_.limits_groups()) choice = limit_to_groups(choice, config_.n_group, config_.topk_group);
    topk_idx = std::get<1>(torch::topk(choice, k, -1, /*largest=*/true, /*sorted=*/false));
    topk_weight = scores.gather(1, topk_idx);
    if (renormalise) topk_weight = topk_weight / (topk_weight.sum(-1, /*keepdim=*/true) + 1e-20);
    if (config_.routed_scaling_factor != 1.0) topk_weight = topk_weight * config_.routed_scaling_factor;
  }
  return {scores, topk_idx, topk_weight};
}

void MoEGateImpl::add_losses(RoutingDecision& out, const torch::Tensor& logits, const torch::Tensor& scores, int64_t b,
                             int64_t t) {
  const auto e = config_.n_routed_experts, k = config_.num_experts_per_tok;
  const bool sigmoid = config_.scoring_func == "sigmoid";
  const auto& topk_idx = out.topk_idx;
  if (config_.aux_loss_alpha > 0.0) {
    // Sigmoid scores do not sum to 1: the aux loss takes them normalised per token (DeepSeek-V3).
    const auto affinity = sigmoid ? scores / scores.sum(-1, /*keepdim=*/true) : scores;
    out.aux_loss = config_.seq_aux ? sequence_aux_loss(affinity.view({b, t, e}), topk_idx.view({b, t * k}), k,
                                                       config_.aux_loss_alpha)
                                   : batch_aux_loss(affinity, topk_idx, config_.aux_loss_alpha, reduce_counts_);
  }
  if (config_.router_z_loss_coef > 0.0) out.z_loss = router_z_loss(logits, config_.router_z_loss_coef);
}

torch::Tensor routing_scores(const torch::Tensor& logits, const std::string& scoring_func) {
  if (scoring_func == "sigmoid") return logits.sigmoid();
  MOE_CHECK(scoring_func == "softmax", "scoring_func '", scoring_func, "' is not one of softmax, sigmoid");
  return logits.softmax(-1);
}

torch::Tensor limit_to_groups(const torch::Tensor& choice, int64_t n_group, int64_t topk_group) {
  const auto n = choice.size(0), e = choice.size(1), per_group = e / n_group;
  const auto grouped = choice.view({n, n_group, per_group});
  const auto group_score =
      std::get<0>(grouped.topk(std::min<int64_t>(2, per_group), -1, /*largest=*/true, /*sorted=*/false)).sum(-1);
  const auto best = std::get<1>(group_score.topk(topk_group, -1, /*largest=*/true, /*sorted=*/false));
  const auto keep = torch::zeros({n, n_group}, choice.options().dtype(torch::kBool)).scatter_(1, best, true);
  return grouped.masked_fill(keep.logical_not().unsqueeze(-1), -std::numeric_limits<double>::infinity())
      .view({n, e});
}

torch::Tensor router_z_loss(const torch::Tensor& logits, double coef) {
  if (logits.size(0) == 0) return torch::zeros({}, logits.options());
  return logits.logsumexp(-1).square().mean() * coef;
}

torch::Tensor sequence_aux_loss(const torch::Tensor& scores, const torch::Tensor& topk_idx, int64_t top_k,
                                double alpha) {
  const auto b = scores.size(0), t = scores.size(1), e = scores.size(2);
  if (b == 0 || t == 0) return torch::zeros({}, scores.options());
  // mean_b sum_e (count_be * E / (T k)) * mean_t(scores)_be * alpha, as one dot product of the exact
  // counts with the mean scores and one scale: six small kernels where the formula as written
  // takes ten (the routing runs per layer and step, launch-bound on small models).
  const double scale = alpha * static_cast<double>(e) / (static_cast<double>(t * top_k) * static_cast<double>(b));
  if (fused_sequence_aux_loss_serves(scores, topk_idx)) {
    return fused_sequence_aux_loss(scores, topk_idx, scale);  // one kernel each way (model/fused_aux_loss.h)
  }
  const auto ones = torch::ones({1, 1}, scores.options()).expand(topk_idx.sizes());
  const auto counts = torch::zeros({b, e}, scores.options()).scatter_add_(1, topk_idx, ones);
  return counts.view({-1}).dot(scores.mean(1).reshape({-1})) * scale;
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

torch::Tensor routing_bias_delta(const torch::Tensor& counts, double rate) {
  MOE_CHECK(counts.dim() == 1 && counts.scalar_type() == torch::kInt64, "routing_bias_delta: counts must be [E] int64, got ",
            counts.sizes(), " ", counts.scalar_type());
  const auto e = counts.size(0);
  // sign(mean - count) without a division: mean - count has the sign of sum - E * count.
  const auto direction = (counts.sum() - counts * e).sign();  // int64 in {-1, 0, 1}
  const auto centred = direction * e - direction.sum();       // E * (direction - mean(direction)), exact
  return (centred.to(torch::kFloat64) * (rate / double(e))).to(torch::kFloat32);
}

}  // namespace moe::model
