#include "model/moe_feed_forward.h"

#include <torch/torch.h>

#include <cmath>
#include <numeric>
#include <string>

#include "model/feed_forward.h"
#include "common/check.h"
#include "model/functional.h"

namespace moe::model {

torch::Tensor LocalExpertExecutor::run(const torch::Tensor& grouped, const torch::Tensor& counts) {
  const auto host = counts.to(torch::kCPU);
  const std::vector<int64_t> sizes(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
  const auto slices = grouped.narrow(0, 0, std::accumulate(sizes.begin(), sizes.end(), int64_t{0})).split_with_sizes(sizes);
  std::vector<torch::Tensor> outputs;
  outputs.reserve(slices.size());
  for (size_t e = 0; e < slices.size(); ++e) {
    // NOTE: an expert with no token still runs on its empty slice, so the graph (and a later
    // gradient all-reduce) sees the same parameters used on every step.
    outputs.push_back(experts_[std::to_string(e)]->as<FeedForward>()->forward(slices[e]));
  }
  return outputs.empty() ? grouped.narrow(0, 0, 0) : torch::cat(outputs, 0);
}

int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t top_k, int64_t num_experts) {
  if (capacity_factor <= 0) return 0;
  return static_cast<int64_t>(std::ceil(capacity_factor * double(tokens * top_k) / double(num_experts)));
}

ExpertGrouping group_by_expert(const torch::Tensor& topk_idx, int64_t num_experts, int64_t capacity) {
  const auto flat = topk_idx.reshape({-1});
  const auto k = topk_idx.size(1);
  auto order = std::get<1>(flat.sort(std::optional<bool>(true), /*dim=*/0, /*descending=*/false));
  const auto routed = count_ids(flat, num_experts);
  auto kept = routed;
  if (capacity > 0) {
    // Rank of each copy inside its expert's slice; those at rank >= capacity move behind all kept
    // copies (a second stable sort on expert + E * dropped keeps both groups in order).
    const auto expert_of = flat.index_select(0, order);
    const auto slice_start = routed.cumsum(0) - routed;
    const auto rank_in_expert = torch::arange(flat.size(0), flat.options()) - slice_start.index_select(0, expert_of);
    const auto key = expert_of + num_experts * (rank_in_expert >= capacity).to(torch::kInt64);
    order = order.index_select(0, std::get<1>(key.sort(std::optional<bool>(true), 0, false)));
    kept = routed.clamp_max(capacity);
  }
  return {order, torch::div(order, k, "floor"), routed, kept};
}

MoEFeedForwardImpl::MoEFeedForwardImpl(const ModelConfig& c, ExpertRange local)
    : num_experts_(c.n_routed_experts), capacity_factor_(c.capacity_factor) {
  const int64_t count = local.count < 0 ? c.n_routed_experts : local.count;
  MOE_CHECK(local.first >= 0 && local.first + count <= c.n_routed_experts, "local experts [", local.first, ", ",
            local.first + count, ") outside the ", c.n_routed_experts, " routed experts");
  gate = register_module("gate", MoEGate(c));
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> by_id;
  for (int64_t e = local.first; e < local.first + count; ++e) by_id.emplace_back(std::to_string(e), FeedForward(c).ptr());
  experts = register_module("experts", torch::nn::ModuleDict(by_id));
  shared_experts = register_module("shared_experts", torch::nn::ModuleList());
  for (int64_t s = 0; s < c.n_shared_experts; ++s) shared_experts->push_back(FeedForward(c));
  if (count == c.n_routed_experts) executor_ = std::make_shared<LocalExpertExecutor>(experts);
}

void MoEFeedForwardImpl::set_executor(std::shared_ptr<ExpertExecutor> executor) { executor_ = std::move(executor); }

MoEOutput MoEFeedForwardImpl::forward(const torch::Tensor& x) {
  const auto h = x.size(-1);
  const auto tokens = x.reshape({-1, h});  // [N, H]
  const auto route = gate(x);
  const auto capacity = is_training() ? expert_capacity(capacity_factor_, tokens.size(0), route.topk_idx.size(1),
                                                        num_experts_)
                                      : 0;
  const auto grouping = group_by_expert(route.topk_idx, num_experts_, capacity);
  MOE_CHECK(executor_ != nullptr, "this MoE layer holds ", experts->size(), " of ", num_experts_,
            " experts and has no executor for the others (see parallel/expert_dispatch.h)");

  const auto grouped = tokens.index_select(0, grouping.token_of_copy);  // [N*k, H]
  const auto expert_out = executor_->run(grouped, grouping.kept);       // [kept copies, H]
  const auto kept = expert_out.size(0);
  // Weighted sum back onto the tokens, in the routing dtype (float32 for half inputs).
  const auto weights =
      route.topk_weight.reshape({-1}).index_select(0, grouping.copy_order.narrow(0, 0, kept)).unsqueeze(1);
  const auto weighted = expert_out.to(weights.scalar_type()) * weights;
  auto y = torch::zeros({tokens.size(0), h}, weighted.options())
               .index_add(0, grouping.token_of_copy.narrow(0, 0, kept), weighted);
  y = y.to(x.scalar_type()).view(x.sizes());
  for (const auto& shared : *shared_experts) y = y + shared->as<FeedForward>()->forward(x);
  return {y, route.aux_loss, {grouping.routed, grouping.routed - grouping.kept}};
}

}  // namespace moe::model
