// Where a rank computes, and in which precision: the device choice (each rank takes GPU
// node-local rank % GPUs) and the bf16 autocast scope of the forward pass. Shared by the trainer
// and the benchmarks.
#pragma once
#include <torch/types.h>

#include <string>

namespace moe::trainer {

/// wanted: auto (a GPU where one is visible), cuda or cpu. Throws when cuda is asked and none exists.
torch::Device choose_device(const std::string& wanted);

/// bf16 autocast for CUDA (or `device`: the CPU for moe-bench-model's proxies of a GPU step) while
/// alive (enabled = true); weights, gradients and optimiser state stay fp32. Clears autocast's
/// weight-cast cache on exit.
class AutocastScope {
 public:
  explicit AutocastScope(bool enabled, c10::DeviceType device = c10::kCUDA);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  c10::DeviceType device_;
};

}  // namespace moe::trainer
