#include "model/recomputed_activation.h"

#include <ATen/ops/_grouped_mm.h>
#include <torch/torch.h>

#include <optional>

#include "common/check.h"
#include "model/expert_stack.h"
#include "model/functional.h"

namespace moe::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// weights: {weight} as given, or (recast) the experts' float32 parts of down, stacked and cast to
// hidden's dtype in the forward and again in the backward (model/expert_stack.h).
at::Tensor weight_of(at::TensorList weights, bool recast, c10::ScalarType dtype) {
  return recast ? stack_as(weights, static_cast<int64_t>(weights.size()), dtype) : weights.front();
}

// product = act(gate) * up, then linear(product, weight) or, given group ends, the grouped product
// with weight [E, H, I]; saves hidden and the weights, not the product.
struct GatedLinear : torch::autograd::Function<GatedLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, at::TensorList weights, bool recast,
                            const std::optional<at::Tensor>& ends, const std::string& act) {
    std::vector<at::Tensor> saved{hidden};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["act"] = act;
    ctx->saved_data["recast"] = recast;
    if (ends) ctx->saved_data["ends"] = *ends;
    const auto weight = weight_of(weights, recast, hidden.scalar_type());
    const auto product = gated_activation(hidden, act);  // autograd is off inside forward: no graph
    return ends ? at::_grouped_mm(product, weight.transpose(1, 2), *ends) : at::linear(product, weight);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& hidden = saved[0];
    const std::vector<at::Tensor> weights(saved.begin() + 1, saved.end());
    const bool recast = ctx->saved_data["recast"].toBool();
    const auto weight = weight_of(weights, recast, hidden.scalar_type());
    const auto ends = ctx->saved_data.count("ends") > 0 ? ctx->saved_data["ends"].toTensor() : at::Tensor();
    const auto act = ctx->saved_data["act"].toStringRef();
    // The backward of the products as autograd runs it: linear folds the leading dimensions into
    // one mm; the weight's gradient as grad^T product, in the weight's own layout.
    const auto grad = ends.defined() ? grads[0] : grads[0].reshape({-1, grads[0].size(-1)});
    auto product_sizes = hidden.sizes().vec();
    product_sizes.back() /= 2;
    const auto grad_product = ends.defined() ? at::_grouped_mm(grad, weight, ends) : grad.mm(weight).view(product_sizes);
    const auto gated = gated_activation_backward(grad_product, hidden, act, /*with_product=*/true);
    const auto& product = gated.product;
    const auto grad_weight = ends.defined() ? at::_grouped_mm(grad.t(), product, ends)
                                            : grad.t().mm(product.reshape({-1, product.size(-1)}));
    variable_list out{gated.grad_hidden};
    if (recast) {
      for (auto& g : unstack_gradient(grad_weight, weights)) out.push_back(std::move(g));
    } else {
      out.push_back(grad_weight);
    }
    out.resize(out.size() + 3);  // recast, ends, act
    return out;
  }
};

}  // namespace

at::Tensor recomputed_gated_linear(const at::Tensor& hidden, const at::Tensor& weight, const std::string& act) {
  MOE_CHECK(hidden.size(-1) % 2 == 0 && weight.dim() == 2 && weight.size(1) * 2 == hidden.size(-1),
            "recomputed_gated_linear: hidden ", hidden.sizes(), " is not [..., 2 x the inputs of weight ",
            weight.sizes(), "]");
  return GatedLinear::apply(hidden, at::TensorList(weight), false, std::optional<at::Tensor>(), act);
}

at::Tensor recomputed_grouped_gated_linear(const at::Tensor& hidden, const at::Tensor& down, const at::Tensor& ends,
                                           const std::string& act) {
  MOE_CHECK(hidden.dim() == 2 && down.dim() == 3 && hidden.size(1) == 2 * down.size(2),
            "recomputed_grouped_gated_linear: hidden ", hidden.sizes(), " is not [rows, 2 x ", down.size(2), "]");
  MOE_CHECK(ends.defined(), "recomputed_grouped_gated_linear: no group ends");
  return GatedLinear::apply(hidden, at::TensorList(down), false, std::optional<at::Tensor>(ends), act);
}

at::Tensor recomputed_grouped_gated_linear_recast(const at::Tensor& hidden, const std::vector<at::Tensor>& down_parts,
                                                  const at::Tensor& ends, const std::string& act) {
  MOE_CHECK(!down_parts.empty() && hidden.dim() == 2 && hidden.size(1) == 2 * down_parts.front().size(1),
            "recomputed_grouped_gated_linear_recast: hidden ", hidden.sizes(), " is not [rows, 2 x the inputs of ",
            down_parts.size(), " down weights]");
  MOE_CHECK(ends.defined(), "recomputed_grouped_gated_linear_recast: no group ends");
  return GatedLinear::apply(hidden, at::TensorList(down_parts), true, std::optional<at::Tensor>(ends), act);
}

}  // namespace moe::model
