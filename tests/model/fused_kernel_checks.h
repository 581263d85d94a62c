// What the tests of our fused kernels (model/fused_kernels.h) share: comparisons in units in the
// last place, the devices to run on, and running with the kernels off.
#pragma once
#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "model/fused_kernels.h"
#include "tests/support.h"

namespace moe::test::fused {

#define SKIP_WITHOUT_CUDA()                                          \
  if (!torch::cuda::is_available())                                  \
  GTEST_SKIP() << "no CUDA device visible: the CUDA path is tested " \
                  "on the GPU machine (README, GPU status)"

// Sign-magnitude bits mapped to a line on which neighbouring values are neighbouring integers.
inline torch::Tensor ordered_bits(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kFloat32) {
    const auto bits = t.contiguous().view(torch::kInt32).to(torch::kInt64);
    return torch::where(bits < 0, -(bits.bitwise_and(0x7fffffff)), bits);
  }
  const auto bits = t.contiguous().view(torch::kInt16).to(torch::kInt64);
  return torch::where(bits < 0, -(bits.bitwise_and(0x7fff)), bits);
}

struct UlpReport {
  int64_t max_ulps = 0;
  double exact_share = 1.0;
};

inline UlpReport compare_ulps(const torch::Tensor& actual, const torch::Tensor& expected) {
  EXPECT_EQ(actual.sizes(), expected.sizes());
  EXPECT_EQ(actual.scalar_type(), expected.scalar_type());
  if (actual.numel() == 0) return {};
  const auto distance = (ordered_bits(actual.cpu()) - ordered_bits(expected.cpu())).abs();
  return {distance.max().item<int64_t>(), distance.eq(0).to(torch::kFloat64).mean().item<double>()};
}

inline ::testing::AssertionResult within_one_ulp_mostly_exact(const torch::Tensor& actual,
                                                              const torch::Tensor& expected) {
  if (actual.scalar_type() == torch::kFloat32 && actual.numel() > 0) {
    // Float32 shows last-bit differences between implementations (the exponential, fused
    // multiply-adds), magnified where a result cancels (silu' near zero): within float32 rounding
    // of the scale.
    return all_close(actual, expected, 1e-6 * expected.abs().max().item<double>(), 1e-5);
  }
  const auto r = compare_ulps(actual, expected);
  if (r.max_ulps <= 1 && r.exact_share >= 0.99) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max " << r.max_ulps << " ulps apart, " << 100 * r.exact_share
                                       << "% bit for bit (want <= 1 ulp, >= 99%)";
}

// These tests let the CPU stand in for a GPU: the fused operators serve its bf16/fp16 tensors
// (registered once in every test program that includes this header).
struct CpuStandsInForGpu : ::testing::Environment {
  void SetUp() override { model::set_fused_kernels_on_cpu(true); }
};
inline ::testing::Environment* const kCpuStandsInForGpu = ::testing::AddGlobalTestEnvironment(new CpuStandsInForGpu);

// The CPU, and the GPU where one is visible.
inline std::vector<torch::Device> test_devices() {
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA, 0);
  return devices;
}

// Runs f with the fused kernels off, restoring the setting after.
template <typename F>
auto unfused(F f) {
  model::set_fused_kernels_enabled(false);
  struct Restore {
    ~Restore() { model::set_fused_kernels_enabled(true); }
  } restore;
  return f();
}

// How often the dispatcher ran operator `name` (e.g. "moe::combine") while f ran, on any thread
// (a GPU's backward runs on autograd's device thread):
// proof that a path took the fused operator.
template <typename F>
int64_t calls_of(const char* name, F f) {
  static std::atomic<int64_t> count{0};
  static const char* wanted = nullptr;
  count = 0;
  wanted = name;
  const auto handle = at::addGlobalCallback(
      at::RecordFunctionCallback([](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
        if (wanted != nullptr && std::strcmp(fn.name(), wanted) == 0) ++count;
        return nullptr;
      }));
  f();
  at::removeCallback(handle);
  wanted = nullptr;
  return count;
}

}  // namespace moe::test::fused
