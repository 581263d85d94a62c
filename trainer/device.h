// Where a rank computes, and in which precision: the device choice (each rank takes GPU
// node-local rank % GPUs) and the bf16 autocast scope of the forward pass. Shared by the trainer
// and the benchmarks.
#pragma once
#include <torch/types.h>

#include <string>

namespace moe::trainer {

/// wanted: auto (a GPU where one is visible), cuda or cpu. Throws when cuda is asked and none exists.
torch::Device choose_device(const std::string& wanted);

/// bf16 autocast for CUDA while alive (enabled = true); weights, gradients and optimiser state stay
/// fp32. Clears autocast's weight-cast cache on exit.
class AutocastScope {
 public:
  explicit AutocastScope(bool enabled);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
};

}  // namespace moe::trainer
