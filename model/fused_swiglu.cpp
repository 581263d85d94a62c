#include "model/fused_swiglu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "common/check.h"
#include "model/fused_kernels.h"
#include "model/kernels/swiglu_math.h"

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/kernels/swiglu_kernels.h"
#endif

namespace moe::model {

namespace {

int64_t rows_of(const at::Tensor& t, int64_t row_length) { return row_length == 0 ? 0 : t.numel() / row_length; }

at::Tensor half_width_like(const at::Tensor& hidden) {
  auto sizes = hidden.sizes().vec();
  sizes.back() /= 2;
  return at::empty(sizes, hidden.options());
}

void check_hidden(const at::Tensor& hidden, const char* op) {
  MOE_CHECK(hidden.dim() >= 1 && hidden.size(-1) % 2 == 0, op, ": hidden ", hidden.sizes(),
            " is not [..., gate | up] (an even last dimension)");
  MOE_CHECK(fused_kernel_dtype(hidden.scalar_type()), op, ": ", hidden.scalar_type(),
            " is not one of Float, BFloat16, Half");
}

void check_grad(const at::Tensor& grad, const at::Tensor& hidden) {
  MOE_CHECK(grad.numel() * 2 == hidden.numel() && grad.size(-1) * 2 == hidden.size(-1) &&
                grad.scalar_type() == hidden.scalar_type() && grad.device() == hidden.device(),
            "fused_swiglu_backward: gradient ", grad.sizes(), " ", grad.scalar_type(), " on ", grad.device(),
            " does not match hidden ", hidden.sizes(), " ", hidden.scalar_type(), " on ", hidden.device());
}

// The operands both devices' implementations take: checked, contiguous, the outputs allocated.
struct ForwardOperands {
  at::Tensor hidden, out;  // [..., 2I] -> [..., I]
  int64_t rows, inter;
};

ForwardOperands forward_operands(const at::Tensor& hidden_any) {
  check_hidden(hidden_any, "moe::fused_swiglu");
  ForwardOperands o{hidden_any.contiguous(), at::Tensor(), 0, hidden_any.size(-1) / 2};
  o.out = half_width_like(o.hidden);
  o.rows = rows_of(o.out, o.inter);
  return o;
}

struct BackwardOperands {
  at::Tensor grad, hidden, grad_hidden, product;  // product: defined only when asked for
  int64_t rows, inter;
};

BackwardOperands backward_operands(const at::Tensor& grad_any, const at::Tensor& hidden_any, bool with_product) {
  check_hidden(hidden_any, "moe::fused_swiglu_backward");
  check_grad(grad_any, hidden_any);
  BackwardOperands o{grad_any.contiguous(), hidden_any.contiguous(), at::Tensor(), at::Tensor(), 0, grad_any.size(-1)};
  o.grad_hidden = at::empty_like(o.hidden, at::MemoryFormat::Contiguous);
  if (with_product) o.product = at::empty_like(o.grad, at::MemoryFormat::Contiguous);
  o.rows = rows_of(o.grad, o.inter);
  return o;
}

// ---- CPU: the kernels' element math, row by row (what the proxies and the tests run where the CPU
// stands in for a GPU). ----

template <typename T>
void swiglu_rows_cpu(const T* hidden, T* out, int64_t rows, int64_t inter) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, inter));  // ~32768 elements a task
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = hidden + r * 2 * inter;
      for (int64_t c = 0; c < inter; ++c) {
        out[r * inter + c] =
            static_cast<T>(kernels::swiglu_product(float(gate[c]), float(gate[inter + c]), StoredAs<T>{}));
      }
    }
  });
}

template <typename T>
void swiglu_backward_rows_cpu(const T* grad, const T* hidden, T* grad_hidden, T* product, int64_t rows, int64_t inter) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, inter));  // ~32768 elements a task
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t c = 0; c < inter; ++c) {
        const int64_t h = r * 2 * inter + c, o = r * inter + c;
        const auto d =
            kernels::swiglu_backward(float(grad[o]), float(hidden[h]), float(hidden[h + inter]), StoredAs<T>{});
        grad_hidden[h] = static_cast<T>(d.grad_gate);
        grad_hidden[h + inter] = static_cast<T>(d.grad_up);
        if (product != nullptr) product[o] = static_cast<T>(d.product);
      }
    }
  });
}

at::Tensor swiglu_cpu(const at::Tensor& hidden) {
  const auto o = forward_operands(hidden);
  for_cpu_element_type(o.hidden.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    swiglu_rows_cpu(o.hidden.const_data_ptr<T>(), o.out.mutable_data_ptr<T>(), o.rows, o.inter);
  });
  return o.out;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward_cpu(const at::Tensor& grad, const at::Tensor& hidden,
                                                       bool with_product) {
  const auto o = backward_operands(grad, hidden, with_product);
  for_cpu_element_type(o.hidden.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    swiglu_backward_rows_cpu(o.grad.const_data_ptr<T>(), o.hidden.const_data_ptr<T>(),
                             o.grad_hidden.mutable_data_ptr<T>(),
                             with_product ? o.product.mutable_data_ptr<T>() : nullptr, o.rows, o.inter);
  });
  return {o.grad_hidden, o.product};
}

// ---- CUDA: model/kernels/swiglu_kernels.cu on the current stream (captured by CUDA graphs). ----
#ifdef MOE_TORCH_CUDA
at::Tensor swiglu_cuda(const at::Tensor& hidden) {
  const auto o = forward_operands(hidden);
  const c10::cuda::CUDAGuard device(o.hidden.device());
  check_launch(
      kernels::launch_swiglu_forward(element_type(o.hidden.scalar_type()), o.hidden.const_data_ptr(),
                                     o.out.mutable_data_ptr(), o.rows, o.inter, c10::cuda::getCurrentCUDAStream()),
      "swiglu_forward_kernel");
  return o.out;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward_cuda(const at::Tensor& grad, const at::Tensor& hidden,
                                                        bool with_product) {
  const auto o = backward_operands(grad, hidden, with_product);
  const c10::cuda::CUDAGuard device(o.hidden.device());
  check_launch(kernels::launch_swiglu_backward(element_type(o.hidden.scalar_type()), o.grad.const_data_ptr(),
                                               o.hidden.const_data_ptr(), o.grad_hidden.mutable_data_ptr(),
                                               with_product ? o.product.mutable_data_ptr() : nullptr, o.rows, o.inter,
                                               c10::cuda::getCurrentCUDAStream()),
               "swiglu_backward_kernel");
  return {o.grad_hidden, o.product};
}
#endif

}  // namespace

// Operators of the dispatcher, so that the profiler and the proxies (bench/step_proxies.h) see one
// pointwise call each, as they see ATen's.
TORCH_LIBRARY_FRAGMENT(moe, m) {
  m.def("fused_swiglu(Tensor hidden) -> Tensor", {at::Tag::pointwise});
  m.def("fused_swiglu_backward(Tensor grad, Tensor hidden, bool with_product) -> (Tensor, Tensor)",
        {at::Tag::pointwise});
}

TORCH_LIBRARY_IMPL(moe, CPU, m) {
  m.impl("fused_swiglu", TORCH_FN(swiglu_cpu));
  m.impl("fused_swiglu_backward", TORCH_FN(swiglu_backward_cpu));
}

#ifdef MOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(moe, CUDA, m) {
  m.impl("fused_swiglu", TORCH_FN(swiglu_cuda));
  m.impl("fused_swiglu_backward", TORCH_FN(swiglu_backward_cuda));
}
#endif

bool fused_swiglu_serves(const at::Tensor& hidden, const std::string& name) {
  if (!fused_kernels_enabled() || name != "silu" || hidden.dim() < 1 || hidden.size(-1) % 2 != 0) return false;
  return fused_kernels_take(hidden);
}

at::Tensor fused_swiglu(const at::Tensor& hidden) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("moe::fused_swiglu", "").typed<at::Tensor(const at::Tensor&)>();
  return op.call(hidden);
}

at::Tensor fused_swiglu_backward(const at::Tensor& grad, const at::Tensor& hidden, at::Tensor* product) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::fused_swiglu_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool)>();
  auto [grad_hidden, recomputed] = op.call(grad, hidden, product != nullptr);
  if (product != nullptr) *product = std::move(recomputed);
  return grad_hidden;
}

}  // namespace moe::model
