// The fused router (model/fused_route.h) against float64 (scores, the choice, the weights and the
// logits' gradient), on the CPU (the loop, standing in for a GPU) and on a GPU where one is visible;
// then inside the gate under bf16 autocast against the operators it replaces.
//
// Logits are distinct multiples of 1/8 per token (exact in bf16: no ties, so the choice is one
// answer). Tolerances: float32 rounding of a softmax over <= 64 experts (scores and weights 1e-6
// absolute, 1e-5 relative); the logits' gradient in float32 within 1e-5 of its largest value, in
// bf16 within its rounding (2^-8 relative plus 1e-4 of the largest).
#include "model/fused_route.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <tuple>

#include "model/moe_gate.h"
#include "tests/model/fused_kernel_checks.h"
#include "tests/support.h"
#include "trainer/device.h"

using namespace moe;
using moe::test::all_close;
using namespace moe::test::fused;

namespace {

struct Case {
  int64_t experts, top_k;
  bool sigmoid, renormalise, bias;
  double scale;
  std::string label() const {
    return "E=" + std::to_string(experts) + " k=" + std::to_string(top_k) + (sigmoid ? " sigmoid" : " softmax") +
           (renormalise ? " renormalised" : "") + (bias ? " biased" : "") + " scale " + std::to_string(scale);
  }
};

const Case kCases[] = {{4, 2, false, true, false, 1.0},   {16, 2, false, true, true, 1.0},
                       {64, 6, false, false, false, 2.5}, {8, 1, false, false, false, 1.0},
                       {16, 4, true, true, true, 2.5},    {40, 16, true, false, false, 1.0}};

constexpr int64_t kTokens = 53;

// [tokens, experts]: each row a permutation of distinct multiples of 1/8 around zero.
torch::Tensor distinct_logits(int64_t experts) {
  const auto ranks =
      torch::rand({kTokens, experts}, torch::kFloat64).argsort(1, /*descending=*/false).to(torch::kFloat64);
  return (ranks - experts / 2) * 0.125;
}

// The router's math in float64, as model/moe_gate.cpp's operators write it (indices best first).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> reference(const torch::Tensor& logits,
                                                                  const torch::Tensor& bias, const Case& c) {
  const auto scores = c.sigmoid ? logits.sigmoid() : logits.softmax(-1);
  const auto choice = bias.defined() ? scores.detach() + bias.to(torch::kFloat64) : scores.detach();
  const auto idx = std::get<1>(choice.topk(c.top_k, -1, /*largest=*/true, /*sorted=*/true));
  auto weight = scores.gather(1, idx);
  if (c.renormalise) weight = weight / (weight.sum(-1, true) + 1e-20);
  return {scores, idx, weight * c.scale};
}

struct Grads {
  torch::Tensor scores, weight;  // upstream gradients, float32
};

}  // namespace

TEST(FusedRoute, EqualsFloat64ForwardAndBackwardOnEachDevice) {
  torch::manual_seed(3);
  for (const auto& device : test_devices()) {
    for (const auto& c : kCases) {
      for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
        const auto label = c.label() + " " + std::string(c10::toString(dtype)) + " on " + device.str();
        const auto exact = distinct_logits(c.experts);
        const auto bias = c.bias ? (torch::randn({c.experts}) * 0.05).to(device) : torch::Tensor();
        const Grads up{torch::randn({kTokens, c.experts}).to(device), torch::randn({kTokens, c.top_k}).to(device)};

        const auto leaf = exact.to(dtype).to(device).requires_grad_(true);
        const auto fused = model::fused_route(leaf, bias, {c.top_k, c.sigmoid, c.renormalise, c.scale});
        ((fused.scores * up.scores).sum() + (fused.topk_weight * up.weight).sum()).backward();

        const auto ref_leaf = exact.clone().requires_grad_(true);
        const auto [scores, idx, weight] = reference(ref_leaf, bias.defined() ? bias.cpu() : bias, c);
        ((scores * up.scores.cpu().to(torch::kFloat64)).sum() + (weight * up.weight.cpu().to(torch::kFloat64)).sum())
            .backward();

        EXPECT_EQ(fused.scores.scalar_type(), torch::kFloat32) << label;
        EXPECT_TRUE(torch::equal(fused.topk_idx.cpu(), idx)) << label;
        EXPECT_TRUE(all_close(fused.scores.cpu().to(torch::kFloat64), scores.detach(), 1e-6, 1e-5)) << label;
        EXPECT_TRUE(all_close(fused.topk_weight.cpu().to(torch::kFloat64), weight.detach(), 1e-6, 1e-5)) << label;
        const auto grad = leaf.grad().cpu().to(torch::kFloat64), want = ref_leaf.grad();
        EXPECT_EQ(leaf.grad().scalar_type(), dtype) << label;
        const double largest = want.abs().max().item<double>();
        EXPECT_TRUE(dtype == torch::kFloat32 ? all_close(grad, want, 1e-5 * largest, 1e-5)
                                             : all_close(grad, want, 1e-4 * largest, 1.0 / 256))
            << label;
      }
    }
  }
}

// Where the scores feed nothing (no aux loss) only the weights' gradient comes back, and where
// the weights feed nothing only the scores': each alone equals float64.
TEST(FusedRoute, EitherGradientAloneEqualsFloat64) {
  torch::manual_seed(5);
  const Case c{16, 2, false, true, false, 1.0};
  for (const bool weights_only : {true, false}) {
    const auto exact = distinct_logits(c.experts);
    const auto leaf = exact.to(torch::kFloat32).requires_grad_(true);
    const auto fused = model::fused_route(leaf, {}, {c.top_k, c.sigmoid, c.renormalise, c.scale});
    const auto ref_leaf = exact.clone().requires_grad_(true);
    const auto [scores, idx, weight] = reference(ref_leaf, {}, c);
    const auto upstream = torch::randn(weights_only ? weight.sizes() : scores.sizes(), torch::kFloat64);
    (weights_only ? fused.topk_weight : fused.scores).backward(upstream.to(torch::kFloat32));
    (weights_only ? weight : scores).backward(upstream);
    EXPECT_TRUE(all_close(leaf.grad().to(torch::kFloat64), ref_leaf.grad(), 1e-6, 1e-5))
        << (weights_only ? "weights only" : "scores only");
  }
}

TEST(FusedRoute, OnAGpuEqualsTheCpuLoop) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(9);
  const auto cuda = torch::Device(torch::kCUDA, 0);
  for (const auto& c : kCases) {
    const auto logits = distinct_logits(c.experts).to(torch::kBFloat16);
    const auto bias = c.bias ? torch::randn({c.experts}) * 0.05 : torch::Tensor();
    const auto up = torch::randn({kTokens, c.top_k});
    auto run = [&](const torch::Device& d) {
      const auto leaf = logits.to(d).requires_grad_(true);
      const auto r =
          model::fused_route(leaf, bias.defined() ? bias.to(d) : bias, {c.top_k, c.sigmoid, c.renormalise, c.scale});
      (r.topk_weight * up.to(d)).sum().backward();
      return std::vector<torch::Tensor>{r.scores.cpu(), r.topk_idx.cpu(), r.topk_weight.cpu(), leaf.grad().cpu()};
    };
    const auto cpu = run(torch::kCPU), gpu = run(cuda);
    EXPECT_TRUE(torch::equal(gpu[1], cpu[1])) << c.label();
    EXPECT_TRUE(all_close(gpu[0], cpu[0], 1e-6, 1e-5)) << c.label();
    EXPECT_TRUE(all_close(gpu[2], cpu[2], 1e-6, 1e-5)) << c.label();
    EXPECT_TRUE(within_one_ulp_mostly_exact(gpu[3], cpu[3]) ||
                all_close(gpu[3].to(torch::kFloat64), cpu[3].to(torch::kFloat64), 1e-3, 1.0 / 128))
        << c.label();
  }
}

TEST(FusedRoute, ServesTheGatesShapesAndRefusesOthers) {
  const auto bf16 = torch::zeros({5, 8}, torch::kBFloat16);
  EXPECT_TRUE(model::fused_route_serves(bf16, 2));
  EXPECT_TRUE(model::fused_route_serves(bf16, 8));
  EXPECT_FALSE(model::fused_route_serves(bf16, 9));                                      // more choices than experts
  EXPECT_FALSE(model::fused_route_serves(torch::zeros({5, 32}, torch::kBFloat16), 17));  // past the kernel's 16
  EXPECT_FALSE(model::fused_route_serves(torch::zeros({5, 8}, torch::kFloat64), 2));
  EXPECT_FALSE(model::fused_route_serves(torch::zeros({5, 8}), 2));  // float32 on the CPU: ATen is faster there
  EXPECT_FALSE(unfused([&] { return model::fused_route_serves(bf16, 2); }));
  // Called anyway, the operator names what it refuses.
  test::expect_refusal(
      [&] {
        model::fused_route(torch::zeros({5, 32}, torch::kBFloat16), {}, {17});
      },
      {"moe::route", "top_k 17 is not within 1..min(32 experts, 16)"});
  test::expect_refusal([&] { model::fused_route(bf16, torch::zeros({3}), {2}); }, {"moe::route: bias [3]", "[8]"});
  test::expect_refusal(
      [&] {
        model::fused_route(torch::zeros({5, 8}, torch::kFloat64), {}, {2});
      },
      {"logits [5, 8] Double are not [N, E] of Float, BFloat16 or Half"});
}

// The gate under bf16 autocast on the CPU standing in for a GPU: one moe::route each way where the
// operators ran (softmax, top-k, gather, renormalisation), the same choice, and weights, aux loss
// and gradients within bf16 rounding (the CPU's autocast keeps the operators' softmax in bf16; the
// kernel's scores are float32, as CUDA's autocast keeps them).
TEST(FusedRoute, GateUnderAutocastEqualsTheOperators) {
  for (const bool sequence_aux : {true, false}) {
    auto cfg = test::moe_layer_config(64, 96, 8, 2, 0);
    cfg.seq_aux = sequence_aux;
    cfg.aux_loss_alpha = 0.1;
    torch::manual_seed(11);
    model::MoEGate gate(cfg);
    const auto x = torch::randn({3, 7, 64});
    auto route = [&](bool fused) {
      model::set_fused_kernels_enabled(fused);
      gate->zero_grad();
      const auto leaf = x.clone().requires_grad_(true);
      model::RoutingDecision r;
      const auto calls = calls_of("moe::route", [&] {
        trainer::AutocastScope autocast(true, torch::kCPU);
        r = gate(leaf);
      });
      EXPECT_EQ(calls, fused ? 1 : 0);
      // The choice as a set per token, by expert id (the operators' top-k is unsorted, the kernel's
      // best first), and an upstream gradient per (token, expert).
      const auto order = r.topk_idx.argsort(1, /*descending=*/false);
      const auto weight = r.topk_weight.gather(1, order).to(torch::kFloat32);
      const auto upstream = torch::linspace(-1, 1, weight.numel()).view(weight.sizes());
      const auto backwards = calls_of("moe::route_backward",
                                      [&] { ((weight * upstream).sum() + r.aux_loss.to(torch::kFloat32)).backward(); });
      EXPECT_EQ(backwards, fused ? 1 : 0);
      model::set_fused_kernels_enabled(true);
      return std::vector<torch::Tensor>{r.topk_idx.gather(1, order), weight.detach(), r.aux_loss.to(torch::kFloat32),
                                        leaf.grad(), gate->weight.grad()};
    };
    const auto fused = route(true), plain = route(false);
    // Float64 truth: the same gate and input in float64 without autocast (the operators' path).
    model::MoEGate exact(cfg);
    exact->weight.data().copy_(gate->weight.detach());
    exact->to(torch::kFloat64);
    const auto leaf = x.to(torch::kFloat64).requires_grad_(true);
    const auto r = exact(leaf);
    const auto order = r.topk_idx.argsort(1, /*descending=*/false);
    const auto weight = r.topk_weight.gather(1, order);
    ((weight * torch::linspace(-1, 1, weight.numel(), torch::kFloat64).view(weight.sizes())).sum() + r.aux_loss)
        .backward();
    const std::string label = sequence_aux ? "sequence aux loss" : "batch aux loss";
    EXPECT_TRUE(torch::equal(fused[0], plain[0])) << label;
    EXPECT_TRUE(torch::equal(fused[0], r.topk_idx.gather(1, order))) << label;
    EXPECT_TRUE(all_close(fused[1], plain[1], 0.0, 1.0 / 128)) << label;
    EXPECT_TRUE(all_close(fused[2], plain[2], 0.0, 1.0 / 128)) << label;
    // The gradients: within bf16 logits' rounding of float64, and no further from it than the
    // operators' (whose softmax and its backward the CPU's autocast runs in bf16).
    const std::vector<torch::Tensor> truth{leaf.grad(), exact->weight.grad()};
    for (size_t i = 0; i < truth.size(); ++i) {
      const auto fused_error = test::relative_error(fused[3 + i].to(torch::kFloat64), truth[i]);
      const auto plain_error = test::relative_error(plain[3 + i].to(torch::kFloat64), truth[i]);
      EXPECT_LT(fused_error, 2e-2) << label << ", gradient " << i;
      EXPECT_LE(fused_error, plain_error) << label << ", gradient " << i;
    }
  }
}
