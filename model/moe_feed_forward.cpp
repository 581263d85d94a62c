#include "model/moe_feed_forward.h"

#include <torch/torch.h>

#include <string>

#include "model/feed_forward.h"
#include "common/check.h"
#include "model/functional.h"

namespace moe::model {

torch::Tensor LocalExpertExecutor::run(const torch::Tensor& grouped, const std::vector<int64_t>& tokens_per_expert) {
  const auto slices = grouped.split_with_sizes(tokens_per_expert);
  std::vector<torch::Tensor> outputs;
  outputs.reserve(slices.size());
  for (size_t e = 0; e < slices.size(); ++e) {
    // NOTE: an expert with no token still runs on its empty slice, so the graph (and a later
    // gradient all-reduce) sees the same parameters used on every step.
    outputs.push_back(experts_[std::to_string(e)]->as<FeedForward>()->forward(slices[e]));
  }
  return outputs.empty() ? grouped : torch::cat(outputs, 0);
}

ExpertGrouping group_by_expert(const torch::Tensor& topk_idx, int64_t num_experts) {
  const auto flat = topk_idx.reshape({-1});
  const auto k = topk_idx.size(1);
  const auto order = std::get<1>(flat.sort(std::optional<bool>(true), /*dim=*/0, /*descending=*/false));
  const auto counts = torch::bincount(flat, /*weights=*/{}, num_experts).to(torch::kCPU);
  const auto* c = counts.data_ptr<int64_t>();
  return {order, torch::div(order, k, "floor"), std::vector<int64_t>(c, c + num_experts)};
}

MoEFeedForwardImpl::MoEFeedForwardImpl(const ModelConfig& c, ExpertRange local) : num_experts_(c.n_routed_experts) {
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
  const auto grouping = group_by_expert(route.topk_idx, num_experts_);
  MOE_CHECK(executor_ != nullptr, "this MoE layer holds ", experts->size(), " of ", num_experts_,
            " experts and has no executor for the others (see parallel/expert_dispatch.h)");

  const auto grouped = tokens.index_select(0, grouping.token_of_copy);  // [N*k, H]
  const auto expert_out = executor_->run(grouped, grouping.tokens_per_expert);
  // Weighted sum back onto the tokens, in the routing dtype (float32 for half inputs).
  const auto weights = route.topk_weight.reshape({-1}).index_select(0, grouping.copy_order).unsqueeze(1);
  const auto weighted = expert_out.to(weights.scalar_type()) * weights;
  auto y = torch::zeros({tokens.size(0), h}, weighted.options()).index_add(0, grouping.token_of_copy, weighted);
  y = y.to(x.scalar_type()).view(x.sizes());
  for (const auto& shared : *shared_experts) y = y + shared->as<FeedForward>()->forward(x);
  return {y, route.aux_loss, torch::tensor(grouping.tokens_per_expert, torch::kInt64)};
}

}  // namespace moe::model
