// Fused projections (model/fused_projection.h): the cast concatenation equals cat + cast with each
// part's gradient its own contiguous slice cast back; one product over q/k/v or gate/up equals the
// separate projections under bf16 autocast (against float64 in exact arithmetic, within bf16
// rounding); attention and feed-forward take the fused path only where autocast casts.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "bench/step_proxies.h"
#include "model/attention.h"
#include "model/feed_forward.h"
#include "model/functional.h"
#include "model/fused_projection.h"
#include "tests/support.h"
#include "trainer/device.h"

namespace moe::model {
namespace {

using test::all_close;

const bool kTracking = (bench::track_cpu_allocations(), true);

TEST(FusedProjection, ConcatAsEqualsCatThenCastAndSlicesTheGradientBack) {
  torch::manual_seed(1);
  std::vector<torch::Tensor> parts{torch::randn({3, 4}).requires_grad_(true), torch::randn({1, 4}).requires_grad_(true),
                                   torch::randn({2, 4}).requires_grad_(true)};
  const auto out = concat_as(parts, torch::kBFloat16);
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(out, torch::cat(parts).to(torch::kBFloat16)));
  const auto grad = torch::randn({6, 4}).to(torch::kBFloat16);
  out.backward(grad);
  const auto expected = grad.to(torch::kFloat32).split_with_sizes({3, 1, 2});
  for (size_t i = 0; i < parts.size(); ++i) {
    EXPECT_EQ(parts[i].grad().scalar_type(), torch::kFloat32) << i;
    EXPECT_TRUE(parts[i].grad().is_contiguous()) << i;
    EXPECT_TRUE(torch::equal(parts[i].grad(), expected[i])) << i;
  }
}

TEST(FusedProjection, ConcatAsNamesAPartThatDoesNotFit) {
  try {
    concat_as({torch::randn({3, 4}), torch::randn({3, 5})}, torch::kBFloat16);
    FAIL() << "parts of different widths were concatenated";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 5]"), std::string::npos) << e.what();
  }
}

TEST(FusedProjection, CastsOnlyUnderAutocast) {
  const auto x = torch::randn({2, 8});
  EXPECT_FALSE(projection_casts(x, torch::kFloat32));
  trainer::AutocastScope autocast(true, torch::kCPU);
  EXPECT_TRUE(projection_casts(x, torch::kFloat32));
}

// One product over three weights under bf16 autocast against each weight's product in float64:
// bf16 inputs and weights (relative rounding 2^-9 each) and bf16 outputs, sums of 64 products.
TEST(FusedProjection, EqualsTheSeparateProjectionsWithinBf16Rounding) {
  torch::manual_seed(2);
  const auto x = torch::randn({2, 5, 64}).requires_grad_(true);
  std::vector<torch::Tensor> weights{torch::randn({32, 64}).requires_grad_(true),
                                     torch::randn({16, 64}).requires_grad_(true),
                                     torch::randn({16, 64}).requires_grad_(true)};
  torch::Tensor fused;
  {
    trainer::AutocastScope autocast(true, torch::kCPU);
    fused = fused_projection(x, weights);
  }
  ASSERT_EQ(fused.sizes(), (std::vector<int64_t>{2, 5, 64}));
  const auto grad = torch::randn({2, 5, 64});
  fused.to(torch::kFloat32).backward(grad);
  const auto x64 = x.detach().to(torch::kFloat64).requires_grad_(true);
  std::vector<torch::Tensor> w64, outs;
  for (const auto& w : weights) {
    w64.push_back(w.detach().to(torch::kFloat64).requires_grad_(true));
    outs.push_back(torch::linear(x64, w64.back()));
  }
  torch::cat(outs, -1).backward(grad.to(torch::kFloat64));
  const double scale = std::sqrt(64.0);  // a sum of 64 unit products
  EXPECT_TRUE(all_close(fused, torch::cat(outs, -1), 2e-2 * scale, 1e-2));
  EXPECT_TRUE(all_close(x.grad(), x64.grad(), 2e-2 * scale, 1e-2));
  for (size_t i = 0; i < weights.size(); ++i) {
    EXPECT_EQ(weights[i].grad().scalar_type(), torch::kFloat32);
    EXPECT_TRUE(all_close(weights[i].grad(), w64[i].grad(), 2e-2 * std::sqrt(10.0), 1e-2)) << i;
  }
}

// Under autocast the attention's q/k/v and the feed-forward's gate/up are one GEMM each (counted
// with the step proxies: operator calls that become kernels on a GPU); without autocast, three and
// two, as MiniMind's modules.
TEST(FusedProjection, AttentionAndFeedForwardFuseUnderAutocastOnly) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  auto cfg = test::small_moe_config(64);
  Attention attention(cfg);
  FeedForward ffn(cfg);
  const auto tables = rope_tables(cfg.head_dim(), 16, cfg.rope_theta, torch::kFloat32);
  const auto cos = tables.cos.narrow(0, 0, 16).unsqueeze(0), sin = tables.signed_sin.narrow(0, 0, 16).unsqueeze(0);
  const auto x = torch::randn({1, 16, cfg.hidden_size});
  for (const bool autocast : {false, true}) {
    bench::ProxyRecorder recorder(torch::kCPU);
    {
      trainer::AutocastScope scope(autocast, torch::kCPU);
      attention(x, cos, sin);
      ffn(x);
    }
    const auto mm = recorder.result().launches_by_op;
    // q, k, v, o and gate, up, down fused: q/k/v and gate/up one product each.
    const int64_t products = (mm.count("aten::mm") ? mm.at("aten::mm") : 0) + (mm.count("aten::addmm") ? mm.at("aten::addmm") : 0);
    EXPECT_EQ(products, autocast ? 4 : 7) << "autocast " << autocast;
  }
}

}  // namespace
}  // namespace moe::model
