#include "trainer/peak_memory.h"

#include "common/resident_memory.h"

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace moe::trainer {

void reset_peak_memory(const torch::Device& device) {
#ifdef MOE_TORCH_CUDA
  if (device.is_cuda()) {
    // Released cached blocks first, so that the peak counts what the measured work holds.
    c10::cuda::CUDACachingAllocator::emptyCache();
    return c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
  }
#else
  (void)device;
#endif
  reset_peak_resident();
}

PeakMemory peak_memory(const torch::Device& device) {
#ifdef MOE_TORCH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return {stats.allocated_bytes[0].peak / double(1 << 30), stats.reserved_bytes[0].peak / double(1 << 30)};
  }
#else
  (void)device;
#endif
  const double gib = peak_resident_bytes() / double(1 << 30);
  return {gib, gib};
}

}  // namespace moe::trainer
