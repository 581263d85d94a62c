#include "model/recomputed_activation.h"

#include <ATen/ops/_grouped_mm.h>
#include <torch/torch.h>

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

// Writes the gradients of act(gate) * up into grad_gate and grad_up (views of one tensor in the
// grouped case) and returns the recomputed act(gate) * up.
at::Tensor gated_backward(const at::Tensor& grad_product, const at::Tensor& gate, const at::Tensor& up,
                          const std::string& name, at::Tensor& grad_gate, at::Tensor& grad_up) {
  const auto activated = activation(gate, name);
  activation_backward_out(grad_gate, grad_product * up, gate, name);
  at::mul_out(grad_up, grad_product, activated);
  return activated * up;
}

struct GatedLinear : torch::autograd::Function<GatedLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up,
                            const at::Tensor& weight, const std::string& act) {
    ctx->save_for_backward({gate, up, weight});
    ctx->saved_data["act"] = act;
    return at::linear(activation(gate, act) * up, weight);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &gate = saved[0], &up = saved[1], &weight = saved[2];
    const auto act = ctx->saved_data["act"].toStringRef();
    // linear folds leading dimensions into one matrix product; its backward is mm's on the fold.
    const auto grad = grads[0].reshape({-1, grads[0].size(-1)});
    const auto grad_product = grad.mm(weight).view(gate.sizes());
    auto grad_gate = at::empty_like(gate), grad_up = at::empty_like(up);
    const auto product = gated_backward(grad_product, gate, up, act, grad_gate, grad_up);
    // (product^T grad)^T computed as grad^T product: mm's backward for the transposed weight view.
    const auto grad_weight = grad.t().mm(product.reshape({-1, product.size(-1)}));
    return {grad_gate, grad_up, grad_weight, at::Tensor()};
  }
};

struct GroupedGatedLinear : torch::autograd::Function<GroupedGatedLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& down,
                            const at::Tensor& ends, const std::string& act) {
    ctx->save_for_backward({hidden, down, ends});
    ctx->saved_data["act"] = act;
    const auto i = hidden.size(-1) / 2;
    return at::_grouped_mm(activation(hidden.narrow(-1, 0, i), act) * hidden.narrow(-1, i, i), down.transpose(1, 2),
                           ends);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &hidden = saved[0], &down = saved[1], &ends = saved[2];
    const auto act = ctx->saved_data["act"].toStringRef();
    const auto i = hidden.size(-1) / 2;
    const auto& grad = grads[0];  // [M, H]
    const auto grad_product = at::_grouped_mm(grad, down, ends);  // [M, I]
    auto grad_hidden = at::empty_like(hidden, at::MemoryFormat::Contiguous);
    auto grad_gate = grad_hidden.narrow(-1, 0, i), grad_up = grad_hidden.narrow(-1, i, i);
    const auto product = gated_backward(grad_product, hidden.narrow(-1, 0, i), hidden.narrow(-1, i, i), act,
                                        grad_gate, grad_up);
    // Per expert grad_e^T product_e, [E, H, I]: down's own layout, no transposed copy.
    const auto grad_down = at::_grouped_mm(grad.t(), product, ends);
    return {grad_hidden, grad_down, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor recomputed_gated_linear(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& weight,
                                   const std::string& act) {
  MOE_CHECK(gate.sizes() == up.sizes(), "recomputed_gated_linear: gate ", gate.sizes(), " and up ", up.sizes(),
            " differ");
  MOE_CHECK(weight.dim() == 2 && weight.size(1) == gate.size(-1), "recomputed_gated_linear: weight ", weight.sizes(),
            " does not take inputs of ", gate.size(-1));
  return GatedLinear::apply(gate, up, weight, act);
}

at::Tensor recomputed_grouped_gated_linear(const at::Tensor& hidden, const at::Tensor& down, const at::Tensor& ends,
                                           const std::string& act) {
  MOE_CHECK(hidden.dim() == 2 && down.dim() == 3 && hidden.size(1) == 2 * down.size(2),
            "recomputed_grouped_gated_linear: hidden ", hidden.sizes(), " is not [rows, 2 x ", down.size(2), "]");
  return GroupedGatedLinear::apply(hidden, down, ends, act);
}

}  // namespace moe::model
