#include "model/fused_rotary.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/check.h"
#include "model/fused_kernels.h"
#include "model/kernels/rotary_math.h"

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/kernels/rotary_kernels.h"
#endif

namespace moe::model {

namespace {

void check_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin) {
  MOE_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "moe::rotary: x ", x.sizes(), " is not [B, T, heads, D] with D even");
  MOE_CHECK(fused_kernel_dtype(x.scalar_type()), "moe::rotary: ", x.scalar_type(),
            " is not one of Float, BFloat16, Half");
  for (const auto* table : {&cos, &signed_sin}) {
    MOE_CHECK(table->scalar_type() == at::kFloat && table->dim() == 3 && table->size(0) == x.size(0) &&
                  table->size(1) == x.size(1) && table->size(2) == x.size(3) && table->device() == x.device(),
              "moe::rotary: table ", table->sizes(), " ", table->scalar_type(), " on ", table->device(),
              " is not float32 [B, T, D] for x ", x.sizes(), " on ", x.device());
  }
}

// The operands both devices' implementations take: checked; x with its last dimension contiguous
// (what the kernels index), the tables contiguous, an empty contiguous output.
struct Operands {
  at::Tensor x, cos, signed_sin, out;
};

Operands operands(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin) {
  check_rotary(x, cos, signed_sin);
  const auto in = x.stride(3) == 1 ? x : x.contiguous();
  return {in, cos.contiguous(), signed_sin.contiguous(), at::empty(in.sizes(), in.options())};
}

template <typename T>
void rotary_rows_cpu(const at::Tensor& x, const float* cos, const float* signed_sin, float sign, T* out) {
  const int64_t b_n = x.size(0), t_n = x.size(1), h_n = x.size(2), d = x.size(3), half = d / 2;
  const T* base = x.const_data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, d));  // ~16384 elements a task
  at::parallel_for(0, b_n * t_n * h_n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t h = row % h_n, bt = row / h_n, t = bt % t_n, b = bt / t_n;
      const T* in = base + b * x.stride(0) + t * x.stride(1) + h * x.stride(2);
      const float* c = cos + bt * d;
      const float* s = signed_sin + bt * d;
      T* o = out + row * d;
      for (int64_t j = 0; j < half; ++j) {
        const float first = float(in[j]), second = float(in[j + half]);
        o[j] = static_cast<T>(kernels::rotary_element(first, second, c[j], s[j], sign));
        o[j + half] = static_cast<T>(kernels::rotary_element(second, first, c[j + half], s[j + half], sign));
      }
    }
  });
}

at::Tensor rotary_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin, double sign) {
  const auto o = operands(x, cos, signed_sin);
  for_cpu_element_type(o.x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    rotary_rows_cpu<T>(o.x, o.cos.const_data_ptr<float>(), o.signed_sin.const_data_ptr<float>(), float(sign),
                       o.out.mutable_data_ptr<T>());
  });
  return o.out;
}

#ifdef MOE_TORCH_CUDA
at::Tensor rotary_cuda(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin, double sign) {
  const auto o = operands(x, cos, signed_sin);
  const c10::cuda::CUDAGuard device(o.x.device());
  const kernels::RotaryShape shape{o.x.size(0),   o.x.size(1),   o.x.size(2),  o.x.size(3),
                                   o.x.stride(0), o.x.stride(1), o.x.stride(2)};
  check_launch(kernels::launch_rotary(element_type(o.x.scalar_type()), o.x.const_data_ptr(),
                                      o.cos.const_data_ptr<float>(), o.signed_sin.const_data_ptr<float>(), float(sign),
                                      o.out.mutable_data_ptr(), shape, c10::cuda::getCurrentCUDAStream()),
               "rotary_kernel");
  return o.out;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(moe, m) {
  m.def("rotary(Tensor x, Tensor cos, Tensor signed_sin, float sign) -> Tensor", {at::Tag::pointwise});
}

TORCH_LIBRARY_IMPL(moe, CPU, m) { m.impl("rotary", TORCH_FN(rotary_cpu)); }

#ifdef MOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(moe, CUDA, m) { m.impl("rotary", TORCH_FN(rotary_cuda)); }
#endif

bool fused_rotary_serves(const at::Tensor& x, const at::Tensor& cos) {
  if (!fused_kernels_enabled() || x.dim() != 4 || x.size(3) % 2 != 0 || cos.dim() != 3 ||
      cos.scalar_type() != at::kFloat || cos.size(0) != x.size(0) || cos.size(1) != x.size(1) ||
      cos.size(2) != x.size(3) || cos.device() != x.device()) {
    return false;  // broadcast tables, say: ATen's operators
  }
  return fused_kernels_take(x);
}

at::Tensor fused_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin, double sign) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::rotary", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(x, cos, signed_sin, sign);
}

}  // namespace moe::model
