#include "model/fused_kernels.h"

#include <atomic>

#include "common/check.h"

namespace moe::model {

namespace {
std::atomic<bool> enabled{true};
std::atomic<bool> on_cpu{false};
}  // namespace

void set_fused_kernels_enabled(bool on) { enabled = on; }
bool fused_kernels_enabled() { return enabled; }
void set_fused_kernels_on_cpu(bool on) { on_cpu = on; }
bool fused_kernels_on_cpu() { return on_cpu; }

bool reduced_precision(c10::ScalarType t) { return t == c10::kBFloat16 || t == c10::kHalf; }
bool fused_kernel_dtype(c10::ScalarType t) { return t == c10::kFloat || reduced_precision(t); }

bool fused_kernels_run_on(const at::Tensor& t) {
#ifdef MOE_TORCH_CUDA
  if (t.is_cuda()) return true;
#endif
  return t.is_cpu() && fused_kernels_on_cpu();
}

bool fused_kernels_take(const at::Tensor& t) {
  if (!fused_kernels_run_on(t)) return false;
  return t.is_cuda() ? fused_kernel_dtype(t.scalar_type()) : reduced_precision(t.scalar_type());
}

#ifdef MOE_TORCH_CUDA
kernels::ElementType element_type(c10::ScalarType t) {
  if (t == c10::kBFloat16) return kernels::ElementType::kBFloat16;
  if (t == c10::kHalf) return kernels::ElementType::kFloat16;
  MOE_CHECK(t == c10::kFloat, "no fused kernel takes ", t);
  return kernels::ElementType::kFloat32;
}

void check_launch(cudaError_t error, const char* kernel) {
  MOE_CHECK(error == cudaSuccess, "CUDA: launching ", kernel, " failed: ", cudaGetErrorString(error));
}
#endif

}  // namespace moe::model
