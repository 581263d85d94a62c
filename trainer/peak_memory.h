// Peak memory of this process on a device, for benchmarks: the CUDA caching allocator's
// statistics on a GPU, the peak resident set (VmHWM) on the CPU.
#pragma once
#include <torch/types.h>

namespace moe::trainer {

struct PeakMemory {
  double allocated_gib = -1;  // what tensors held at most (PyTorch's max_memory_allocated)
  double reserved_gib = -1;   // what the allocator took from the device at most (includes a CUDA graph's pool)
};

/// Starts a new measurement: on a GPU releases cached blocks and resets the allocator's peaks; on
/// the CPU returns freed heap memory to the system (malloc_trim) and resets VmHWM to the current
/// resident set (writes 5 to /proc/self/clear_refs).
void reset_peak_memory(const torch::Device& device);

/// The peak since the last reset (CPU: both fields are the peak resident set).
PeakMemory peak_memory(const torch::Device& device);

}  // namespace moe::trainer
