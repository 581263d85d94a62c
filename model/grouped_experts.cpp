#include "model/grouped_experts.h"

#include <ATen/ops/_grouped_mm.h>
#include <torch/torch.h>

#include "common/check.h"
#include "model/functional.h"
#include "model/fused_projection.h"
#include "model/recomputed_activation.h"

namespace moe::model {

namespace {

// [experts, 2I, H]: each expert's gate rows then its up rows, and [experts, H, I], in dtype.
std::pair<torch::Tensor, torch::Tensor> stacked_weights(const std::vector<FeedForward>& experts,
                                                        c10::ScalarType dtype) {
  std::vector<torch::Tensor> gate_up, down;
  for (const auto& e : experts) {
    gate_up.push_back(e->gate_proj->weight);
    gate_up.push_back(e->up_proj->weight);
    down.push_back(e->down_proj->weight);
  }
  const auto n = static_cast<int64_t>(experts.size());
  const auto i = gate_up.front().size(0), h = gate_up.front().size(1);
  return {concat_as(gate_up, dtype).view({n, 2 * i, h}), concat_as(down, dtype).view({n, h, i})};
}

}  // namespace

torch::Tensor grouped_swiglu(const torch::Tensor& rows, const torch::Tensor& counts,
                             const std::vector<FeedForward>& experts, c10::ScalarType dtype, bool training,
                             bool all_rows_counted) {
  MOE_CHECK(!experts.empty(), "grouped_swiglu needs at least one expert");
  MOE_CHECK(counts.numel() == static_cast<int64_t>(experts.size()), "grouped_swiglu: ", counts.numel(),
            " counts for ", experts.size(), " experts");
  const auto [gate_up, down] = stacked_weights(experts, dtype);
  const auto on_device = counts.device() == rows.device() ? counts : counts.to(rows.device());
  const auto ends = on_device.cumsum(0).to(torch::kInt32);  // group ends, as _grouped_mm wants
  // Rows past the last group are never written by the kernel (neither their output nor their input
  // gradient): mask both sides so that they are exactly zero, where there can be such rows.
  torch::Tensor valid;  // [M, 1]
  if (!all_rows_counted) valid = (torch::arange(rows.size(0), ends.options()) < ends[-1]).unsqueeze(1);
  const auto x = all_rows_counted ? rows.to(dtype) : torch::where(valid, rows.to(dtype), 0);
  const auto hidden = at::_grouped_mm(x, gate_up.transpose(1, 2), ends);  // [M, 2I]
  const auto& act = experts.front()->activation_name();
  const auto product = experts.front()->recomputes_activation()
                           ? recomputed_grouped_gated_linear(hidden, down, ends, act)
                           : at::_grouped_mm(gated_activation(hidden, act), down.transpose(1, 2), ends);
  const auto out = all_rows_counted ? product : torch::where(valid, product, 0);  // [M, H]
  return torch::dropout(out, experts.front()->dropout->options.p(), training);
}

}  // namespace moe::model
