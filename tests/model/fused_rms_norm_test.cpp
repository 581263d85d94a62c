// The fused RMSNorm (model/fused_rms_norm.h), written in the products' dtype,
// against ATen's norm followed by the cast the products make, and against
// float64; forward and backward; on the CPU (the row loop, standing in for a
// GPU) and on a GPU where one is visible; then in the model under bf16
// autocast, where each block's two norms take it.
//
// Tolerances: the output within 1 unit in the last place of its dtype and at
// least 99% bit for bit (the same float32 math, a sum of squares in another
// order). The gradients in float32 against float64 from the same bf16 output
// gradient: within float32 rounding of sums over the row (x) and over the rows
// (weight), 1e-5 of the largest plus 1e-5 relative.
#include "model/fused_rms_norm.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/causal_lm.h"
#include "model/functional.h"
#include "model/rms_norm.h"
#include "tests/model/fused_kernel_checks.h"
#include "tests/support.h"
#include "trainer/device.h"

using namespace moe;
using moe::test::all_close;
using namespace moe::test::fused;

namespace {

struct Grads {
  torch::Tensor out, x, weight;
};

Grads run_fused(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& upstream, double eps) {
  const auto xl = x.detach().clone().requires_grad_(true), wl = weight.detach().clone().requires_grad_(true);
  const auto out = model::fused_rms_norm(xl, wl, eps, upstream.scalar_type());
  out.backward(upstream);
  return {out.detach(), xl.grad(), wl.grad()};
}

// MiniMind's formula in float64 on the CPU, its output's gradient the same
// (bf16) values.
Grads run_float64(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& upstream, double eps) {
  const auto x64 = x.detach().cpu().to(torch::kFloat64).requires_grad_(true);
  const auto w64 = weight.detach().cpu().to(torch::kFloat64).requires_grad_(true);
  const auto out = w64 * (x64 * torch::rsqrt(x64.pow(2).mean(-1, true) + eps));
  out.backward(upstream.cpu().to(torch::kFloat64));
  return {out.detach(), x64.grad(), w64.grad()};
}

}  // namespace

TEST(FusedRmsNorm, EqualsTheNormThenCastAndFloat64OnEachDevice) {
  torch::manual_seed(3);
  const double eps = 1e-5;
  // dim 100: not a multiple of a warp; 1,300 rows: three chunks of the weight's
  // gradient, one short.
  for (const auto& device : test_devices()) {
    for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
      for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 650, 100}, {3, 5, 64}}) {
        const auto dim = shape.back();
        const auto x = (torch::randn(shape) * 3).to(device);
        const auto weight = (1 + 0.1 * torch::randn({dim})).to(device);
        const auto upstream = torch::randn(shape).to(dtype).to(device);
        const auto label = ::testing::Message() << device << " " << dtype << " " << x.sizes();
        ASSERT_TRUE(model::fused_rms_norm_serves(x, weight, dtype)) << label;
        const auto fused = run_fused(x, weight, upstream, eps);
        ASSERT_EQ(fused.out.scalar_type(), dtype);
        EXPECT_EQ(fused.x.scalar_type(), torch::kFloat32);
        EXPECT_EQ(fused.weight.scalar_type(), torch::kFloat32);
        // What the products saw before: ATen's norm in float32, cast.
        EXPECT_TRUE(within_one_ulp_mostly_exact(fused.out, model::rms_norm(x, weight, eps).to(dtype))) << label;
        const auto want = run_float64(x, weight, upstream, eps);
        // Rounding to the dtype: half its relative spacing (float16 below 2^-14
        // spaced 2^-24 apart).
        const bool bf16 = dtype == torch::kBFloat16;
        EXPECT_TRUE(all_close(fused.out, want.out, bf16 ? 0 : 0x1p-25, bf16 ? 0x1p-8 : 0x1p-11)) << label;
        for (const auto& [got, expected] : {std::pair{fused.x, want.x}, std::pair{fused.weight, want.weight}}) {
          EXPECT_TRUE(all_close(got, expected, 1e-5 * expected.abs().max().item<double>(), 1e-5)) << label;
        }
        const auto report = compare_ulps(fused.out, model::rms_norm(x, weight, eps).to(dtype));
        std::printf("  %s: output %.4f%% bit for bit, max %ld ulp\n", label.GetString().c_str(),
                    100 * report.exact_share, long(report.max_ulps));
      }
    }
  }
}

// The residual's add before the norm in the same pass: the sum exactly ATen's
// float32 add, the output as the norm of that sum; backward, the sum's own
// gradient (from the residual onwards) added to the norm's, handed to x in
// float32 and to delta in delta's dtype (as ATen's add casts it).
TEST(FusedRmsNorm, AddsTheResidualFirstOnEachDevice) {
  torch::manual_seed(6);
  const double eps = 1e-6;
  for (const auto& device : test_devices()) {
    for (const auto delta_dtype : {torch::kBFloat16, torch::kFloat32}) {
      const auto label = ::testing::Message() << device << " delta " << delta_dtype;
      const auto x = torch::randn({2, 650, 100}).to(device);
      const auto delta = torch::randn({2, 650, 100}).to(delta_dtype).to(device);
      const auto weight = (1 + 0.1 * torch::randn({100})).to(device);
      const auto up_normed = torch::randn({2, 650, 100}).to(torch::kBFloat16).to(device);
      const auto up_sum = torch::randn({2, 650, 100}).to(device);
      ASSERT_TRUE(model::fused_add_rms_norm_serves(x, delta, weight, torch::kBFloat16)) << label;
      const auto xl = x.clone().requires_grad_(true), dl = delta.clone().requires_grad_(true);
      const auto wl = weight.clone().requires_grad_(true);
      const auto fused = model::fused_add_rms_norm(xl, dl, wl, eps, torch::kBFloat16);
      torch::autograd::backward({fused.normed, fused.sum}, {up_normed, up_sum});
      EXPECT_TRUE(torch::equal(fused.sum.detach(), x + delta)) << label;
      EXPECT_TRUE(within_one_ulp_mostly_exact(fused.normed.detach(),
                                              model::rms_norm(x + delta, weight, eps).to(torch::kBFloat16)))
          << label;
      // float64: MiniMind's formula after the add, the same two upstream
      // gradients.
      const auto x64 = x.cpu().to(torch::kFloat64).requires_grad_(true);
      const auto d64 = delta.cpu().to(torch::kFloat64).requires_grad_(true);
      const auto w64 = weight.cpu().to(torch::kFloat64).requires_grad_(true);
      const auto sum64 = x64 + d64;
      const auto out64 = w64 * (sum64 * torch::rsqrt(sum64.pow(2).mean(-1, true) + eps));
      torch::autograd::backward({out64, sum64},
                                {up_normed.cpu().to(torch::kFloat64), up_sum.cpu().to(torch::kFloat64)});
      EXPECT_TRUE(all_close(xl.grad(), x64.grad(), 1e-5 * x64.grad().abs().max().item<double>(), 1e-5)) << label;
      EXPECT_TRUE(all_close(wl.grad(), w64.grad(), 1e-5 * w64.grad().abs().max().item<double>(), 1e-5)) << label;
      ASSERT_EQ(dl.grad().scalar_type(), delta_dtype);
      EXPECT_TRUE(torch::equal(dl.grad(), xl.grad().to(delta_dtype))) << label;
    }
  }
}

TEST(FusedRmsNorm, OnAGpuEqualsTheCpuLoop) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(4);
  const auto x = torch::randn({4, 300, 768}) * 2, weight = torch::rand({768}) + 0.5;
  const auto upstream = torch::randn({4, 300, 768}).to(torch::kBFloat16);
  const auto cpu = run_fused(x, weight, upstream, 1e-6);
  const auto gpu = run_fused(x.cuda(), weight.cuda(), upstream.cuda(), 1e-6);
  EXPECT_TRUE(within_one_ulp_mostly_exact(gpu.out.cpu(), cpu.out));
  EXPECT_TRUE(all_close(gpu.x.cpu(), cpu.x, 1e-5 * cpu.x.abs().max().item<double>(), 1e-5));
  EXPECT_TRUE(all_close(gpu.weight.cpu(), cpu.weight, 1e-5 * cpu.weight.abs().max().item<double>(), 1e-5));
  // A strided x (a slice of a wider tensor) is read as its contiguous copy.
  const auto wide = torch::randn({8, 2 * 768}).cuda();
  const auto strided = wide.narrow(1, 0, 768);
  const auto out = model::fused_rms_norm(strided, weight.cuda(), 1e-6, torch::kBFloat16);
  EXPECT_TRUE(within_one_ulp_mostly_exact(out, model::rms_norm(strided, weight.cuda(), 1e-6).to(torch::kBFloat16)));
}

TEST(FusedRmsNorm, ServesFloat32IntoReducedPrecisionAndRefusesOthers) {
  const auto x = torch::randn({2, 3, 8}), weight = torch::ones({8});
  EXPECT_TRUE(model::fused_rms_norm_serves(x, weight, torch::kBFloat16));
  EXPECT_TRUE(model::fused_rms_norm_serves(x, weight, torch::kHalf));
  EXPECT_FALSE(model::fused_rms_norm_serves(x, weight, torch::kFloat32));  // ATen's norm writes that
  EXPECT_FALSE(model::fused_rms_norm_serves(x.to(torch::kBFloat16), weight, torch::kBFloat16));
  EXPECT_FALSE(model::fused_rms_norm_serves(x, weight.to(torch::kFloat64), torch::kBFloat16));
  unfused([&] {
    EXPECT_FALSE(model::fused_rms_norm_serves(x, weight, torch::kBFloat16));
    return 0;
  });
  test::expect_refusal([&] { model::fused_rms_norm(x, torch::ones({7}), 1e-5, torch::kBFloat16); },
                       {"moe::rms_norm", "weight", "[7]", "is not float32 [8]"});
  test::expect_refusal([&] { model::fused_rms_norm(x.to(torch::kFloat64), weight, 1e-5, torch::kBFloat16); },
                       {"moe::rms_norm", "Double", "is not float32"});
  test::expect_refusal([&] { model::fused_rms_norm(x, weight, 1e-5, torch::kInt32); },
                       {"moe::rms_norm", "out_dtype", "Int"});
  EXPECT_FALSE(model::fused_add_rms_norm_serves(x, x.narrow(2, 0, 4), weight, torch::kBFloat16));
  EXPECT_FALSE(model::fused_add_rms_norm_serves(x, x.to(torch::kInt32), weight, torch::kBFloat16));
  test::expect_refusal([&] { model::fused_add_rms_norm(x, x.narrow(2, 0, 4), weight, 1e-5, torch::kBFloat16); },
                       {"moe::rms_norm", "delta", "[2, 3, 4]", "does not match x [2, 3, 8]"});
}

// RMSNorm::forward_for_products: bf16 from the kernel under autocast,
// forward(x) itself elsewhere.
TEST(FusedRmsNorm, ForwardForProductsWritesTheAutocastDtypeOnly) {
  model::RMSNorm norm(8, 1e-6);
  const auto x = torch::randn({2, 8});
  EXPECT_TRUE(torch::equal(norm->forward_for_products(x),
                           norm(x)));  // no autocast: float32, as before
  trainer::AutocastScope autocast(true, torch::kCPU);
  const auto out = norm->forward_for_products(x);
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(within_one_ulp_mostly_exact(out, norm(x).to(torch::kBFloat16)));
  unfused([&] {
    EXPECT_EQ(norm->forward_for_products(x).scalar_type(),
              torch::kFloat32);  // the products cast it
    return 0;
  });
}

// The whole model under bf16 autocast on the CPU standing in for a GPU: each
// block's two norms and the final one run the fused operator forward and
// backward (with the residual's add before it, but the first); loss and gradients agree with
// ATen's norm and the products' casts within bf16 rounding (the norm's output
// equal to 1 ulp can turn a top-k choice, the products' gradients are added in
// bf16).
TEST(FusedRmsNorm, ModelUnderAutocastTakesItAndAgreesWithTheCasts) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>(), 5);
  auto cfg = test::small_moe_config(64);
  cfg.expert_compute = "grouped";
  model::CausalLM lm(cfg);
  const auto ids = torch::randint(64, {2, 12});
  auto run = [&](bool fused) {
    model::set_fused_kernels_enabled(fused);
    lm->zero_grad();
    model::CausalLMOutput out;
    const auto norms = calls_of("moe::rms_norm", [&] {
      trainer::AutocastScope autocast(true, torch::kCPU);
      out = lm(ids, ids);
    });
    EXPECT_EQ(norms, fused ? 2 * cfg.num_hidden_layers + 1 : 0);
    const auto backwards = calls_of("moe::rms_norm_backward", [&] { out.loss.backward(); });
    EXPECT_EQ(backwards, fused ? 2 * cfg.num_hidden_layers + 1 : 0);
    model::set_fused_kernels_enabled(true);
    std::vector<torch::Tensor> result{out.loss.detach()};
    for (const auto& p : lm->parameters()) result.push_back(test::grad_or_zeros(p).clone());
    return result;
  };
  const auto fused = run(true), plain = run(false);
  EXPECT_NEAR(fused[0].item<double>(), plain[0].item<double>(), 1e-2 * plain[0].abs().item<double>());
  for (size_t i = 1; i < fused.size(); ++i) {
    EXPECT_LT(test::relative_error(fused[i], plain[i]), 3e-2) << "gradient " << i;
  }
}
