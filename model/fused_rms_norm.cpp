#include "model/fused_rms_norm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "common/check.h"
#include "model/fused_kernels.h"
#include "model/kernels/rms_norm_math.h"

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/kernels/rms_norm_kernels.h"
#endif

namespace moe::model {

namespace {

void check_norm(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  MOE_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat, op, ": x ", x.sizes(), " ", x.scalar_type(),
            " is not float32 [..., dim]");
  MOE_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1) && weight.scalar_type() == at::kFloat &&
                weight.device() == x.device(),
            op, ": weight ", weight.sizes(), " ", weight.scalar_type(), " on ", weight.device(), " is not float32 [",
            x.size(-1), "] on ", x.device());
}

void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* what) {
  MOE_CHECK(t.sizes() == x.sizes() && fused_kernel_dtype(t.scalar_type()) && t.device() == x.device(), op, ": ", what,
            " ", t.sizes(), " ", t.scalar_type(), " on ", t.device(), " does not match x ", x.sizes(), " on ",
            x.device());
}

int64_t rows_of(const at::Tensor& x) { return x.size(-1) == 0 ? 0 : x.numel() / x.size(-1); }

// The operands both devices' implementations take: checked, contiguous, the
// outputs allocated.
struct ForwardOperands {
  at::Tensor x, delta, weight, out, sum,
      rstd;  // delta, sum: defined where the norm adds first
  int64_t rows, dim;
};

ForwardOperands forward_operands(const at::Tensor& x, const std::optional<at::Tensor>& delta, const at::Tensor& weight,
                                 c10::ScalarType out_dtype) {
  check_norm(x, weight, "moe::rms_norm");
  MOE_CHECK(fused_kernel_dtype(out_dtype), "moe::rms_norm: out_dtype ", out_dtype,
            " is not one of Float, BFloat16, Half");
  ForwardOperands o{x.contiguous(), {}, weight.contiguous(), {}, {}, {}, rows_of(x), x.size(-1)};
  if (delta && delta->defined()) {
    check_like_x(*delta, x, "moe::rms_norm", "delta");
    o.delta = delta->contiguous();
    o.sum = at::empty_like(o.x);
  }
  o.out = at::empty(o.x.sizes(), o.x.options().dtype(out_dtype));
  o.rstd = at::empty({o.rows}, o.x.options());
  return o;
}

struct BackwardOperands {
  at::Tensor grad, grad_sum, input, weight, rstd, grad_input, grad_delta, weight_partials;
  int64_t rows, dim;
};

BackwardOperands backward_operands(const at::Tensor& grad, const std::optional<at::Tensor>& grad_sum,
                                   const at::Tensor& input, const at::Tensor& weight, const at::Tensor& rstd,
                                   std::optional<c10::ScalarType> delta_dtype) {
  const char* op = "moe::rms_norm_backward";
  check_norm(input, weight, op);
  check_like_x(grad, input, op, "gradient");
  const auto rows = rows_of(input);
  MOE_CHECK(rstd.numel() == rows && rstd.scalar_type() == at::kFloat && rstd.device() == input.device(), op, ": rstd ",
            rstd.sizes(), " ", rstd.scalar_type(), " is not float32 [", rows, "]");
  BackwardOperands o{
      grad.contiguous(), {}, input.contiguous(), weight.contiguous(), rstd.contiguous(), {}, {}, {}, rows,
      input.size(-1)};
  if (grad_sum && grad_sum->defined()) {
    check_like_x(*grad_sum, input, op, "the sum's gradient");
    MOE_CHECK(grad_sum->scalar_type() == at::kFloat, op, ": the sum's gradient is ", grad_sum->scalar_type(),
              ", not float32");
    o.grad_sum = grad_sum->contiguous();
  }
  o.grad_input = at::empty_like(o.input);
  if (delta_dtype && *delta_dtype != at::kFloat) {
    MOE_CHECK(fused_kernel_dtype(*delta_dtype), op, ": delta_dtype ", *delta_dtype, " is not one of BFloat16, Half");
    o.grad_delta = at::empty(o.input.sizes(), o.input.options().dtype(*delta_dtype));
  }
  o.weight_partials = at::empty({kernels::rms_weight_grad_chunks(rows), o.dim}, o.input.options());
  return o;
}

// ---- CPU: the kernels' element math, row by row (what the proxies and the
// tests run where the CPU stands in for a GPU). ----

int64_t grain_for(int64_t dim) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, dim)); }  // ~16384 a task

template <typename O, typename D>
void rms_norm_rows_cpu(const ForwardOperands& o, float eps) {
  const float *x = o.x.const_data_ptr<float>(), *weight = o.weight.const_data_ptr<float>();
  const D* delta = data_or_null<D>(o.delta);
  float* sum = mutable_data_or_null<float>(o.sum);
  O* out = o.out.mutable_data_ptr<O>();
  float* rstd = o.rstd.mutable_data_ptr<float>();
  const int64_t dim = o.dim;
  at::parallel_for(0, o.rows, grain_for(dim), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t base = r * dim;
      const float* in = x + base;
      if (delta != nullptr) {
        for (int64_t j = 0; j < dim; ++j) sum[base + j] = x[base + j] + float(delta[base + j]);
        in = sum + base;
      }
      float squares = 0.f;
      for (int64_t j = 0; j < dim; ++j) squares += in[j] * in[j];
      rstd[r] = kernels::rms_inverse(squares, dim, eps);
      for (int64_t j = 0; j < dim; ++j)
        out[base + j] = static_cast<O>(kernels::rms_norm_element(in[j], rstd[r], weight[j]));
    }
  });
}

template <typename G, typename D>
void rms_norm_backward_rows_cpu(const BackwardOperands& o) {
  const G* grad = o.grad.const_data_ptr<G>();
  const float *grad_sum = data_or_null<float>(o.grad_sum), *input = o.input.const_data_ptr<float>();
  const float *weight = o.weight.const_data_ptr<float>(), *rstd = o.rstd.const_data_ptr<float>();
  float* grad_input = o.grad_input.mutable_data_ptr<float>();
  D* grad_delta = mutable_data_or_null<D>(o.grad_delta);
  const int64_t dim = o.dim, rows = o.rows;
  at::parallel_for(0, rows, grain_for(dim), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t base = r * dim;
      float dot = 0.f;
      for (int64_t j = 0; j < dim; ++j) dot += weight[j] * float(grad[base + j]) * input[base + j];
      const float correction = kernels::rms_grad_correction(dot, rstd[r], dim);
      for (int64_t j = 0; j < dim; ++j) {
        float d =
            kernels::rms_norm_grad_element(float(grad[base + j]), input[base + j], weight[j], rstd[r], correction);
        if (grad_sum != nullptr) d += grad_sum[base + j];
        grad_input[base + j] = d;
        if (grad_delta != nullptr) grad_delta[base + j] = static_cast<D>(d);
      }
    }
  });
  float* partials = o.weight_partials.mutable_data_ptr<float>();
  const int64_t chunk_rows = kernels::kRmsWeightGradRowsPerChunk;
  at::parallel_for(0, kernels::rms_weight_grad_chunks(rows), 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      float* sums = partials + chunk * dim;
      std::fill(sums, sums + dim, 0.f);
      for (int64_t r = chunk * chunk_rows; r < std::min(rows, (chunk + 1) * chunk_rows); ++r) {
        for (int64_t j = 0; j < dim; ++j) sums[j] += float(grad[r * dim + j]) * (input[r * dim + j] * rstd[r]);
      }
    }
  });
}

// The dtype the optional delta's loops take (float where absent).
c10::ScalarType delta_type_of(const at::Tensor& delta) { return delta.defined() ? delta.scalar_type() : at::kFloat; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const std::optional<at::Tensor>& delta,
                                                            const at::Tensor& weight, double eps,
                                                            c10::ScalarType out_dtype) {
  const auto o = forward_operands(x, delta, weight, out_dtype);
  for_cpu_element_type(out_dtype, [&](auto out_tag) {
    for_cpu_element_type(delta_type_of(o.delta), [&](auto delta_tag) {
      rms_norm_rows_cpu<decltype(out_tag), decltype(delta_tag)>(o, float(eps));
    });
  });
  return {o.out, o.sum, o.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad,
                                                                     const std::optional<at::Tensor>& grad_sum,
                                                                     const at::Tensor& input, const at::Tensor& weight,
                                                                     const at::Tensor& rstd,
                                                                     std::optional<c10::ScalarType> delta_dtype) {
  const auto o = backward_operands(grad, grad_sum, input, weight, rstd, delta_dtype);
  for_cpu_element_type(o.grad.scalar_type(), [&](auto grad_tag) {
    for_cpu_element_type(delta_type_of(o.grad_delta), [&](auto delta_tag) {
      rms_norm_backward_rows_cpu<decltype(grad_tag), decltype(delta_tag)>(o);
    });
  });
  return {o.grad_input, o.grad_delta, o.weight_partials};
}

// ---- CUDA: model/kernels/rms_norm_kernels.cu on the current stream (captured
// by CUDA graphs). ----
#ifdef MOE_TORCH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_cuda(const at::Tensor& x,
                                                             const std::optional<at::Tensor>& delta,
                                                             const at::Tensor& weight, double eps,
                                                             c10::ScalarType out_dtype) {
  const auto o = forward_operands(x, delta, weight, out_dtype);
  const c10::cuda::CUDAGuard device(o.x.device());
  const kernels::RmsNormForward p{o.x.const_data_ptr<float>(),
                                  o.delta.defined() ? o.delta.const_data_ptr() : nullptr,
                                  element_type(delta_type_of(o.delta)),
                                  o.weight.const_data_ptr<float>(),
                                  float(eps),
                                  o.out.mutable_data_ptr(),
                                  element_type(out_dtype),
                                  mutable_data_or_null<float>(o.sum),
                                  o.rstd.mutable_data_ptr<float>(),
                                  o.rows,
                                  o.dim};
  check_launch(kernels::launch_rms_norm_forward(p, c10::cuda::getCurrentCUDAStream()), "rms_norm_forward_kernel");
  return {o.out, o.sum, o.rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_backward_cuda(const at::Tensor& grad,
                                                                      const std::optional<at::Tensor>& grad_sum,
                                                                      const at::Tensor& input, const at::Tensor& weight,
                                                                      const at::Tensor& rstd,
                                                                      std::optional<c10::ScalarType> delta_dtype) {
  const auto o = backward_operands(grad, grad_sum, input, weight, rstd, delta_dtype);
  const c10::cuda::CUDAGuard device(o.input.device());
  const kernels::RmsNormBackward p{o.grad.const_data_ptr(),
                                   element_type(o.grad.scalar_type()),
                                   data_or_null<float>(o.grad_sum),
                                   o.input.const_data_ptr<float>(),
                                   o.weight.const_data_ptr<float>(),
                                   o.rstd.const_data_ptr<float>(),
                                   o.grad_input.mutable_data_ptr<float>(),
                                   o.grad_delta.defined() ? o.grad_delta.mutable_data_ptr() : nullptr,
                                   element_type(delta_type_of(o.grad_delta)),
                                   o.weight_partials.mutable_data_ptr<float>(),
                                   o.rows,
                                   o.dim};
  check_launch(kernels::launch_rms_norm_backward(p, c10::cuda::getCurrentCUDAStream()), "rms_norm_backward_kernels");
  return {o.grad_input, o.grad_delta, o.weight_partials};
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                                             const at::Tensor& weight, double eps,
                                                             c10::ScalarType out_dtype) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moe::rms_norm", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                                const at::Tensor&, double, c10::ScalarType)>();
  return op.call(x, optional_operand(delta), weight, eps, out_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_rms_norm_backward(const at::Tensor& grad,
                                                                      const at::Tensor& grad_sum,
                                                                      const at::Tensor& input, const at::Tensor& weight,
                                                                      const at::Tensor& rstd,
                                                                      std::optional<c10::ScalarType> delta_dtype) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::rms_norm_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, std::optional<c10::ScalarType>)>();
  return op.call(grad, optional_operand(grad_sum), input, weight, rstd,
                 delta_dtype);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves the norm's input (x, or the sum where it added), the weight and each
// row's rstd, as ATen's norm does; the dtype of the delta it added (-1: none).
void save(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& rstd,
          int64_t delta_dtype) {
  ctx->save_for_backward({input, weight, rstd});
  ctx->saved_data["delta_dtype"] = delta_dtype;
}

// {the input's gradient, delta's (undefined where none was added), the
// weight's}.
variable_list backward_of(AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& grad_sum) {
  const auto saved = ctx->get_saved_variables();
  const auto code = ctx->saved_data["delta_dtype"].toInt();
  const auto delta_dtype = code >= 0 ? std::optional(static_cast<c10::ScalarType>(code)) : std::nullopt;
  auto [grad_input, grad_delta, weight_partials] =
      call_rms_norm_backward(grad, grad_sum, saved[0], saved[1], saved[2], delta_dtype);
  // A float32 delta takes the sum's gradient itself, as ATen's add hands it to
  // both terms.
  if (delta_dtype && !grad_delta.defined()) grad_delta = grad_input;
  return {grad_input, grad_delta, weight_partials.sum(0)};
}

// The norm alone: its output in out_dtype.
struct RmsNormAs : torch::autograd::Function<RmsNormAs> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps,
                            c10::ScalarType out_dtype) {
    auto [out, sum, rstd] = call_rms_norm(x, at::Tensor(), weight, eps, out_dtype);
    save(ctx, x, weight, rstd, -1);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = backward_of(ctx, grads[0], at::Tensor());
    return {g[0], g[2], at::Tensor(), at::Tensor()};
  }
};

// The residual's add, then the norm: outputs {the normalised sum in out_dtype,
// the sum (float32, the residual stream onwards)}.
struct AddRmsNormAs : torch::autograd::Function<AddRmsNormAs> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& delta,
                               const at::Tensor& weight, double eps, c10::ScalarType out_dtype) {
    auto [out, sum, rstd] = call_rms_norm(x, delta, weight, eps, out_dtype);
    save(ctx, sum, weight, rstd, static_cast<int64_t>(delta.scalar_type()));
    return {out, sum};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = backward_of(ctx, grads[0], grads[1]);
    return {g[0], g[1], g[2], at::Tensor(), at::Tensor()};
  }
};

}  // namespace

// Operators of the dispatcher, so that the profiler and the proxies
// (bench/step_proxies.h) see one call each, as they see ATen's norm. Not
// pointwise: each row is a reduction.
TORCH_LIBRARY_FRAGMENT(moe, m) {
  m.def(
      "rms_norm(Tensor x, Tensor? delta, Tensor weight, float eps, "
      "ScalarType out_dtype) -> (Tensor, Tensor, Tensor)");
  m.def(
      "rms_norm_backward(Tensor grad, Tensor? grad_sum, Tensor input, Tensor "
      "weight, Tensor rstd, "
      "ScalarType? delta_dtype) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(moe, CPU, m) {
  m.impl("rms_norm", TORCH_FN(rms_norm_cpu));
  m.impl("rms_norm_backward", TORCH_FN(rms_norm_backward_cpu));
}

#ifdef MOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(moe, CUDA, m) {
  m.impl("rms_norm", TORCH_FN(rms_norm_cuda));
  m.impl("rms_norm_backward", TORCH_FN(rms_norm_backward_cuda));
}
#endif

bool fused_rms_norm_serves(const at::Tensor& x, const at::Tensor& weight, c10::ScalarType out_dtype) {
  if (!fused_kernels_enabled() || !reduced_precision(out_dtype) || x.dim() < 1 || x.scalar_type() != at::kFloat ||
      weight.dim() != 1 || weight.scalar_type() != at::kFloat || weight.device() != x.device()) {
    return false;
  }
  return fused_kernels_run_on(x);
}

bool fused_add_rms_norm_serves(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight,
                               c10::ScalarType out_dtype) {
  return fused_rms_norm_serves(x, weight, out_dtype) && delta.sizes() == x.sizes() &&
         fused_kernel_dtype(delta.scalar_type()) && delta.device() == x.device();
}

at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, c10::ScalarType out_dtype) {
  return RmsNormAs::apply(x, weight, eps, out_dtype);
}

SumAndNormed fused_add_rms_norm(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& weight, double eps,
                                c10::ScalarType out_dtype) {
  MOE_CHECK(delta.defined(), "fused_add_rms_norm: no delta to add");
  auto outputs = AddRmsNormAs::apply(x, delta, weight, eps, out_dtype);
  return {outputs[1], outputs[0]};
}

}  // namespace moe::model
