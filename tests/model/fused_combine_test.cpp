// The fused MoE combine (model/fused_combine.h) against the operators it replaces on the same
// device (the gather back to slot order, the product with the weights, the sum over the slots, the
// cast) and against float64; forward and backward; on the CPU (the element loop, standing in for a
// GPU) and on a GPU where one is visible; then inside the MoE layer under bf16 autocast.
//
// Tolerances: outputs and the experts' gradient at most 1 unit in the last place of the experts'
// dtype and at least 99% bit for bit (the kernels round where the operators store; float32 within
// its rounding). The weights' gradient sums over the hidden size in another order than ATen's
// reduction: within the rounding of that sum (bf16: 4e-3 of the largest plus 8e-3 relative; float32:
// 1e-5). Against float64: the products' rounding relative to the largest term (they may cancel).
#include "model/fused_combine.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/copy_permutation.h"
#include "model/moe_feed_forward.h"
#include "tests/model/fused_kernel_checks.h"
#include "tests/support.h"
#include "trainer/device.h"

using namespace moe;
using moe::test::all_close;
using namespace moe::test::fused;

namespace {

constexpr int64_t kTokens = 37, kSlots = 2, kHidden = 96;

struct Inputs {
  torch::Tensor expert_out, position, copy_order, weights;
};

Inputs sample(torch::ScalarType dtype, const torch::Device& device) {
  const auto copies = kTokens * kSlots;
  const auto order = torch::randperm(copies, torch::kInt64);
  return {torch::randn({copies, kHidden}, torch::kFloat64).to(dtype).to(device),
          model::inverse_permutation(order).to(device), order.to(device),
          torch::softmax(torch::randn({kTokens, kSlots}), -1).to(device)};
}

// What model/moe_feed_forward.cpp does without the fused operator.
torch::Tensor operators_combine(const torch::Tensor& expert_out, const Inputs& in, torch::ScalarType out_dtype) {
  const auto by_slot = model::ungroup_copies(expert_out, in.copy_order, in.position).view({kTokens, kSlots, kHidden});
  return (by_slot * in.weights.to(by_slot.scalar_type()).unsqueeze(-1)).sum(1).to(out_dtype);
}

struct Run {
  torch::Tensor out, grad_expert_out, grad_weights;
};

Run run(bool fused, const Inputs& in, torch::ScalarType out_dtype, const torch::Tensor& upstream) {
  const auto e = in.expert_out.detach().clone().requires_grad_(true);
  const auto w = in.weights.detach().clone().requires_grad_(true);
  Inputs leaves{e, in.position, in.copy_order, w};
  const auto out = fused ? model::fused_combine(e, in.position, w, out_dtype) : operators_combine(e, leaves, out_dtype);
  out.backward(upstream);
  return {out.detach(), e.grad(), w.grad()};
}

}  // namespace

TEST(FusedCombine, EqualsTheOperatorsAndFloat64OnEachDevice) {
  torch::manual_seed(1);
  const std::vector<std::pair<torch::ScalarType, torch::ScalarType>> types = {{torch::kBFloat16, torch::kFloat32},
                                                                              {torch::kBFloat16, torch::kBFloat16},
                                                                              {torch::kFloat16, torch::kFloat32},
                                                                              {torch::kFloat32, torch::kFloat32}};
  for (const auto& device : test_devices()) {
    for (const auto& [dtype, out_dtype] : types) {
      const auto in = sample(dtype, device);
      // The layer leaves float32 on the CPU to ATen; the operator itself takes it there too.
      EXPECT_EQ(model::fused_combine_serves(in.expert_out, in.weights, out_dtype),
                device.is_cuda() || dtype != torch::kFloat32)
          << device << " " << dtype;
      const auto upstream = torch::randn({kTokens, kHidden}, torch::kFloat64).to(out_dtype).to(device);
      const auto label = ::testing::Message() << device << " " << dtype << " -> " << out_dtype;
      const auto fused = run(true, in, out_dtype, upstream), want = run(false, in, out_dtype, upstream);
      ASSERT_EQ(fused.out.scalar_type(), out_dtype);
      // An output of float32 holds values of the experts' dtype: compare them there.
      EXPECT_TRUE(within_one_ulp_mostly_exact(fused.out.to(dtype), want.out.to(dtype))) << label;
      EXPECT_TRUE(within_one_ulp_mostly_exact(fused.grad_expert_out, want.grad_expert_out)) << label;
      const double scale = want.grad_weights.abs().max().item<double>();
      EXPECT_TRUE(all_close(fused.grad_weights, want.grad_weights, (dtype == torch::kFloat32 ? 1e-5 : 4e-3) * scale,
                            dtype == torch::kFloat32 ? 1e-5 : 8e-3))
          << label;
      // Against float64: the sum of the weighted copies.
      const auto e64 =
          in.expert_out.to(torch::kFloat64).cpu().index_select(0, in.position.cpu()).view({kTokens, kSlots, kHidden});
      const auto want64 = (e64 * in.weights.to(torch::kFloat64).cpu().unsqueeze(-1)).sum(1);
      // Each product is rounded to the experts' dtype (2^-9 relative in bf16) before the sum, whose
      // terms may cancel: the tolerance is relative to the largest term.
      const double largest = (e64 * in.weights.to(torch::kFloat64).cpu().unsqueeze(-1)).abs().max().item<double>();
      EXPECT_TRUE(all_close(fused.out, want64, (dtype == torch::kFloat32 ? 1e-6 : 1e-2) * largest, 1e-5)) << label;
      const auto report = compare_ulps(fused.grad_expert_out, want.grad_expert_out);
      std::printf("  %s: experts' gradient %.4f%% bit for bit, max %ld ulp\n", label.GetString().c_str(),
                  100 * report.exact_share, long(report.max_ulps));
    }
  }
}

TEST(FusedCombine, ServesTheLayersShapesAndRefusesOthers) {
  const auto in = sample(torch::kBFloat16, torch::kCPU);
  EXPECT_TRUE(model::fused_combine_serves(in.expert_out, in.weights, torch::kFloat32));
  EXPECT_FALSE(model::fused_combine_serves(in.expert_out, in.weights, torch::kFloat16));  // neither its nor float32
  EXPECT_FALSE(model::fused_combine_serves(in.expert_out, in.weights.to(torch::kFloat64), torch::kFloat32));
  EXPECT_TRUE(model::fused_combine_serves(in.expert_out, in.weights.to(torch::kBFloat16), torch::kFloat32));
  EXPECT_FALSE(
      model::fused_combine_serves(in.expert_out.to(torch::kFloat32), in.weights, torch::kFloat32));  // CPU fp32
  EXPECT_FALSE(model::fused_combine_serves(in.expert_out.narrow(0, 0, 10), in.weights, torch::kFloat32));
  unfused([&] {
    EXPECT_FALSE(model::fused_combine_serves(in.expert_out, in.weights, torch::kFloat32));
    return 0;
  });
  test::expect_refusal(
      [&] { model::fused_combine(in.expert_out, in.position.narrow(0, 0, 5), in.weights, torch::kFloat32); },
      {"moe::combine", "position_of_copy", "[5]", "does not index the 74 copies"});
  test::expect_refusal([&] { model::fused_combine(in.expert_out, in.position, in.weights, torch::kFloat16); },
                       {"moe::combine", "output Half", "neither"});
}

// The MoE layer under bf16 autocast on the CPU standing in for a GPU: the fused combine gives the
// operators' output bit for bit; the gradients agree within the weights' gradient's summation order.
TEST(FusedCombine, MoELayerUnderAutocastEqualsTheOperators) {
  auto cfg = test::moe_layer_config(64, 96, 4, 2, 1);
  cfg.expert_compute = "grouped";
  // A group limit that limits nothing (4 groups of one expert, the best 3 kept, 2 chosen): the
  // router runs its operators in both runs (the fused router takes no group limit), so that the
  // combine gets the same weights.
  cfg.n_group = 4;
  cfg.topk_group = 3;
  torch::manual_seed(7);
  model::MoEFeedForward layer(cfg);
  const auto x = torch::randn({3, 11, 64});
  auto run_layer = [&](bool fused) {
    model::set_fused_kernels_enabled(fused);
    layer->zero_grad();
    const auto leaf = x.clone().requires_grad_(true);
    torch::Tensor y;
    const auto combines = calls_of("moe::combine", [&] {
      trainer::AutocastScope autocast(true, torch::kCPU);
      y = layer(leaf).hidden;
    });
    EXPECT_EQ(combines, fused ? 1 : 0);
    const auto backwards = calls_of("moe::combine_backward", [&] { y.sum().backward(); });
    EXPECT_EQ(backwards, fused ? 1 : 0);
    model::set_fused_kernels_enabled(true);
    std::vector<torch::Tensor> out{y.detach(), leaf.grad()};
    for (const auto& p : layer->parameters()) out.push_back(test::grad_or_zeros(p).clone());
    return out;
  };
  const auto fused = run_layer(true), plain = run_layer(false);
  EXPECT_TRUE(torch::equal(fused[0], plain[0]));
  for (size_t i = 1; i < fused.size(); ++i) {
    EXPECT_LT(test::relative_error(fused[i], plain[i]), 2e-2) << "gradient " << i;
  }
}

// The dispatch's backward (the gather of each token's copies, model/copy_permutation.h) through
// moe::sum_copies: one call, the same gradient as the gather's operators (the sum of k = 1..4 copies
// in float32, stored once) and float64's within the dtype's rounding.
TEST(FusedCombine, SumOfCopiesIsTheDispatchsBackward) {
  torch::manual_seed(23);
  for (const auto& device : test_devices()) {
    for (const int64_t slots : {1, 2, 4}) {
      for (const auto dtype : {torch::kBFloat16, torch::kHalf, torch::kFloat32}) {
        const auto label =
            "k=" + std::to_string(slots) + " " + std::string(c10::toString(dtype)) + " on " + device.str();
        const auto grouping = model::group_by_expert(torch::randint(5, {kTokens, slots}, torch::kInt64).to(device), 5);
        const auto tokens = torch::randn({kTokens, kHidden}, torch::kFloat64);
        const auto upstream = torch::randn({kTokens * slots, kHidden}, torch::kFloat64);
        auto gradient = [&](bool fused) {
          const auto leaf = tokens.to(dtype).to(device).requires_grad_(true);
          auto backward = [&] {
            model::gather_copies(leaf, grouping.token_of_copy, grouping.position_of_copy)
                .backward(upstream.to(dtype).to(device));
          };
          if (fused) {
            // Float32 on the CPU keeps ATen's operators (faster there).
            const bool served = model::fused_sum_copies_serves(upstream.to(dtype).to(device), slots);
            EXPECT_EQ(served, dtype != torch::kFloat32 || device.is_cuda()) << label;
            EXPECT_EQ(calls_of("moe::sum_copies", backward), served ? 1 : 0) << label;
          } else {
            unfused(backward);
          }
          return leaf.grad().cpu();
        };
        const auto fused = gradient(true), ops = gradient(false);
        EXPECT_EQ(fused.scalar_type(), dtype) << label;
        EXPECT_TRUE(within_one_ulp_mostly_exact(fused, ops)) << label;
        // float64: each token's copies of the upstream gradient, summed.
        const auto want = upstream.to(dtype)
                              .to(torch::kFloat64)
                              .index_select(0, grouping.position_of_copy.cpu())
                              .view({kTokens, slots, kHidden})
                              .sum(1);
        const double tolerance = dtype == torch::kFloat32 ? 1e-6 : (dtype == torch::kHalf ? 1.0 / 1024 : 1.0 / 128);
        EXPECT_TRUE(all_close(fused.to(torch::kFloat64), want, tolerance, tolerance)) << label;
      }
    }
  }
  test::expect_refusal(
      [] {
        model::fused_sum_copies(torch::zeros({5, 4}, torch::kBFloat16), torch::arange(5), 2);
      },
      {"moe::sum_copies: copies [5, 4] BFloat16 are not [N*k, H]", "k = 2"});
}

// The shared experts' output added in the combine's pass: the operators' combine and add bit for
// bit (the routed sum stored in the experts' dtype, then the add in the output's), and the shared
// output's gradient the output's in its dtype, exactly as autograd's cast gives it.
TEST(FusedCombine, SharedTermEqualsTheAddAfterOnEachDevice) {
  torch::manual_seed(37);
  for (const auto& device : test_devices()) {
    for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
      for (const auto out_dtype : {torch::kFloat32, dtype}) {
        const auto label =
            std::string(c10::toString(dtype)) + " -> " + c10::toString(out_dtype) + " on " + device.str();
        const auto in = sample(dtype, device);
        const auto shared = torch::randn({kTokens, kHidden}, torch::kFloat64).to(dtype).to(device);
        const auto upstream = torch::randn({kTokens, kHidden}, torch::kFloat64).to(out_dtype).to(device);
        auto run_with_shared = [&](bool fused) {
          const auto e = in.expert_out.detach().clone().requires_grad_(true);
          const auto w = in.weights.detach().clone().requires_grad_(true);
          const auto s = shared.detach().clone().requires_grad_(true);
          Inputs leaves{e, in.position, in.copy_order, w};
          const auto out = fused ? model::fused_combine(e, in.position, w, out_dtype, s)
                                 : operators_combine(e, leaves, out_dtype) + s;
          out.backward(upstream);
          return std::vector<torch::Tensor>{out.detach().cpu(), e.grad().cpu(), w.grad().cpu(), s.grad().cpu()};
        };
        const auto fused = run_with_shared(true), ops = run_with_shared(false);
        if (dtype == torch::kFloat32 && device.is_cpu()) continue;  // float32 on the CPU: the operators both times
        EXPECT_TRUE(torch::equal(fused[0], ops[0])) << label << ": output";
        EXPECT_EQ(fused[3].scalar_type(), dtype) << label;
        EXPECT_TRUE(torch::equal(fused[3], ops[3])) << label << ": the shared output's gradient";
        EXPECT_TRUE(within_one_ulp_mostly_exact(fused[1], ops[1])) << label << ": the experts' gradient";
        EXPECT_TRUE(all_close(fused[2], ops[2], 1e-4, 1e-2)) << label << ": the weights' gradient";
      }
    }
  }
}
