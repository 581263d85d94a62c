#include "trainer/peak_memory.h"

#include <malloc.h>

#include <fstream>
#include <string>

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
  // Freed heap memory goes back to the system first: otherwise new allocations reuse it without
  // raising the resident set, and the peak would miss them.
  malloc_trim(0);
  std::ofstream("/proc/self/clear_refs") << "5";
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
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) {
      const double gib = std::stod(line.substr(6)) / double(1 << 20);
      return {gib, gib};
    }
  }
  return {};
}

}  // namespace moe::trainer
