#include "trainer/device.h"

#include <ATen/autocast_mode.h>
#include <torch/cuda.h>

#include "common/check.h"
#include "parallel/mpi_communicator.h"

namespace moe::trainer {

torch::Device choose_device(const std::string& wanted) {
  MOE_CHECK(wanted == "auto" || wanted == "cuda" || wanted == "cpu", "device '", wanted,
            "' is not one of auto, cuda, cpu");
  const bool cuda = wanted == "cuda" || (wanted == "auto" && torch::cuda::is_available());
  if (!cuda) return torch::kCPU;
  MOE_CHECK(torch::cuda::is_available(), "device cuda: no CUDA device is visible (or this LibTorch has no CUDA)");
  const int index = parallel::node_local_rank() % static_cast<int>(torch::cuda::device_count());
  return {torch::kCUDA, static_cast<c10::DeviceIndex>(index)};
}

AutocastScope::AutocastScope(bool enabled, c10::DeviceType device) : enabled_(enabled), device_(device) {
  if (!enabled_) return;
  at::autocast::set_autocast_dtype(device_, at::kBFloat16);
  at::autocast::set_autocast_enabled(device_, true);
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  at::autocast::set_autocast_enabled(device_, false);
  at::autocast::clear_cache();
}

}  // namespace moe::trainer
