// The sequence aux loss in one operator each way (model/fused_aux_loss.h) against MiniMind's formula
// in float64 (loss and the scores' gradient), on the CPU (the loop, standing in for a GPU) and on a
// GPU where one is visible; then the gate's sequence_aux_loss against the operators it replaces.
// Tolerances: float32 sums of up to 2.6e5 products (CUDA's per-thread partials and block sum):
// 1e-5 relative; the gradient is one product per element: 1e-6 relative.
#include "model/fused_aux_loss.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "model/moe_gate.h"
#include "tests/model/fused_kernel_checks.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;
using namespace moe::test::fused;

namespace {

struct Case {
  int64_t batch, seq, experts, top_k;
  std::string label() const {
    return "B=" + std::to_string(batch) + " T=" + std::to_string(seq) + " E=" + std::to_string(experts) +
           " k=" + std::to_string(top_k);
  }
};

const Case kCases[] = {{1, 1, 1, 1},     {2, 5, 4, 2},      {3, 64, 64, 6},
                       {4, 300, 256, 8}, {2, 257, 1024, 2}, {8, 1024, 8, 2}};

struct Routing {
  torch::Tensor scores;    // [B, T, E] float64, softmax rows
  torch::Tensor topk_idx;  // [B, T*k] int64, k distinct experts per token
};

Routing routing_of(const Case& c) {
  const auto scores = torch::randn({c.batch, c.seq, c.experts}, torch::kFloat64).softmax(-1);
  const auto idx = std::get<1>(scores.topk(c.top_k, -1));
  return {scores, idx.reshape({c.batch, c.seq * c.top_k})};
}

// MiniMind's seq_aux branch as its MoEGate writes it, in float64.
torch::Tensor minimind_sequence_aux(const torch::Tensor& scores, const torch::Tensor& idx, int64_t top_k,
                                    double alpha) {
  const auto b = scores.size(0), t = scores.size(1), e = scores.size(2);
  const auto ce = torch::zeros({b, e}, scores.options())
                      .scatter_add_(1, idx, torch::ones(idx.sizes(), scores.options()))
                      .div_(double(t * top_k) / double(e));
  return (ce * scores.mean(1)).sum(1).mean() * alpha;
}

}  // namespace

TEST(FusedAuxLoss, EqualsMiniMindsFormulaInFloat64OnEachDevice) {
  torch::manual_seed(17);
  constexpr double kAlpha = 0.1;
  for (const auto& device : test_devices()) {
    for (const auto& c : kCases) {
      const auto label = c.label() + " on " + device.str();
      const auto r = routing_of(c);
      const auto leaf = r.scores.to(torch::kFloat32).to(device).requires_grad_(true);
      const auto idx = r.topk_idx.to(device);
      ASSERT_TRUE(model::fused_sequence_aux_loss_serves(leaf, idx)) << label;
      torch::Tensor loss;
      EXPECT_EQ(
          calls_of("moe::sequence_aux_loss", [&] { loss = model::sequence_aux_loss(leaf, idx, c.top_k, kAlpha); }), 1)
          << label;
      const auto upstream = 1.5;
      (loss * upstream).backward();

      const auto ref_leaf = r.scores.clone().requires_grad_(true);
      const auto want = minimind_sequence_aux(ref_leaf, r.topk_idx, c.top_k, kAlpha);
      (want * upstream).backward();
      EXPECT_EQ(loss.scalar_type(), torch::kFloat32) << label;
      EXPECT_EQ(loss.dim(), 0) << label;
      EXPECT_NEAR(loss.item<double>(), want.item<double>(), 1e-5 * want.item<double>() + 1e-12) << label;
      EXPECT_TRUE(all_close(leaf.grad().cpu().to(torch::kFloat64), ref_leaf.grad(), 1e-12, 1e-6)) << label;
    }
  }
}

TEST(FusedAuxLoss, EqualsTheOperatorsOnTheCpu) {
  torch::manual_seed(19);
  const Case c{4, 96, 16, 2};
  const auto r = routing_of(c);
  const auto scores = r.scores.to(torch::kFloat32);
  auto run = [&] {
    const auto leaf = scores.clone().requires_grad_(true);
    const auto loss = model::sequence_aux_loss(leaf, r.topk_idx, c.top_k, 0.1);
    loss.backward();
    return std::make_pair(loss.detach(), leaf.grad());
  };
  const auto fused = run();
  const auto ops = unfused(run);
  EXPECT_NEAR(fused.first.item<double>(), ops.first.item<double>(), 1e-6 * ops.first.item<double>());
  EXPECT_TRUE(all_close(fused.second, ops.second, 1e-9, 1e-6));
}

TEST(FusedAuxLoss, ServesTheGatesShapesAndRefusesOthers) {
  const auto scores = torch::rand({2, 3, 4});
  const auto idx = torch::zeros({2, 6}, torch::kInt64);
  EXPECT_TRUE(model::fused_sequence_aux_loss_serves(scores, idx));
  EXPECT_FALSE(model::fused_sequence_aux_loss_serves(scores.to(torch::kFloat64), idx));  // float64: the operators
  EXPECT_FALSE(model::fused_sequence_aux_loss_serves(scores, idx.narrow(1, 0, 5)));      // not T*k
  EXPECT_FALSE(model::fused_sequence_aux_loss_serves(torch::rand({2, 3, 1025}), idx));   // past the counters
  EXPECT_FALSE(model::fused_sequence_aux_loss_serves(torch::rand({2, 0, 4}), torch::zeros({2, 0}, torch::kInt64)));
  EXPECT_FALSE(unfused([&] { return model::fused_sequence_aux_loss_serves(scores, idx); }));
  // Called anyway, the operator names what it refuses.
  test::expect_refusal(
      [&] {
        model::fused_sequence_aux_loss(scores, torch::full({2, 6}, 4, torch::kInt64), 1.0);
      },
      {"moe::sequence_aux_loss", "sequence 0 copy 0 names expert 4, not one of the 4"});
  test::expect_refusal([&] { model::fused_sequence_aux_loss(scores.to(torch::kFloat64), idx, 1.0); },
                       {"scores [2, 3, 4] Double are not float32 [B, T, E]"});
  test::expect_refusal([&] { model::fused_sequence_aux_loss(scores, idx.narrow(1, 0, 5), 1.0); },
                       {"topk_idx [2, 5]", "is not int64 [B, T*k] for scores [2, 3, 4]"});
}
