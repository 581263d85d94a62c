// The fused rotary embedding (model/fused_rotary.h) against ATen's operators on the same device
// (apply_rope with the fused kernels off) and against MiniMind's formula in float64: forward and,
// through apply_rope's autograd, backward; strided inputs (q and k are views of the fused q/k/v
// product); on the CPU (the element loop) and on a GPU where one is visible.
//
// Tolerances: bf16/fp16 at most 1 unit in the last place and at least 99% bit for bit (the single
// rounding at the end; the CPU's loop gives ATen's values exactly); float32 within float32 rounding
// (1e-5 relative, 1e-6 of the scale); float64 reference within float32 rounding of the tables.
#include "model/fused_rotary.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/functional.h"
#include "tests/model/fused_kernel_checks.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;
using namespace moe::test::fused;

namespace {

constexpr int64_t kB = 2, kT = 7, kHeads = 3, kKvHeads = 1, kD = 16;

struct Tables {
  torch::Tensor cos, signed_sin;  // float32 [B, T, D]
};

// Positions that differ per sequence (as with left padding), so that the tables index by (b, t).
Tables tables_on(const torch::Device& device) {
  const auto rope = model::rope_tables(kD, 64, 10000.0, torch::kFloat32);
  const auto positions = torch::stack({torch::arange(kT), torch::arange(5, 5 + kT)}).to(torch::kInt64);
  return {rope.cos.index({positions}).to(device), rope.signed_sin.index({positions}).to(device)};
}

// q: [B, T, heads, D] as the attention gets it: a view into the fused q/k/v product (not contiguous).
torch::Tensor strided_q(torch::ScalarType dtype, const torch::Device& device) {
  const auto qkv = torch::randn({kB, kT, (kHeads + 2 * kKvHeads) * kD}, torch::kFloat64).to(dtype).to(device);
  return qkv.narrow(2, 0, kHeads * kD).view({kB, kT, kHeads, kD});
}

// MiniMind's q * cos + rotate_half(q) * sin in float64, with sin = |signed_sin| per half's sign.
torch::Tensor minimind_rope(const torch::Tensor& x, const Tables& t) {
  const auto xd = x.to(torch::kFloat64).cpu();
  const auto c = t.cos.to(torch::kFloat64).cpu().unsqueeze(2), s = t.signed_sin.to(torch::kFloat64).cpu().unsqueeze(2);
  const auto half = kD / 2;
  const auto rotate_half = torch::cat({-xd.narrow(3, half, half), xd.narrow(3, 0, half)}, 3);
  const auto sin = torch::cat({-s.narrow(3, 0, half), s.narrow(3, half, half)}, 3);  // undo the folded sign
  return xd * c + rotate_half * sin;
}

}  // namespace

TEST(FusedRotary, EqualsTheOperatorsAndMiniMindOnEachDevice) {
  torch::manual_seed(1);
  for (const auto& device : test_devices()) {
    const auto t = tables_on(device);
    for (const auto dtype : {torch::kBFloat16, torch::kFloat16, torch::kFloat32}) {
      const auto q = strided_q(dtype, device);
      ASSERT_FALSE(q.is_contiguous());
      const auto label = ::testing::Message() << device << " " << dtype;
      const auto fused = model::fused_rotary(q, t.cos, t.signed_sin, 1.0);
      const auto want = unfused([&] { return model::apply_rope(q, t.cos, t.signed_sin); });
      EXPECT_TRUE(within_one_ulp_mostly_exact(fused, want)) << label;
      EXPECT_TRUE(all_close(fused, minimind_rope(q, t), 1e-6, dtype == torch::kFloat32 ? 1e-5 : 1e-2)) << label;
      // sign -1 undoes the rotation (to the output's rounding).
      EXPECT_TRUE(all_close(model::fused_rotary(fused, t.cos, t.signed_sin, -1.0), q, 1e-2, 1e-2)) << label;
      const auto report = compare_ulps(fused, want);
      std::printf("  %s: %.4f%% bit for bit, max %ld ulp\n", label.GetString().c_str(), 100 * report.exact_share,
                  long(report.max_ulps));
    }
  }
}

// apply_rope's backward (the opposite rotation) through the fused operator equals the operators'.
TEST(FusedRotary, BackwardThroughApplyRopeOnEachDevice) {
  torch::manual_seed(2);
  for (const auto& device : test_devices()) {
    const auto t = tables_on(device);
    const auto q = strided_q(torch::kBFloat16, device);
    ASSERT_TRUE(model::fused_rotary_serves(q, t.cos)) << device;
    const auto upstream = torch::randn(q.sizes(), torch::kFloat64).to(torch::kBFloat16).to(device);
    const auto fused = q.detach().clone().requires_grad_(true), plain = q.detach().clone().requires_grad_(true);
    EXPECT_EQ(calls_of("moe::rotary", [&] { model::apply_rope(fused, t.cos, t.signed_sin).backward(upstream); }), 2)
        << device;  // forward and backward
    unfused([&] {
      model::apply_rope(plain, t.cos, t.signed_sin).backward(upstream);
      return 0;
    });
    EXPECT_TRUE(within_one_ulp_mostly_exact(fused.grad(), plain.grad())) << device;
    EXPECT_GT(fused.grad().abs().sum().item<double>(), 0.0);
  }
}

TEST(FusedRotary, ServesExactTablesInReducedPrecisionOnTheCpuAndOnGpus) {
  const auto t = tables_on(torch::kCPU);
  const auto q = strided_q(torch::kBFloat16, torch::kCPU);
  EXPECT_TRUE(model::fused_rotary_serves(q, t.cos));
  EXPECT_FALSE(model::fused_rotary_serves(q.to(torch::kFloat32), t.cos));  // ATen's vectorised ops
  EXPECT_FALSE(model::fused_rotary_serves(q, t.cos.narrow(0, 0, 1)));      // broadcast over the batch
  EXPECT_FALSE(model::fused_rotary_serves(q, t.cos.to(torch::kFloat64)));
  model::set_fused_kernels_on_cpu(false);  // the default outside the benchmark's stand-in modes
  EXPECT_FALSE(model::fused_rotary_serves(q, t.cos));
  model::set_fused_kernels_on_cpu(true);
  unfused([&] {
    EXPECT_FALSE(model::fused_rotary_serves(q, t.cos));
    return 0;
  });
  // The broadcast tables still work, through the operators.
  const auto broadcast = model::apply_rope(q, t.cos.narrow(0, 0, 1), t.signed_sin.narrow(0, 0, 1));
  EXPECT_TRUE(torch::equal(
      broadcast[0], model::apply_rope(q.narrow(0, 0, 1), t.cos.narrow(0, 0, 1), t.signed_sin.narrow(0, 0, 1))[0]));
  test::expect_refusal([&] { model::fused_rotary(q, t.cos.narrow(1, 0, 3), t.signed_sin, 1.0); },
                       {"moe::rotary", "table", "[2, 3, 16]", "is not float32 [B, T, D]"});
  test::expect_refusal([&] { model::fused_rotary(q.to(torch::kFloat64), t.cos, t.signed_sin, 1.0); },
                       {"moe::rotary", "Double"});
  if (!torch::cuda::is_available()) return;
  const auto g = tables_on(torch::kCUDA);
  EXPECT_TRUE(model::fused_rotary_serves(q.cuda().to(torch::kFloat32), g.cos));
  EXPECT_FALSE(model::fused_rotary_serves(q.cuda(), t.cos));  // tables on another device
}
