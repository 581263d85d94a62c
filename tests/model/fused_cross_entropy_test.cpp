// The cross entropy's rows as one operator each way (model/fused_cross_entropy.h) against torch's
// cross_entropy in float64, on the CPU (the loop, standing in for a GPU) and on a GPU where one is
// visible: loss and gradient for float32, bf16 and fp16 logits, ignored rows, a vocabulary of one,
// logits of large magnitude and -inf entries (a masked vocabulary); through blockwise_cross_entropy
// (which takes it where it serves) against its operators; refusals.
// Tolerances: the loss a float32 log-sum-exp and mean (1e-6 relative); the gradient float32
// rounding (1e-5 relative, 1e-8 absolute; plus the rounding of x - lse in float32, ~|x| x 2^-24
// relative), or one rounding to bf16 / fp16 (2^-8 / 2^-11 relative plus 1e-6 absolute).
#include "model/fused_cross_entropy.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>

#include "model/cross_entropy.h"
#include "tests/model/fused_kernel_checks.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;
using namespace moe::test::fused;

namespace {

constexpr int64_t kIgnore = -100;

struct Case {
  int64_t rows, vocab;
  double scale;  // logits ~ scale * N(0, 1)
  bool masked;   // a tenth of the columns -inf (never a target)
  std::string label() const {
    return std::to_string(rows) + "x" + std::to_string(vocab) + " scale " + std::to_string(scale) +
           (masked ? " masked" : "");
  }
};

const Case kCases[] = {
    {13, 50, 3.0, false}, {64, 6400, 3.0, false}, {3, 1, 1.0, false}, {300, 257, 1e3, false}, {40, 100, 5.0, true}};

struct Inputs {
  torch::Tensor logits, targets;  // float64 logits (exact in every dtype tested after rounding)
};

Inputs inputs_of(const Case& c, torch::ScalarType dtype) {
  auto logits = (c.scale * torch::randn({c.rows, c.vocab}, torch::kFloat64)).to(dtype).to(torch::kFloat64);
  auto targets = torch::randint(c.masked ? c.vocab - c.vocab / 10 : c.vocab, {c.rows}, torch::kInt64);
  targets.index_put_({torch::arange(c.rows) % 4 == 1}, kIgnore);  // every fourth row does not count
  if (c.masked) logits.narrow(1, c.vocab - c.vocab / 10, c.vocab / 10).fill_(-std::numeric_limits<double>::infinity());
  return {logits, targets};
}

std::pair<torch::Tensor, torch::Tensor> torch_float64(const Inputs& in) {
  const auto x = in.logits.clone().requires_grad_(true);
  const auto loss = torch::nn::functional::cross_entropy(
      x, in.targets, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnore));
  loss.backward();
  return {loss.detach(), x.grad()};
}

double gradient_tolerance(torch::ScalarType dtype) {
  return dtype == torch::kFloat32 ? 1e-5 : (dtype == torch::kBFloat16 ? 1.0 / 256 : 1.0 / 2048);
}

}  // namespace

TEST(FusedCrossEntropy, EqualsTorchsCrossEntropyInFloat64OnEachDevice) {
  torch::manual_seed(29);
  for (const auto& device : test_devices()) {
    for (const auto& c : kCases) {
      for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kHalf}) {
        if (dtype == torch::kHalf && c.scale > 100) continue;  // beyond fp16's range
        const auto label = c.label() + " " + std::string(c10::toString(dtype)) + " on " + device.str();
        const auto in = inputs_of(c, dtype);
        const auto [loss64, grad64] = torch_float64(in);
        const auto leaf = in.logits.to(dtype).to(device).requires_grad_(true);
        const auto targets = in.targets.to(device);
        const auto rows = model::fused_cross_entropy_rows(leaf, targets, kIgnore);
        const auto loss = rows.sum() / (targets != kIgnore).sum().to(rows.scalar_type());
        loss.backward();
        EXPECT_EQ(rows.scalar_type(), torch::kFloat32) << label;
        EXPECT_TRUE(torch::equal(rows.cpu().index({torch::arange(c.rows) % 4 == 1}), torch::zeros({(c.rows + 2) / 4})))
            << label << ": ignored rows count nothing";
        EXPECT_TRUE(all_close(loss.cpu().to(torch::kFloat64), loss64, 1e-6, 1e-6)) << label;
        const auto grad = leaf.grad().cpu();
        EXPECT_EQ(grad.scalar_type(), dtype) << label;
        // exp(x - lse) in float32 carries x - lse's rounding, ~|x| x 2^-24 relative: up to 4e-4 at scale 1e3.
        const double tolerance = gradient_tolerance(dtype) + 4e-7 * c.scale;
        EXPECT_TRUE(all_close(grad.to(torch::kFloat64), grad64, dtype == torch::kFloat32 ? 1e-8 : 1e-6, tolerance))
            << label;
      }
    }
  }
}

// blockwise_cross_entropy takes the operator (once each way) where it serves, and gives what its
// float32 blocks of operators give.
TEST(FusedCrossEntropy, BlockwiseCrossEntropyTakesItAndEqualsItsOperators) {
  torch::manual_seed(31);
  for (const auto& device : test_devices()) {
    const Case c{96, 700, 4.0, false};
    const auto in = inputs_of(c, torch::kBFloat16);
    auto run = [&] {
      const auto leaf = in.logits.to(torch::kBFloat16).to(device).requires_grad_(true);
      const auto loss = model::blockwise_cross_entropy(leaf, in.targets.to(device), kIgnore);
      loss.backward();
      return std::make_pair(loss.detach().cpu(), leaf.grad().cpu());
    };
    std::pair<torch::Tensor, torch::Tensor> fused;
    EXPECT_EQ(calls_of("moe::cross_entropy_rows", [&] { fused = run(); }), 1) << device;
    const auto ops = unfused(run);
    EXPECT_TRUE(all_close(fused.first, ops.first, 1e-6, 1e-6)) << device;
    EXPECT_TRUE(within_one_ulp_mostly_exact(fused.second, ops.second)) << device;
  }
}

TEST(FusedCrossEntropy, NothingCountedIsNaNWithoutGradient) {
  for (const auto& device : test_devices()) {
    const auto leaf = torch::randn({3, 5}, torch::kBFloat16).to(device).requires_grad_(true);
    const auto loss =
        model::blockwise_cross_entropy(leaf, torch::full({3}, kIgnore, torch::kInt64).to(device), kIgnore);
    EXPECT_TRUE(std::isnan(loss.item<double>())) << device;
  }
}

TEST(FusedCrossEntropy, ServesAndRefuses) {
  const auto bf16 = torch::zeros({4, 8}, torch::kBFloat16);
  const auto targets = torch::zeros({4}, torch::kInt64);
  EXPECT_TRUE(model::fused_cross_entropy_serves(bf16, targets));
  EXPECT_FALSE(model::fused_cross_entropy_serves(torch::zeros({4, 8}), targets));  // float32 CPU: ATen's blocks
  EXPECT_FALSE(model::fused_cross_entropy_serves(bf16, targets.to(torch::kInt32)));
  EXPECT_FALSE(model::fused_cross_entropy_serves(bf16, torch::zeros({5}, torch::kInt64)));
  EXPECT_FALSE(unfused([&] { return model::fused_cross_entropy_serves(bf16, targets); }));
  test::expect_refusal(
      [&] {
        model::fused_cross_entropy_rows(bf16, torch::tensor({0, 8, 1, 1}), kIgnore);
      },
      {"moe::cross_entropy_rows: row 1 has target 8, outside the vocabulary of 8"});
  test::expect_refusal([&] { model::fused_cross_entropy_rows(bf16, torch::zeros({3}, torch::kInt64), kIgnore); },
                       {"moe::cross_entropy_rows: targets [3] Long are not int64 [4]"});
}
