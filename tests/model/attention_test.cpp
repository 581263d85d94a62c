// Grouped-query attention against explicit softmax(QK^T/sqrt(d) + causal mask)V with repeat_kv,
// in float64, for the fused kernel and the explicit path, GQA and MHA.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/attention.h"
#include "model/functional.h"
#include "tests/reference/minimind_reference.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;

namespace {

model::ModelConfig attention_config(int64_t heads, int64_t kv_heads, bool flash) {
  model::ModelConfig c;
  c.hidden_size = 48;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.flash_attn = flash;
  c.rope_theta = 1e4;
  return c;
}

torch::Tensor reference_attention(model::AttentionImpl& a, const torch::Tensor& x, int64_t heads, int64_t kv_heads,
                                  double theta) {
  const auto b = x.size(0), t = x.size(1), d = x.size(2) / heads;
  auto q = torch::matmul(x, a.q_proj->weight.t()).view({b, t, heads, d});
  auto k = torch::matmul(x, a.k_proj->weight.t()).view({b, t, kv_heads, d});
  const auto v = torch::matmul(x, a.v_proj->weight.t()).view({b, t, kv_heads, d});
  const auto pos = torch::arange(t);
  q = reference::rope_by_rotation(q, pos, theta);
  k = reference::rope_by_rotation(k, pos, theta);
  return torch::matmul(reference::causal_attention(q, k, v).reshape({b, t, heads * d}), a.o_proj->weight.t());
}

class AttentionVsReference : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, bool>> {};

}  // namespace

TEST_P(AttentionVsReference, OutputsMatch) {
  test::DtypeAndSeed guard;
  const auto [heads, kv_heads, flash] = GetParam();
  const auto cfg = attention_config(heads, kv_heads, flash);
  model::Attention attn(cfg);
  attn->eval();
  const int64_t b = 2, t = 9;
  const auto x = torch::randn({b, t, cfg.hidden_size});
  const auto tables = model::rope_tables(cfg.head_dim(), 16, cfg.rope_theta, torch::kFloat64);
  const auto cos = tables.cos.slice(0, 0, t).unsqueeze(0).expand({b, t, -1});
  const auto sin = tables.signed_sin.slice(0, 0, t).unsqueeze(0).expand({b, t, -1});
  const auto expected = reference_attention(*attn, x, heads, kv_heads, cfg.rope_theta);
  EXPECT_TRUE(all_close(attn(x, cos, sin), expected, 1e-12, 1e-10));

  // The same causal pattern given as an explicit boolean mask.
  const auto mask = torch::ones({t, t}, torch::kBool).tril().view({1, 1, t, t});
  EXPECT_TRUE(all_close(attn(x, cos, sin, mask), expected, 1e-12, 1e-10));
}

INSTANTIATE_TEST_SUITE_P(GqaAndMha, AttentionVsReference,
                         ::testing::Values(std::make_tuple(4, 2, true), std::make_tuple(4, 2, false),
                                           std::make_tuple(4, 4, true), std::make_tuple(6, 1, false)));

TEST(Attention, DropoutOnlyInTraining) {
  test::DtypeAndSeed guard;
  auto cfg = attention_config(4, 2, true);
  cfg.dropout = 0.5;
  model::Attention attn(cfg);
  const auto x = torch::randn({1, 5, cfg.hidden_size});
  const auto tables = model::rope_tables(cfg.head_dim(), 5, cfg.rope_theta, torch::kFloat64);
  const auto cos = tables.cos.unsqueeze(0), sin = tables.signed_sin.unsqueeze(0);
  attn->eval();
  EXPECT_TRUE(torch::equal(attn(x, cos, sin), attn(x, cos, sin)));
  attn->train();
  EXPECT_FALSE(torch::allclose(attn(x, cos, sin), attn(x, cos, sin)));
}
