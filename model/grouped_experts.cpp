#include "model/grouped_experts.h"

#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/_grouped_mm.h>
#include <torch/torch.h>

#include "common/check.h"
#include "model/functional.h"
#include "model/recomputed_activation.h"

namespace moe::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// torch::stack(parts).to(dtype) in one pass: one multi-tensor copy casts every part straight into
// its slot (one kernel on CUDA for all experts, not one per weight), and the backward casts the
// stacked gradient back at once, handing each weight a contiguous slice of it.
struct StackAs : torch::autograd::Function<StackAs> {
  static torch::Tensor forward(AutogradContext* ctx, at::TensorList parts, c10::ScalarType dtype) {
    auto shape = parts.front().sizes().vec();
    shape.insert(shape.begin(), static_cast<int64_t>(parts.size()));
    auto out = torch::empty(shape, parts.front().options().dtype(dtype));
    at::_foreach_copy_(out.unbind(0), parts);
    ctx->saved_data["dtype"] = static_cast<int64_t>(parts.front().scalar_type());
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto dtype = static_cast<c10::ScalarType>(ctx->saved_data["dtype"].toInt());
    // Contiguous: each slice then has its weight's layout, and autograd keeps it as the gradient
    // instead of copying it once more.
    variable_list out = grads[0].to(dtype, /*non_blocking=*/false, /*copy=*/false, at::MemoryFormat::Contiguous).unbind(0);
    out.emplace_back();  // dtype
    return out;
  }
};

// [experts, 2I, H]: each expert's gate rows then its up rows, and [experts, H, I], in dtype.
std::pair<torch::Tensor, torch::Tensor> stacked_weights(const std::vector<FeedForward>& experts,
                                                        c10::ScalarType dtype) {
  variable_list gate_up, down;
  for (const auto& e : experts) {
    gate_up.push_back(e->gate_proj->weight);
    gate_up.push_back(e->up_proj->weight);
    down.push_back(e->down_proj->weight);
  }
  const auto n = static_cast<int64_t>(experts.size());
  const auto i = gate_up.front().size(0), h = gate_up.front().size(1);
  return {StackAs::apply(at::TensorList(gate_up), dtype).view({n, 2 * i, h}), StackAs::apply(at::TensorList(down), dtype)};
}

}  // namespace

torch::Tensor grouped_swiglu(const torch::Tensor& rows, const torch::Tensor& counts,
                             const std::vector<FeedForward>& experts, c10::ScalarType dtype, bool training) {
  MOE_CHECK(!experts.empty(), "grouped_swiglu needs at least one expert");
  MOE_CHECK(counts.numel() == static_cast<int64_t>(experts.size()), "grouped_swiglu: ", counts.numel(),
            " counts for ", experts.size(), " experts");
  const auto [gate_up, down] = stacked_weights(experts, dtype);
  const auto on_device = counts.device() == rows.device() ? counts : counts.to(rows.device());
  const auto ends = on_device.cumsum(0).to(torch::kInt32);  // group ends, as _grouped_mm wants
  // Rows past the last group are never written by the kernel (neither their output nor their input
  // gradient): mask both sides so that they are exactly zero.
  const auto valid = (torch::arange(rows.size(0), ends.options()) < ends[-1]).unsqueeze(1);  // [M, 1]
  const auto x = torch::where(valid, rows.to(dtype), 0);
  const auto hidden = at::_grouped_mm(x, gate_up.transpose(1, 2), ends);  // [M, 2I]
  const auto& act = experts.front()->activation_name();
  const auto product = experts.front()->recomputes_activation()
                           ? recomputed_grouped_gated_linear(hidden, down, ends, act)
                           : at::_grouped_mm(gated_activation(hidden, act), down.transpose(1, 2), ends);
  const auto out = torch::where(valid, product, 0);  // [M, H]
  return torch::dropout(out, experts.front()->dropout->options.p(), training);
}

}  // namespace moe::model
