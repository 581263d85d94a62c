// RMSNorm, RoPE, repeat_kv and SwiGLU against their formulas, in float64 on random inputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "model/feed_forward.h"
#include "model/functional.h"
#include "model/rms_norm.h"
#include "tests/reference/minimind_reference.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;

TEST(RMSNorm, MatchesFormulaElementwise) {
  test::DtypeAndSeed guard;
  const int64_t d = 24;
  model::RMSNorm norm(d, 1e-5);
  torch::NoGradGuard no_grad;
  norm->weight.uniform_(0.5, 1.5);  // not ones, so the weight is checked too
  const auto x = torch::randn({3, 5, d}) * 3 + 0.5;
  const auto y = norm(x);
  auto expected = torch::empty_like(x);
  auto xa = x.accessor<double, 3>();
  auto ea = expected.accessor<double, 3>();
  auto wa = norm->weight.accessor<double, 1>();
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 5; ++j) {
      double ms = 0;
      for (int64_t k = 0; k < d; ++k) ms += xa[i][j][k] * xa[i][j][k] / d;
      for (int64_t k = 0; k < d; ++k) ea[i][j][k] = wa[k] * xa[i][j][k] / std::sqrt(ms + 1e-5);
    }
  }
  EXPECT_TRUE(all_close(y, expected, 1e-12, 1e-12));
}

TEST(RMSNorm, KeepsHalfPrecisionDtype) {
  model::RMSNorm norm(8, 1e-5);
  const auto x = torch::randn({2, 8}).to(torch::kBFloat16);
  EXPECT_EQ(model::rms_norm(x, norm->weight.to(torch::kBFloat16), 1e-5).scalar_type(), torch::kBFloat16);
}

TEST(RoPE, EqualsExplicitPairRotations) {
  test::DtypeAndSeed guard;
  const int64_t d = 16, t = 7;
  const double theta = 10000.0;
  const auto x = torch::randn({2, t, 3, d});
  const auto tables = model::rope_tables(d, 32, theta, torch::kFloat64);
  const auto cos = tables.cos.slice(0, 0, t).unsqueeze(0).expand({2, t, d});
  const auto sin = tables.signed_sin.slice(0, 0, t).unsqueeze(0).expand({2, t, d});
  const auto got = model::apply_rope(x, cos, sin);
  EXPECT_TRUE(all_close(got, reference::rope_by_rotation(x, torch::arange(t), theta), 1e-12, 1e-12));
}

// Our backward (the rotation by the opposite angle) against autograd through the explicit pair
// rotations, in float64; and in bfloat16, the dtype the gradient comes back in.
TEST(RoPE, BackwardEqualsAutogradOfPairRotations) {
  test::DtypeAndSeed guard;
  const int64_t d = 16, t = 9;
  const double theta = 10000.0;
  const auto tables = model::rope_tables(d, 32, theta, torch::kFloat64);
  const auto cos = tables.cos.slice(0, 0, t).unsqueeze(0).expand({2, t, d});
  const auto sin = tables.signed_sin.slice(0, 0, t).unsqueeze(0).expand({2, t, d});
  const auto x = torch::randn({2, t, 3, d}), g = torch::randn({2, t, 3, d});
  const auto ours = x.clone().requires_grad_(true), ref = x.clone().requires_grad_(true);
  (model::apply_rope(ours, cos, sin) * g).sum().backward();
  (reference::rope_by_rotation(ref, torch::arange(t), theta) * g).sum().backward();
  EXPECT_TRUE(all_close(ours.grad(), ref.grad(), 1e-12, 1e-12));
  const auto half = x.to(torch::kBFloat16).requires_grad_(true);
  (model::apply_rope(half, cos.to(torch::kFloat32), sin.to(torch::kFloat32)).to(torch::kFloat64) * g).sum().backward();
  EXPECT_EQ(half.grad().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(all_close(half.grad().to(torch::kFloat64), ref.grad(), 1e-2, 2e-2));
}

TEST(RoPE, PreservesNorms) {
  test::DtypeAndSeed guard;
  const int64_t d = 32, t = 50;
  const auto x = torch::randn({1, t, 4, d});
  const auto tables = model::rope_tables(d, t, 1e6, torch::kFloat64);
  const auto y = model::apply_rope(x, tables.cos.unsqueeze(0), tables.signed_sin.unsqueeze(0));
  EXPECT_TRUE(all_close(y.norm(2, -1), x.norm(2, -1), 1e-12, 1e-12));
}

TEST(RoPE, DotProductDependsOnlyOnRelativePosition) {
  test::DtypeAndSeed guard;
  const int64_t d = 16, p = 64;
  const auto tables = model::rope_tables(d, p, 1e4, torch::kFloat64);
  const auto q = torch::randn({d}), k = torch::randn({d});
  auto at = [&](const torch::Tensor& v, int64_t pos) {
    return model::apply_rope(v.view({1, 1, 1, d}), tables.cos[pos].view({1, 1, d}), tables.signed_sin[pos].view({1, 1, d}))
        .flatten();
  };
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{5, 2}, {9, 9}, {3, 20}}) {
    const double base = at(q, m).dot(at(k, n)).item<double>();
    for (int64_t shift : {1, 7, 30}) {
      EXPECT_NEAR(at(q, m + shift).dot(at(k, n + shift)).item<double>(), base, 1e-10)
          << "m " << m << " n " << n << " shift " << shift;
    }
  }
  // And it does depend on the offset (the test would pass for an identity "rotation" otherwise).
  EXPECT_GT(std::abs(at(q, 0).dot(at(k, 5)).item<double>() - at(q, 0).dot(at(k, 0)).item<double>()), 1e-3);
}

TEST(RepeatKv, RepeatsEachHeadInPlace) {
  const auto x = torch::randn({2, 3, 2, 4});
  const auto y = model::repeat_kv(x, 3);
  ASSERT_EQ(y.sizes(), torch::IntArrayRef({2, 3, 6, 4}));
  for (int64_t h = 0; h < 6; ++h) EXPECT_TRUE(torch::equal(y.select(2, h), x.select(2, h / 3))) << "head " << h;
  EXPECT_TRUE(torch::equal(model::repeat_kv(x, 1), x));
}

TEST(SwiGLU, FeedForwardMatchesFormula) {
  test::DtypeAndSeed guard;
  model::ModelConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  model::FeedForward ff(c);
  const auto x = torch::randn({4, 6, 32});
  const reference::ExpertWeights w{ff->gate_proj->weight, ff->up_proj->weight, ff->down_proj->weight};
  EXPECT_TRUE(all_close(ff(x), reference::swiglu_expert(x, w), 1e-12, 1e-12));
}

// The experts' act(gate) * up on [gate | up] with its own backward: the values and the gradient
// equal autograd's of the two slices exactly (the same operations), for every activation, in
// float32 and bfloat16.
TEST(SwiGLU, GatedActivationEqualsAutogradOfTheHalvesExactly) {
  torch::manual_seed(5);
  for (const std::string act : {"silu", "gelu", "relu"}) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      const auto values = torch::randn({37, 2 * 24}).to(dtype) * 3;
      const auto upstream = torch::randn({37, 24}).to(dtype);
      const auto ours = values.clone().requires_grad_(true), theirs = values.clone().requires_grad_(true);
      const auto out = model::gated_activation(ours, act);
      const auto want = model::activation(theirs.narrow(1, 0, 24), act) * theirs.narrow(1, 24, 24);
      ASSERT_EQ(out.scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(out, want)) << act << " " << dtype;
      out.backward(upstream);
      want.backward(upstream);
      EXPECT_TRUE(torch::equal(ours.grad(), theirs.grad())) << act << " " << dtype;
      EXPECT_TRUE(ours.grad().is_contiguous());
    }
  }
  EXPECT_THROW(model::gated_activation(torch::zeros({2, 7}), "silu"), std::exception);
}

TEST(CountIds, EqualsBincountIncludingAbsentIds) {
  const auto ids = torch::tensor({3, 0, 3, 3, 1}, torch::kInt64).view({5, 1});
  EXPECT_TRUE(torch::equal(model::count_ids(ids, 6), torch::tensor({1, 1, 0, 3, 0, 0}, torch::kInt64)));
  const auto random = torch::randint(7, {200, 2}, torch::kInt64);
  EXPECT_TRUE(torch::equal(model::count_ids(random, 7), torch::bincount(random.reshape({-1}), {}, 7)));
  EXPECT_TRUE(torch::equal(model::count_ids(torch::empty({0}, torch::kInt64), 3), torch::zeros({3}, torch::kInt64)));
}
