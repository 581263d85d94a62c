#include "model/grouped_experts.h"

#include <ATen/ops/_grouped_mm.h>
#include <torch/torch.h>

#include "common/check.h"
#include "model/expert_stack.h"
#include "model/functional.h"
#include "model/fused_projection.h"
#include "model/recomputed_activation.h"

namespace moe::model {

namespace {

// Each expert's gate and up weights, in expert order ([I, H] each), and its down weights ([H, I]).
struct ExpertWeights {
  std::vector<torch::Tensor> gate_up, down;
};

ExpertWeights weights_of(const std::vector<FeedForward>& experts) {
  ExpertWeights w;
  for (const auto& e : experts) {
    w.gate_up.push_back(e->gate_proj->weight);
    w.gate_up.push_back(e->up_proj->weight);
    w.down.push_back(e->down_proj->weight);
  }
  return w;
}

// [experts, 2I, H]: each expert's gate rows then its up rows, and [experts, H, I], in dtype, with
// autograd to the parameters (the stacks kept for the backward).
std::pair<torch::Tensor, torch::Tensor> stacked_weights(const ExpertWeights& w, c10::ScalarType dtype) {
  const auto n = static_cast<int64_t>(w.down.size());
  const auto i = w.gate_up.front().size(0), h = w.gate_up.front().size(1);
  return {concat_as(w.gate_up, dtype).view({n, 2 * i, h}), concat_as(w.down, dtype).view({n, h, i})};
}

}  // namespace

torch::Tensor grouped_swiglu(const torch::Tensor& rows, const torch::Tensor& counts,
                             const std::vector<FeedForward>& experts, c10::ScalarType dtype, bool training,
                             bool all_rows_counted) {
  MOE_CHECK(!experts.empty(), "grouped_swiglu needs at least one expert");
  MOE_CHECK(counts.numel() == static_cast<int64_t>(experts.size()), "grouped_swiglu: ", counts.numel(),
            " counts for ", experts.size(), " experts");
  const auto on_device = counts.device() == rows.device() ? counts : counts.to(rows.device());
  const auto ends = on_device.cumsum(0).to(torch::kInt32);  // group ends, as _grouped_mm wants
  // Rows past the last group are never written by the kernel (neither their output nor their input
  // gradient): mask both sides so that they are exactly zero, where there can be such rows.
  torch::Tensor valid;  // [M, 1]
  if (!all_rows_counted) valid = (torch::arange(rows.size(0), ends.options()) < ends[-1]).unsqueeze(1);
  const auto x = all_rows_counted ? rows.to(dtype) : torch::where(valid, rows.to(dtype), 0);
  const auto& first = experts.front();
  const auto& act = first->activation_name();
  const auto weights = weights_of(experts);
  const auto n = static_cast<int64_t>(experts.size());
  torch::Tensor product;
  if (first->recasts_weights()) {
    // The bf16 stacks cast again in the backward, not kept (model/expert_stack.h).
    const auto hidden = recast_grouped_linear(x, weights.gate_up, n, ends);  // [M, 2I]
    product = first->recomputes_activation()
                  ? recomputed_grouped_gated_linear_recast(hidden, weights.down, ends, act)
                  : recast_grouped_linear(gated_activation(hidden, act), weights.down, n, ends);
  } else {
    const auto [gate_up, down] = stacked_weights(weights, dtype);
    const auto hidden = at::_grouped_mm(x, gate_up.transpose(1, 2), ends);  // [M, 2I]
    product = first->recomputes_activation()
                  ? recomputed_grouped_gated_linear(hidden, down, ends, act)
                  : at::_grouped_mm(gated_activation(hidden, act), down.transpose(1, 2), ends);
  }
  const auto out = all_rows_counted ? product : torch::where(valid, product, 0);  // [M, H]
  return torch::dropout(out, experts.front()->dropout->options.p(), training);
}

}  // namespace moe::model
