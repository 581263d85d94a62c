#include "trainer/checkpoint/rng_state.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cstring>
#include <mutex>

#include "common/check.h"

#ifdef MOE_TORCH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

namespace moe::trainer {

namespace {

std::string state_of(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  const auto state = generator.get_state().contiguous();
  return std::string(reinterpret_cast<const char*>(state.data_ptr<uint8_t>()), size_t(state.numel()));
}

void set_state(at::Generator generator, const std::string& bytes, const std::string& what) {
  auto state = torch::empty({int64_t(bytes.size())}, torch::kUInt8);
  std::memcpy(state.data_ptr(), bytes.data(), bytes.size());
  std::lock_guard<std::mutex> lock(generator.mutex());
  try {
    generator.set_state(state);
  } catch (const c10::Error& e) {
    throw InvalidArgument(what + ": a saved random generator state of " + std::to_string(bytes.size()) +
                          " bytes is not valid here: " + e.what_without_backtrace());
  }
}

}  // namespace

RankRng capture_rng(const torch::Device& device) {
  RankRng rng;
  rng.cpu = state_of(at::detail::getDefaultCPUGenerator());
#ifdef MOE_TORCH_CUDA
  if (device.is_cuda()) rng.cuda = state_of(at::cuda::detail::getDefaultCUDAGenerator(device.index()));
#else
  (void)device;
#endif
  return rng;
}

void restore_rng(const RankRng& rng, const torch::Device& device, const std::string& what) {
  if (!rng.cpu.empty()) set_state(at::detail::getDefaultCPUGenerator(), rng.cpu, what);
#ifdef MOE_TORCH_CUDA
  if (device.is_cuda() && !rng.cuda.empty()) {
    set_state(at::cuda::detail::getDefaultCUDAGenerator(device.index()), rng.cuda, what);
  }
#else
  (void)device;
#endif
}

}  // namespace moe::trainer
