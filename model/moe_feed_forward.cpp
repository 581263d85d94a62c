#include "model/moe_feed_forward.h"

#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/step_regions.h"
#include "model/copy_permutation.h"
#include "model/feed_forward.h"
#include "model/functional.h"
#include "model/fused_combine.h"
#include "model/fused_grouping.h"

namespace moe::model {

int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t top_k, int64_t num_experts) {
  if (capacity_factor <= 0) return 0;
  return static_cast<int64_t>(std::ceil(capacity_factor * double(tokens * top_k) / double(num_experts)));
}

ExpertGrouping group_by_expert(const torch::Tensor& topk_idx, int64_t num_experts, int64_t capacity) {
  const auto flat = topk_idx.reshape({-1});
  const auto k = topk_idx.size(1);
  torch::Tensor order, routed;
  if (fused_grouping_serves(topk_idx, num_experts)) {
    auto fused = fused_group_copies(topk_idx, num_experts);  // one operator (a counting sort)
    if (capacity <= 0) {
      return {fused.copy_order, fused.token_of_copy, fused.position_of_copy, fused.routed, fused.routed};
    }
    order = fused.copy_order, routed = fused.routed;
  } else {
    order = std::get<1>(flat.sort(std::optional<bool>(true), /*dim=*/0, /*descending=*/false));
    routed = count_ids(flat, num_experts);
  }
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
  return {order, torch::div(order, k, "floor"), inverse_permutation(order), routed, kept};
}

torch::Tensor combine_copies(const torch::Tensor& expert_out, const ExpertGrouping& grouping,
                             const torch::Tensor& weights, c10::ScalarType out_dtype, const torch::Tensor& shared) {
  if (fused_combine_serves(expert_out, weights, out_dtype, shared)) {
    // One kernel each way, the shared experts' output added in its pass.
    return fused_combine(expert_out, grouping.position_of_copy, weights, out_dtype, shared);
  }
  // Back to (token, slot) order, then each token's k outputs weighted and summed over the slots
  // (in the matmul dtype; the sum accumulates in float32). Not as a batched product [N, 1, k] x
  // [N, k, H]: cuBLAS runs its backward's outer products (inner dimension 1) in a 32x32 tile
  // kernel at ~1% of the bandwidth, 0.6 ms per layer on config a (H200 profile). Here: a product
  // and a sum forward, two products and a sum backward, each a memory-bound pass.
  const auto n = weights.size(0), k = weights.size(1), h = expert_out.size(1);
  const auto by_slot = ungroup_copies(expert_out, grouping.copy_order, grouping.position_of_copy).view({n, k, h});
  const auto y = (by_slot * weights.to(by_slot.scalar_type()).unsqueeze(-1)).sum(1).to(out_dtype);  // [N, H]
  return shared.defined() ? y + shared : y;
}

MoEFeedForwardImpl::MoEFeedForwardImpl(const ModelConfig& c, ExpertRange local)
    : num_experts_(c.n_routed_experts), capacity_factor_(c.capacity_factor) {
  const int64_t count = local.count < 0 ? c.n_routed_experts : local.count;
  MOE_CHECK(local.first >= 0 && local.first + count <= c.n_routed_experts, "local experts [", local.first, ", ",
            local.first + count, ") outside the ", c.n_routed_experts, " routed experts");
  gate = register_module("gate", MoEGate(c));
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> by_id;
  for (int64_t e = local.first; e < local.first + count; ++e) {
    by_id.emplace_back(std::to_string(e), FeedForward(c).ptr());
  }
  experts = register_module("experts", torch::nn::ModuleDict(by_id));
  shared_experts = register_module("shared_experts", torch::nn::ModuleList());
  for (int64_t s = 0; s < c.n_shared_experts; ++s) shared_experts->push_back(FeedForward(c));
  if (count == c.n_routed_experts) {
    executor_ = std::make_shared<LocalExpertExecutor>(experts, parse_expert_compute(c.expert_compute));
  }
}

void MoEFeedForwardImpl::set_executor(std::shared_ptr<ExpertExecutor> executor) { executor_ = std::move(executor); }

MoEOutput MoEFeedForwardImpl::forward(const torch::Tensor& x) {
  const auto h = x.size(-1);
  const auto tokens = x.reshape({-1, h});  // [N, H]
  ScopedRegion routing("gate_and_routing");
  const auto route = gate(x);
  const auto capacity =
      is_training() ? expert_capacity(capacity_factor_, tokens.size(0), route.topk_idx.size(1), num_experts_) : 0;
  const auto grouping = group_by_expert(route.topk_idx, num_experts_, capacity);
  MOE_CHECK(executor_ != nullptr, "this MoE layer holds ", experts->size(), " of ", num_experts_,
            " experts and has no executor for the others (see parallel/expert_dispatch.h)");

  routing.close();
  // Gather in the matmul dtype: under autocast that halves the bytes the gather moves.
  ScopedRegion dispatch("dispatch");
  const auto grouped = gather_copies(tokens.to(matmul_dtype(tokens)), grouping.token_of_copy,
                                     grouping.position_of_copy);  // [N*k, H]
  dispatch.close();
  ScopedRegion starting("experts");
  auto in_flight = executor_->start(grouped, grouping.kept, capacity);
  starting.close();
  // While expert parallelism's copies travel to their ranks.
  ScopedRegion shared_region("shared_experts");
  std::vector<torch::Tensor> shared;
  for (const auto& expert : *shared_experts) shared.push_back(expert->as<FeedForward>()->forward(x).view({-1, h}));
  shared_region.close();
  ScopedRegion finishing("experts");
  const auto expert_out = in_flight->finish();  // [N*k, H]
  finishing.close();
  ScopedRegion combine("combine");
  // In the residual stream's dtype (float32 under autocast, also where x came bf16 from the fused norm);
  // the first shared expert's output added by the combine, any others after it, in that order.
  const auto out_dtype = at::promote_types(x.scalar_type(), gate->weight.scalar_type());
  auto y = combine_copies(expert_out, grouping, route.topk_weight, out_dtype,
                          shared.empty() ? torch::Tensor() : shared.front());
  for (size_t s = 1; s < shared.size(); ++s) y = y + shared[s];
  y = y.view(x.sizes());
  combine.close();
  return {y, route.aux_loss, route.z_loss, {grouping.routed, grouping.routed - grouping.kept}};
}

}  // namespace moe::model
