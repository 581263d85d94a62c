// Routing beyond MiniMind: sigmoid scores, the auxiliary-loss-free bias, the router z-loss and
// group-limited routing, each against an independent float64 computation (explicit loops where the
// rule is a choice), plus the balancing update against hand-computed values.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <vector>

#include "model/causal_lm.h"
#include "model/moe_gate.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;

namespace {

model::ModelConfig sigmoid_config(int64_t experts, int64_t top_k) {
  auto c = test::moe_layer_config(16, 24, experts, top_k, 0);
  c.scoring_func = "sigmoid";
  return c;
}

// The k best experts of one token by explicit comparison (ties: lower id), over `value`.
std::vector<int64_t> best_k(const std::vector<double>& value, int64_t k) {
  std::vector<int64_t> ids(value.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return value[a] > value[b]; });
  ids.resize(size_t(k));
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::vector<int64_t> sorted_row(const torch::Tensor& idx, int64_t t) {
  std::vector<int64_t> row;
  for (int64_t s = 0; s < idx.size(1); ++s) row.push_back(idx[t][s].item<int64_t>());
  std::sort(row.begin(), row.end());
  return row;
}

double weight_of(const model::RoutingDecision& r, int64_t t, int64_t expert) {
  for (int64_t s = 0; s < r.topk_idx.size(1); ++s) {
    if (r.topk_idx[t][s].item<int64_t>() == expert) return r.topk_weight[t][s].item<double>();
  }
  return 0;
}

}  // namespace

// DeepSeek-V3's gate: sigmoid scores; the choice on scores + bias; the weights from the unbiased
// scores, renormalised over the chosen k and scaled.
TEST(Routing, SigmoidWithBiasChoosesOnBiasedScoresAndWeighsUnbiased) {
  test::DtypeAndSeed guard;
  auto cfg = sigmoid_config(6, 2);
  cfg.bias_update_rate = 1e-3;
  cfg.routed_scaling_factor = 2.5;
  model::MoEGate gate(cfg);
  ASSERT_TRUE(gate->e_score_correction_bias.defined());
  EXPECT_EQ(gate->e_score_correction_bias.scalar_type(), torch::kFloat32) << "the bias is fp32 whatever the model";
  EXPECT_FALSE(gate->e_score_correction_bias.requires_grad());
  {
    torch::NoGradGuard no_grad;
    gate->e_score_correction_bias.copy_(torch::tensor({0.3, -0.2, 0.0, 0.1, -0.05, 0.25}));
  }
  const auto x = torch::randn({2, 5, cfg.hidden_size});
  const auto r = gate(x);
  const auto logits = torch::matmul(x.view({10, -1}), gate->weight.t());
  int64_t bias_mattered = 0;
  for (int64_t t = 0; t < 10; ++t) {
    std::vector<double> score(6), biased(6);
    for (int64_t e = 0; e < 6; ++e) {
      score[e] = 1.0 / (1.0 + std::exp(-logits[t][e].item<double>()));
      biased[e] = score[e] + gate->e_score_correction_bias[e].item<double>();
    }
    const auto chosen = best_k(biased, 2);
    ASSERT_EQ(sorted_row(r.topk_idx, t), chosen) << "token " << t;
    bias_mattered += best_k(score, 2) != chosen;
    const double sum = score[chosen[0]] + score[chosen[1]];
    for (const auto e : chosen) EXPECT_NEAR(weight_of(r, t, e), 2.5 * score[e] / sum, 1e-12) << "token " << t;
  }
  EXPECT_GT(bias_mattered, 0) << "the test's bias must change some choice";
}

// Gradients reach the gate's weight through the unbiased scores of the chosen experts only.
TEST(Routing, WeightGradientsFlowThroughUnbiasedScoresOnly) {
  test::DtypeAndSeed guard;
  for (const char* scoring : {"softmax", "sigmoid"}) {
    auto cfg = sigmoid_config(4, 2);
    cfg.scoring_func = scoring;
    cfg.bias_update_rate = 1e-3;
    model::MoEGate gate(cfg);
    {
      torch::NoGradGuard no_grad;
      gate->e_score_correction_bias.copy_(torch::tensor({0.5, 0.0, -0.5, 0.2}));
    }
    const auto x = torch::randn({1, 6, cfg.hidden_size});
    const auto g = torch::randn({6, 2});
    const auto r = gate(x);
    (r.topk_weight * g).sum().backward();
    EXPECT_FALSE(gate->e_score_correction_bias.grad().defined()) << scoring;
    // The reference: the same chosen ids, weights from the scores alone.
    const auto w = gate->weight.detach().clone().requires_grad_(true);
    const auto logits = torch::matmul(x.view({6, -1}), w.t());
    const auto scores = std::string(scoring) == "sigmoid" ? logits.sigmoid() : logits.softmax(-1);
    auto chosen = scores.gather(1, r.topk_idx);
    chosen = chosen / chosen.sum(-1, true);
    (chosen * g).sum().backward();
    EXPECT_TRUE(all_close(gate->weight.grad(), w.grad(), 1e-12, 1e-10)) << scoring;
  }
}

TEST(Routing, ZLossEqualsTheMeanSquaredLogSumExp) {
  test::DtypeAndSeed guard;
  auto cfg = sigmoid_config(4, 2);
  cfg.router_z_loss_coef = 1e-3;
  cfg.aux_loss_alpha = 0;
  model::MoEGate gate(cfg);
  const auto x = torch::randn({3, 4, cfg.hidden_size}) * 3;
  gate->train();
  const auto r = gate(x);
  const auto logits = torch::matmul(x.view({12, -1}), gate->weight.t());
  double want = 0;
  for (int64_t t = 0; t < 12; ++t) {
    double sum = 0;
    for (int64_t e = 0; e < 4; ++e) sum += std::exp(logits[t][e].item<double>());
    want += std::log(sum) * std::log(sum) / 12;
  }
  EXPECT_NEAR(r.z_loss.item<double>(), 1e-3 * want, 1e-15);
  EXPECT_EQ(r.aux_loss.item<double>(), 0.0);
  gate->eval();
  EXPECT_EQ(gate(x).z_loss.item<double>(), 0.0) << "a training loss only";
  // In the whole model: one term per MoE layer, added to the loss.
  auto lm_cfg = test::small_moe_config(32);
  lm_cfg.router_z_loss_coef = 1e-2;
  model::CausalLM lm(lm_cfg);
  lm->train();
  const auto ids = torch::randint(32, {2, 8}, torch::kInt64);
  const auto out = lm(ids, ids);
  EXPECT_GT(out.z_loss.item<double>(), 0.0);
  EXPECT_NEAR(out.loss.item<double>(),
              out.ce_loss.item<double>() + out.aux_loss.item<double>() + out.z_loss.item<double>(), 1e-12);
}

// Megatron's force-balanced check: at exactly uniform routing (equal scores, every expert chosen
// equally often) every aux-loss variant equals its coefficient; the z-loss at zero logits is
// coef * log(E)^2.
TEST(Routing, UniformRoutingGivesEachAuxVariantItsCoefficient) {
  test::DtypeAndSeed guard;
  const int64_t b = 3, t = 8, e = 4, k = 2, n = b * t;
  const auto scores = torch::full({n, e}, 1.0 / double(e));
  auto idx = torch::empty({n, k}, torch::kInt64);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t s = 0; s < k; ++s) idx[i][s] = (i * k + s) % e;
  }
  EXPECT_NEAR(model::sequence_aux_loss(scores.view({b, t, e}), idx.view({b, t * k}), k, 0.01).item<double>(), 0.01,
              1e-15);
  EXPECT_NEAR(model::batch_aux_loss(scores, idx, 0.01).item<double>(), 0.01, 1e-15);
  const auto doubled = [](const torch::Tensor& c) { return c * 2; };  // two ranks, the same counts
  EXPECT_NEAR(model::batch_aux_loss(scores, idx, 0.01, doubled).item<double>(), 0.01, 1e-15);
  EXPECT_NEAR(model::router_z_loss(torch::zeros({n, e}), 1e-3).item<double>(), 1e-3 * std::log(4.0) * std::log(4.0),
              1e-15);
  // Sigmoid scores enter the aux loss normalised per token: uniform again, the same coefficient.
  auto cfg = sigmoid_config(e, k);
  cfg.aux_loss_alpha = 0.01;
  model::MoEGate gate(cfg);
  {
    torch::NoGradGuard no_grad;
    gate->weight.zero_();  // every score sigmoid(0) = 0.5
  }
  gate->train();
  const auto r = gate(torch::randn({b, t, cfg.hidden_size}));
  // Normalised scores 1/E: sum_e share_e * E/(T k) * 1/E = 1 per sequence, times alpha (unnormalised
  // sigmoid scores, 0.5 each, would give alpha * E / 2).
  EXPECT_NEAR(r.aux_loss.item<double>(), 0.01, 1e-12);
}

TEST(Routing, GroupLimitedRoutingStaysInTheBestGroups) {
  test::DtypeAndSeed guard;
  // Hand example: 6 experts in 3 groups of 2. Group scores (sum of both): 0.9+0.1, 0.6+0.5, 0.8+0.0.
  const auto choice = torch::tensor({0.9, 0.1, 0.6, 0.5, 0.8, 0.0}).view({1, 6});
  const auto limited = model::limit_to_groups(choice, 3, 1);
  EXPECT_TRUE(torch::equal(limited.isinf(), torch::tensor({true, true, false, false, true, true}).view({1, 6})))
      << limited;
  // Randomised: never more than topk_group groups per token; topk_group = n_group changes nothing.
  for (const char* scoring : {"softmax", "sigmoid"}) {
    auto cfg = sigmoid_config(8, 3);
    cfg.scoring_func = scoring;
    cfg.n_group = 4;
    cfg.topk_group = 2;
    torch::manual_seed(3);
    model::MoEGate grouped(cfg);
    cfg.topk_group = 4;
    torch::manual_seed(3);
    model::MoEGate all_groups(cfg);
    cfg.n_group = 1;
    cfg.topk_group = 1;
    torch::manual_seed(3);
    model::MoEGate plain(cfg);
    const auto x = torch::randn({4, 16, cfg.hidden_size});
    const auto r = grouped(x);
    const auto logits = torch::matmul(x.view({64, -1}), grouped->weight.t());
    const auto scores = std::string(scoring) == "sigmoid" ? logits.sigmoid() : logits.softmax(-1);
    int64_t limited_tokens = 0;
    for (int64_t tok = 0; tok < 64; ++tok) {
      std::set<int64_t> groups;
      for (int64_t s = 0; s < 3; ++s) groups.insert(r.topk_idx[tok][s].item<int64_t>() / 2);
      EXPECT_LE(groups.size(), 2u) << scoring << " token " << tok;
      // The reference: rank groups by their two scores' sum, keep the best 2, then the best 3 experts in them.
      std::vector<double> group_score(4), masked(8, -1e300), all(8);
      for (int64_t g = 0; g < 4; ++g) group_score[g] = scores[tok][2 * g].item<double>() + scores[tok][2 * g + 1].item<double>();
      for (const auto g : best_k(group_score, 2)) {
        for (int64_t e = 2 * g; e < 2 * g + 2; ++e) masked[e] = scores[tok][e].item<double>();
      }
      for (int64_t e = 0; e < 8; ++e) all[e] = scores[tok][e].item<double>();
      EXPECT_EQ(sorted_row(r.topk_idx, tok), best_k(masked, 3)) << scoring << " token " << tok;
      limited_tokens += best_k(masked, 3) != best_k(all, 3);
    }
    EXPECT_GT(limited_tokens, 0) << "the test must route some token differently under the limit";
    const auto a = all_groups(x), p = plain(x);
    EXPECT_TRUE(torch::equal(a.topk_idx, p.topk_idx)) << scoring;
    EXPECT_TRUE(torch::equal(a.topk_weight, p.topk_weight)) << scoring;
  }
}

TEST(Routing, BiasUpdateMatchesTheHandComputation) {
  // counts 5 1 3 3, mean 3: expert 0 above (down), expert 1 below (up), 2 and 3 at the mean (still);
  // the moves already sum to 0.
  const auto a = model::routing_bias_delta(torch::tensor({5, 1, 3, 3}, torch::kInt64), 1e-3);
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(a, torch::tensor({-1e-3f, 1e-3f, 0.0f, 0.0f})));
  // counts 6 2 2 2, mean 3: signs -1 +1 +1 +1 (mean 0.5), centred -1.5 +0.5 +0.5 +0.5 (x rate).
  const auto b = model::routing_bias_delta(torch::tensor({6, 2, 2, 2}, torch::kInt64), 1e-3);
  EXPECT_TRUE(torch::equal(b, torch::tensor({-1.5e-3f, 0.5e-3f, 0.5e-3f, 0.5e-3f}))) << b;
  // Counts beyond float precision (bf16 spacing at 40000 is 256): one copy decides.
  const auto c = model::routing_bias_delta(torch::tensor({40001, 40000, 39999, 40000}, torch::kInt64), 1.0);
  EXPECT_TRUE(torch::equal(c, torch::tensor({-1.0f, 0.0f, 1.0f, 0.0f}))) << c;
  EXPECT_THROW(model::routing_bias_delta(torch::tensor({1.0, 2.0}), 1e-3), InvalidArgument);
}

// The bias is a parameter without gradient, zero at the start, named as DeepSeek-V3's.
TEST(Routing, BiasIsANamedParameterOnlyWhenBalancingByBias) {
  auto cfg = test::small_moe_config(32);
  EXPECT_EQ(model::CausalLM(cfg)->named_parameters().find("model.layers.0.mlp.gate.e_score_correction_bias"), nullptr);
  cfg.bias_update_rate = 1e-3;
  torch::manual_seed(1);
  model::CausalLM with_bias(cfg);
  const auto params = with_bias->named_parameters();
  for (const char* name : {"model.layers.0.mlp.gate.e_score_correction_bias", "model.layers.1.mlp.gate.e_score_correction_bias"}) {
    ASSERT_NE(params.find(name), nullptr) << name;
    EXPECT_EQ(params[name].count_nonzero().item<int64_t>(), 0) << name;
  }
  // Its presence draws nothing from the initialisation's generators: the other weights are the same.
  cfg.bias_update_rate = 0;
  torch::manual_seed(1);
  model::CausalLM without(cfg);
  for (const auto& p : without->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), params[p.key()])) << p.key();
}
