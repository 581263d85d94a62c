// What our fused kernels share (model/fused_swiglu.h, fused_rotary.h, fused_combine.h,
// fused_rms_norm.h, fused_route.h, fused_grouping.h, fused_aux_loss.h, fused_cross_entropy.h): the
// switch that turns them all off, the dtypes they take, their optional operands, and, in CUDA
// builds, the launch check. Each is a dispatcher operator (namespace moe::; the elementwise ones
// pointwise-tagged), so that the profiler and the proxies see one call as they see ATen's, with a
// CUDA kernel (model/kernels/) and a CPU loop over the same math.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <optional>

#ifdef MOE_TORCH_CUDA
#include <cuda_runtime_api.h>

#include "model/kernels/element_type.h"
#endif

namespace moe::model {

/// On by default; off, the model runs ATen's operators everywhere instead (to compare:
/// moe-bench-model --unfused-kernels).
void set_fused_kernels_enabled(bool on);
bool fused_kernels_enabled();

/// Whether the fused operators also serve CPU tensors (bfloat16 and float16 only): off by default,
/// since on the CPU their loops are slower than ATen's vectorised operators (SwiGLU: 3x); on where
/// the CPU stands in for a GPU (moe-bench-model --proxies and --kernels, the tests).
void set_fused_kernels_on_cpu(bool on);
bool fused_kernels_on_cpu();

/// bfloat16 or float16; with float32, the dtypes the kernels take.
bool reduced_precision(c10::ScalarType t);
bool fused_kernel_dtype(c10::ScalarType t);

/// Whether the fused kernels run where t lives: on CUDA (in CUDA builds), or on the CPU where it
/// stands in for a GPU (fused_kernels_on_cpu).
bool fused_kernels_run_on(const at::Tensor& t);
/// And take its dtype there: Float, BFloat16 or Half on CUDA; BFloat16 or Half on the CPU (in
/// float32 ATen's vectorised operators are faster there). The elementwise operators' test.
bool fused_kernels_take(const at::Tensor& t);

/// The CPU loops' rounding: a float stored as T (c10::BFloat16, c10::Half, float) and read back, as
/// an ATen operator's intermediate tensor of that dtype rounds it (to nearest even).
template <typename T>
struct StoredAs {
  float operator()(float x) const { return static_cast<float>(static_cast<T>(x)); }
};

/// f(T{}) for the CPU loops' element type of `t` (c10::BFloat16, c10::Half, else float): their
/// dtype switch.
template <typename F>
void for_cpu_element_type(c10::ScalarType t, F f) {
  if (t == c10::kBFloat16) return f(c10::BFloat16());
  if (t == c10::kHalf) return f(c10::Half());
  return f(float());
}

/// An optional operand's data for the kernels and loops: null where t is undefined (absent).
template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
template <typename T>
T* mutable_data_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

/// t as an operator's optional operand (`Tensor?` in its schema): none where undefined.
inline std::optional<at::Tensor> optional_operand(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

#ifdef MOE_TORCH_CUDA
kernels::ElementType element_type(c10::ScalarType t);
/// Throws naming the kernel and CUDA's reason where a launch failed.
void check_launch(cudaError_t error, const char* kernel);
#endif

}  // namespace moe::model
