// The blockwise cross entropy (model/cross_entropy.h) against torch's cross_entropy in float64:
// loss and gradient, with ignored rows, for any number of blocks (one, several, a last partial one,
// one row each); bf16 logits against float32 math on the same values; the ignored-everything case;
// and the float32 memory it never holds.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "bench/step_proxies.h"
#include "model/cross_entropy.h"
#include "tests/support.h"

namespace moe::model {
namespace {

using test::all_close;

const bool kTracking = (bench::track_cpu_allocations(), true);
constexpr int64_t kIgnore = -100;

struct Case {
  torch::Tensor logits, targets;
  explicit Case(int64_t n, int64_t v, c10::ScalarType dtype) {
    torch::manual_seed(n * 31 + v);
    logits = (3 * torch::randn({n, v})).to(dtype);
    targets = torch::randint(v, {n});
    targets.index_put_({torch::arange(n) % 4 == 1}, kIgnore);  // every fourth row does not count
  }
};

std::pair<torch::Tensor, torch::Tensor> reference(const Case& c) {
  const auto x = c.logits.to(torch::kFloat64).clone().requires_grad_(true);
  const auto loss = torch::nn::functional::cross_entropy(
      x, c.targets, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnore));
  loss.backward();
  return {loss.detach(), x.grad()};
}

std::pair<torch::Tensor, torch::Tensor> ours(const Case& c, int64_t block_rows) {
  const auto x = c.logits.clone().requires_grad_(true);
  const auto loss = blockwise_cross_entropy(x, c.targets, kIgnore, block_rows);
  loss.backward();
  return {loss.detach(), x.grad()};
}

// float32 against float64: a log-sum-exp over 50 terms and a mean over up to 13 rows.
TEST(BlockwiseCrossEntropy, EqualsTorchsCrossEntropyForAnyBlocking) {
  const Case c(13, 50, torch::kFloat32);
  const auto [loss64, grad64] = reference(c);
  for (const int64_t block_rows : {0, 1, 4, 5, 13, 100}) {
    const auto [loss, grad] = ours(c, block_rows);
    EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(all_close(loss, loss64, 1e-6, 1e-6)) << "block_rows " << block_rows;
    EXPECT_TRUE(all_close(grad, grad64, 1e-8, 1e-5)) << "block_rows " << block_rows;
    EXPECT_TRUE(torch::equal(grad.index({torch::arange(13) % 4 == 1}), torch::zeros({3, 50})))
        << "ignored rows get no gradient";
  }
}

TEST(BlockwiseCrossEntropy, Float64StaysFloat64) {
  const Case c(9, 20, torch::kFloat64);
  const auto [loss64, grad64] = reference(c);
  const auto [loss, grad] = ours(c, 4);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(all_close(loss, loss64, 1e-13, 1e-13));
  EXPECT_TRUE(all_close(grad, grad64, 1e-15, 1e-12));
}

// bf16 logits: the loss computed in float32 from the same bf16 values (equal to float64 within
// float32 rounding); the gradient float32 math rounded once to bf16 (relative 2^-8).
TEST(BlockwiseCrossEntropy, Bf16LogitsComputeInFloat32) {
  const Case c(16, 64, torch::kBFloat16);
  const auto [loss64, grad64] = reference(c);
  const auto [loss, grad] = ours(c, 3);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  EXPECT_EQ(grad.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(all_close(loss, loss64, 1e-6, 1e-6));
  EXPECT_TRUE(all_close(grad, grad64, 1e-6, 4e-3));
}

TEST(BlockwiseCrossEntropy, NothingCountedIsNaNAsInTorch) {
  const auto logits = torch::randn({3, 5});
  const auto loss = blockwise_cross_entropy(logits, torch::full({3}, kIgnore, torch::kInt64), kIgnore);
  EXPECT_TRUE(std::isnan(loss.item<double>()));
}

TEST(BlockwiseCrossEntropy, NamesMismatchedShapes) {
  try {
    blockwise_cross_entropy(torch::randn({3, 5}), torch::zeros({4}, torch::kInt64), kIgnore);
    FAIL() << "4 targets for 3 rows were taken";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("[4]"), std::string::npos) << e.what();
  }
}

// bf16 logits [N, V]: forward and backward never hold a float32 [N, V] (torch's path holds three:
// the cast, log_softmax's output and its gradient). With blocks of N/8 rows the peak above the
// logits and their bf16 gradient is a few float32 blocks, far below one float32 [N, V] (4 N V bytes).
TEST(BlockwiseCrossEntropy, NeverHoldsTheFloat32LogitsWhole) {
  constexpr int64_t n = 256, v = 1024;
  const Case c(n, v, torch::kBFloat16);
  const auto x = c.logits.clone().requires_grad_(true);
  int64_t peak = 0;
  {
    bench::ProxyRecorder recorder(torch::kCPU);
    blockwise_cross_entropy(x, c.targets, kIgnore, n / 8).backward();
    peak = recorder.result().peak_bytes;
  }
  const int64_t bf16_grad = n * v * 2, float32_whole = n * v * 4;
  EXPECT_LT(peak - bf16_grad, float32_whole / 2) << "peak " << peak;
}

}  // namespace
}  // namespace moe::model
