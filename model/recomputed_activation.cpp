#include "model/recomputed_activation.h"

#include <ATen/ops/_grouped_mm.h>
#include <torch/torch.h>

#include <optional>

#include "common/check.h"
#include "model/functional.h"

namespace moe::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// grad_input of activation(x) into `out`, with the operator autograd's node for it calls.
void activation_backward_out(at::Tensor& out, const at::Tensor& grad, const at::Tensor& x, const std::string& name) {
  if (name == "silu") {
    at::silu_backward_out(out, grad, x);
  } else if (name == "gelu") {
    at::gelu_backward_out(out, grad, x);
  } else {
    MOE_CHECK(name == "relu", "hidden_act '", name, "' is not one of silu, gelu, relu");
    at::threshold_backward_out(out, grad, x, 0);  // relu(x) > 0 exactly where x > 0
  }
}

at::Tensor gated_product(const at::Tensor& hidden, const std::string& act) {
  const auto i = hidden.size(-1) / 2;
  return activation(hidden.narrow(-1, 0, i), act) * hidden.narrow(-1, i, i);
}

// The gradient of act(gate) * up with respect to hidden = [gate | up], both halves written in place
// (no zero-filled slice gradients), and the recomputed act(gate) * up.
std::pair<at::Tensor, at::Tensor> gated_backward(const at::Tensor& grad_product, const at::Tensor& hidden,
                                                 const std::string& act) {
  const auto i = hidden.size(-1) / 2;
  const auto gate = hidden.narrow(-1, 0, i), up = hidden.narrow(-1, i, i);
  auto grad_hidden = at::empty_like(hidden, at::MemoryFormat::Contiguous);
  auto grad_gate = grad_hidden.narrow(-1, 0, i), grad_up = grad_hidden.narrow(-1, i, i);
  const auto activated = activation(gate, act);
  activation_backward_out(grad_gate, grad_product * up, gate, act);
  at::mul_out(grad_up, grad_product, activated);
  return {grad_hidden, activated * up};
}

// product = act(gate) * up, then linear(product, weight) or, given group ends, the grouped product
// with weight [E, H, I]; saves hidden and weight, not the product.
struct GatedLinear : torch::autograd::Function<GatedLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const std::optional<at::Tensor>& ends, const std::string& act) {
    ctx->save_for_backward({hidden, weight});
    ctx->saved_data["act"] = act;
    if (ends) ctx->saved_data["ends"] = *ends;
    const auto product = gated_product(hidden, act);
    return ends ? at::_grouped_mm(product, weight.transpose(1, 2), *ends) : at::linear(product, weight);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &hidden = saved[0], &weight = saved[1];
    const auto ends = ctx->saved_data.count("ends") > 0 ? ctx->saved_data["ends"].toTensor() : at::Tensor();
    const auto act = ctx->saved_data["act"].toStringRef();
    // The backward of the products as autograd runs it: linear folds the leading dimensions into
    // one mm; the weight's gradient as grad^T product, in the weight's own layout.
    const auto grad = ends.defined() ? grads[0] : grads[0].reshape({-1, grads[0].size(-1)});
    auto product_sizes = hidden.sizes().vec();
    product_sizes.back() /= 2;
    const auto grad_product = ends.defined() ? at::_grouped_mm(grad, weight, ends) : grad.mm(weight).view(product_sizes);
    const auto [grad_hidden, product] = gated_backward(grad_product, hidden, act);
    const auto grad_weight = ends.defined() ? at::_grouped_mm(grad.t(), product, ends)
                                            : grad.t().mm(product.reshape({-1, product.size(-1)}));
    return {grad_hidden, grad_weight, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor recomputed_gated_linear(const at::Tensor& hidden, const at::Tensor& weight, const std::string& act) {
  MOE_CHECK(hidden.size(-1) % 2 == 0 && weight.dim() == 2 && weight.size(1) * 2 == hidden.size(-1),
            "recomputed_gated_linear: hidden ", hidden.sizes(), " is not [..., 2 x the inputs of weight ",
            weight.sizes(), "]");
  return GatedLinear::apply(hidden, weight, std::optional<at::Tensor>(), act);
}

at::Tensor recomputed_grouped_gated_linear(const at::Tensor& hidden, const at::Tensor& down, const at::Tensor& ends,
                                           const std::string& act) {
  MOE_CHECK(hidden.dim() == 2 && down.dim() == 3 && hidden.size(1) == 2 * down.size(2),
            "recomputed_grouped_gated_linear: hidden ", hidden.sizes(), " is not [rows, 2 x ", down.size(2), "]");
  MOE_CHECK(ends.defined(), "recomputed_grouped_gated_linear: no group ends");
  return GatedLinear::apply(hidden, down, std::optional<at::Tensor>(ends), act);
}

}  // namespace moe::model
