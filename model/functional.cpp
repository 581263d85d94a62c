#include "model/functional.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "common/check.h"
#include "model/fused_rotary.h"
#include "model/fused_swiglu.h"

namespace moe::model {

c10::ScalarType compute_dtype(c10::ScalarType dtype) {
  return dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

bool autocast_on(const at::Tensor& x) {
  return at::autocast::is_autocast_enabled(x.device().type()) && at::isFloatingType(x.scalar_type());
}

c10::ScalarType matmul_dtype(const at::Tensor& x) {
  return autocast_on(x) ? at::autocast::get_autocast_dtype(x.device().type()) : x.scalar_type();
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // ATen's fused kernel (one pass on CUDA) where the dtypes agree; it computes in float32 at least.
  if (x.scalar_type() == weight.scalar_type()) return at::rms_norm(x, {x.size(-1)}, weight, eps);
  const auto xf = x.to(compute_dtype(x.scalar_type()));
  const auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

RopeTables rope_tables(int64_t head_dim, int64_t max_positions, double theta, c10::ScalarType dtype) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto inv_freq = 1.0 / torch::pow(theta, torch::arange(0, head_dim, 2, f64) / static_cast<double>(head_dim));
  const auto angles = torch::outer(torch::arange(max_positions, f64), inv_freq);  // [P, D/2]
  const auto both_halves = torch::cat({angles, angles}, -1);                       // [P, D]
  const auto sin = angles.sin();
  return {both_halves.cos().to(dtype), torch::cat({-sin, sin}, -1).to(dtype)};
}

namespace {

// x * c + roll(x, D/2) * s * sign over the heads (c, s: [B, T, D]), in compute_dtype (the products
// promote a bfloat16 x to float32, as MiniMind's do with float32 tables, without a cast pass of
// their own), returned in x's dtype: one fused pass where it serves (model/fused_rotary.h).
at::Tensor rotate(const at::Tensor& x, const at::Tensor& c, const at::Tensor& s, double sign) {
  if (fused_rotary_serves(x, c)) return fused_rotary(x, c, s, sign);
  const auto c4 = c.unsqueeze(2), s4 = s.unsqueeze(2);  // broadcast over heads
  return torch::addcmul(x * c4, x.roll(x.size(-1) / 2, -1), s4, sign).to(x.scalar_type());
}

// The rotation's backward is the rotation by the opposite angle (roll by D/2 is its own inverse, and
// it turns signed_sin into -signed_sin): the same three passes, where autograd's would be seven.
struct Rotary : torch::autograd::Function<Rotary> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& c,
                            const at::Tensor& s) {
    ctx->save_for_backward({c, s});
    return rotate(x, c, s, 1.0);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {rotate(grads[0], saved[0], saved[1], -1.0), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin) {
  const auto dtype = compute_dtype(x.scalar_type());
  return Rotary::apply(x, cos.to(dtype), signed_sin.to(dtype));
}

at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  const auto b = x.size(0), t = x.size(1), h = x.size(2), d = x.size(3);
  return x.unsqueeze(3).expand({b, t, h, n_rep, d}).reshape({b, t, h * n_rep, d});
}

at::Tensor activation(const at::Tensor& x, const std::string& name) {
  if (name == "silu") return torch::silu(x);
  if (name == "gelu") return torch::gelu(x);
  if (name == "relu") return torch::relu(x);
  MOE_CHECK(false, "hidden_act '", name, "' is not one of silu, gelu, relu");
  return {};
}

namespace {

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

struct GatedActivation : torch::autograd::Function<GatedActivation> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const std::string& name) {
    ctx->save_for_backward({hidden});
    ctx->saved_data["name"] = name;
    if (fused_swiglu_serves(hidden, name)) return fused_swiglu(hidden);
    const auto i = hidden.size(-1) / 2;
    return activation(hidden.narrow(-1, 0, i), name) * hidden.narrow(-1, i, i);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto hidden = ctx->get_saved_variables()[0];
    return {gated_activation_backward(grads[0], hidden, ctx->saved_data["name"].toStringRef(), false).grad_hidden,
            at::Tensor()};
  }
};

}  // namespace

at::Tensor gated_activation(const at::Tensor& hidden, const std::string& name) {
  MOE_CHECK(hidden.size(-1) % 2 == 0, "gated_activation: the last dimension ", hidden.size(-1), " is not [gate | up]");
  return GatedActivation::apply(hidden, name);
}

GatedActivationGrad gated_activation_backward(const at::Tensor& grad, const at::Tensor& hidden, const std::string& name,
                                              bool with_product) {
  GatedActivationGrad out;
  if (fused_swiglu_serves(hidden, name) && grad.scalar_type() == hidden.scalar_type()) {
    out.grad_hidden = fused_swiglu_backward(grad, hidden, with_product ? &out.product : nullptr);
    return out;
  }
  const auto i = hidden.size(-1) / 2;
  const auto gate = hidden.narrow(-1, 0, i), up = hidden.narrow(-1, i, i);
  const auto activated = activation(gate, name);
  out.grad_hidden = at::empty_like(hidden, at::MemoryFormat::Contiguous);
  auto grad_gate = out.grad_hidden.narrow(-1, 0, i), grad_up = out.grad_hidden.narrow(-1, i, i);
  activation_backward_out(grad_gate, grad * up, gate, name);
  at::mul_out(grad_up, grad, activated);
  if (with_product) out.product = activated * up;
  return out;
}

at::Tensor count_ids(const at::Tensor& ids, int64_t n) {
  const auto flat = ids.reshape({-1});
  return torch::zeros({n}, flat.options().dtype(torch::kInt64)).scatter_add_(0, flat, torch::ones_like(flat));
}

}  // namespace moe::model
