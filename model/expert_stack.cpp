#include "model/expert_stack.h"

#include <ATen/ops/_grouped_mm.h>
#include <torch/torch.h>

#include "common/check.h"
#include "model/fused_projection.h"

namespace moe::model {

at::Tensor stack_as(at::TensorList parts, int64_t experts, c10::ScalarType dtype) {
  MOE_CHECK(!parts.empty() && experts > 0 && parts.front().dim() == 2, "stack_as: ", parts.size(), " parts for ",
            experts, " experts");
  return cast_concat(parts, dtype).view({experts, -1, parts.front().size(1)});
}

std::vector<at::Tensor> unstack_gradient(const at::Tensor& grad, at::TensorList parts) {
  return split_cast_back(grad.reshape({-1, grad.size(-1)}), parts.front().scalar_type(), rows_of(parts));
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RecastGroupedLinear : torch::autograd::Function<RecastGroupedLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList parts, int64_t experts,
                            const at::Tensor& ends) {
    std::vector<at::Tensor> saved{x};
    saved.insert(saved.end(), parts.begin(), parts.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["experts"] = experts;
    ctx->saved_data["ends"] = ends;
    return at::_grouped_mm(x, stack_as(parts, experts, x.scalar_type()).transpose(1, 2), ends);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const std::vector<at::Tensor> parts(saved.begin() + 1, saved.end());
    const auto ends = ctx->saved_data["ends"].toTensor();
    const auto stack = stack_as(parts, ctx->saved_data["experts"].toInt(),
                                x.scalar_type());  // [E, N, K]
    const auto& grad = grads[0];                   // [M, N]
    // As autograd runs _grouped_mm's backward: the input's gradient through the
    // stack, the stack's as grad^T x per group.
    variable_list out{at::_grouped_mm(grad, stack, ends)};
    for (auto& g : unstack_gradient(at::_grouped_mm(grad.t(), x, ends), parts)) out.push_back(std::move(g));
    out.resize(out.size() + 2);  // experts, ends
    return out;
  }
};

}  // namespace

at::Tensor recast_grouped_linear(const at::Tensor& x, const std::vector<at::Tensor>& parts, int64_t experts,
                                 const at::Tensor& ends) {
  MOE_CHECK(x.dim() == 2 && !parts.empty() && parts.front().dim() == 2 && x.size(1) == parts.front().size(1),
            "recast_grouped_linear: x ", x.sizes(), " does not match parts of ", parts.front().sizes());
  return RecastGroupedLinear::apply(x, at::TensorList(parts), experts, ends);
}

}  // namespace moe::model
