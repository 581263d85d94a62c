// The MoE layer (one sort-based path) equals both of the seeds' paths, kept as oracles: the
// training path (repeat_interleave + boolean masks) and the inference path (argsort + bincount +
// scatter_add_). Outputs and gradients in float64, including skewed routing. Plus the gate's
// aux losses against hand-computed values.
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "model/feed_forward.h"
#include "model/grouped_experts.h"
#include "model/moe_feed_forward.h"
#include "model/moe_gate.h"
#include "tests/reference/minimind_reference.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;
using moe::test::grad_or_zeros;

namespace {

model::ModelConfig moe_config(int64_t experts, int64_t top_k, int64_t shared) {
  return test::moe_layer_config(16, 24, experts, top_k, shared);
}

reference::ExpertWeights weights_of(const torch::nn::Module& m) {
  const auto& ff = dynamic_cast<const model::FeedForwardImpl&>(m);
  return {ff.gate_proj->weight, ff.up_proj->weight, ff.down_proj->weight};
}

struct Oracles {
  std::vector<reference::ExpertWeights> experts, shared;
};

Oracles oracle_weights(model::MoEFeedForwardImpl& moe_layer) {
  Oracles o;
  for (size_t e = 0; e < moe_layer.experts->size(); ++e) o.experts.push_back(weights_of(*moe_layer.experts[std::to_string(e)]));
  for (const auto& s : *moe_layer.shared_experts) o.shared.push_back(weights_of(*s));
  return o;
}

// Output and every gradient (input first, then parameters in registration order) for upstream grad g.
std::vector<torch::Tensor> output_and_grads(const std::function<torch::Tensor(const torch::Tensor&)>& f,
                                            const torch::Tensor& x, const torch::Tensor& g,
                                            model::MoEFeedForwardImpl& layer) {
  layer.zero_grad();
  auto xi = x.detach().clone().requires_grad_(true);
  const auto y = f(xi);
  y.backward(g);
  std::vector<torch::Tensor> out{y.detach(), xi.grad().clone()};
  for (const auto& p : layer.parameters()) out.push_back(grad_or_zeros(p));
  return out;
}

void expect_matches_both_oracles(const model::ModelConfig& cfg, model::MoEFeedForward& layer, const torch::Tensor& x) {
  const auto o = oracle_weights(*layer);
  const auto k = cfg.num_experts_per_tok;
  auto ours = [&](const torch::Tensor& xi) { return layer(xi).hidden; };
  auto training_path = [&](const torch::Tensor& xi) {
    return reference::moe_training_path(xi, layer->gate->weight, o.experts, o.shared, k, cfg.norm_topk_prob);
  };
  const auto g = torch::randn(x.sizes());
  for (bool training : {true, false}) {
    layer->train(training);
    const auto got = output_and_grads(ours, x, g, *layer);
    const auto want = output_and_grads(training_path, x, g, *layer);
    EXPECT_TRUE(all_close(got[0], want[0], 1e-12, 1e-10)) << "output vs training path, training=" << training;
    EXPECT_TRUE(all_close(got[1], want[1], 1e-12, 1e-10)) << "input gradient";
    const auto names = layer->named_parameters().keys();
    for (size_t i = 0; i < names.size(); ++i) {
      EXPECT_TRUE(all_close(got[i + 2], want[i + 2], 1e-12, 1e-10)) << "gradient of " << names[i];
    }
    const auto inference = reference::moe_inference_path(x, layer->gate->weight, o.experts, o.shared, k,
                                                         cfg.norm_topk_prob);
    EXPECT_TRUE(all_close(got[0], inference, 1e-12, 1e-10)) << "output vs inference path, training=" << training;
  }
}

}  // namespace

TEST(MoEFeedForward, ParameterNamesAreMiniMind2s) {
  model::MoEFeedForward layer(moe_config(4, 2, 2));
  const auto names = layer->named_parameters().keys();
  for (const char* n : {"gate.weight", "experts.0.gate_proj.weight", "experts.3.down_proj.weight",
                        "experts.2.up_proj.weight", "shared_experts.0.gate_proj.weight", "shared_experts.1.down_proj.weight"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  EXPECT_EQ(names.size(), 1u + 4 * 3 + 2 * 3);
}

class MoEVsOracles : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, bool>> {};

TEST_P(MoEVsOracles, RandomRouting) {
  test::DtypeAndSeed guard;
  const auto [experts, top_k, shared, norm] = GetParam();
  auto cfg = moe_config(experts, top_k, shared);
  cfg.norm_topk_prob = norm;
  model::MoEFeedForward layer(cfg);
  expect_matches_both_oracles(cfg, layer, torch::randn({3, 7, cfg.hidden_size}));
}

INSTANTIATE_TEST_SUITE_P(Configs, MoEVsOracles,
                         ::testing::Values(std::make_tuple(4, 2, 1, true), std::make_tuple(4, 2, 0, false),
                                           std::make_tuple(8, 3, 2, true), std::make_tuple(4, 1, 1, true),
                                           std::make_tuple(3, 3, 1, true)));

TEST(MoEFeedForward, EveryTokenToOneExpertLeavesOthersEmpty) {
  test::DtypeAndSeed guard;
  for (int64_t top_k : {1, 2}) {
    auto cfg = moe_config(4, top_k, 1);
    model::MoEFeedForward layer(cfg);
    {
      torch::NoGradGuard no_grad;
      layer->gate->weight.normal_(0, 0.01);
      layer->gate->weight[2].fill_(5.0);  // expert 2 wins for positive inputs
    }
    const auto x = torch::rand({2, 6, cfg.hidden_size}) + 1.0;
    const auto counts = layer(x).load.routed;
    EXPECT_EQ(counts[2].item<int64_t>(), 12) << "top_k " << top_k;
    if (top_k == 1) EXPECT_EQ(counts.sum().item<int64_t>(), 12);
    expect_matches_both_oracles(cfg, layer, x);
  }
}

TEST(MoEFeedForward, GroupingIsAStablePermutationByExpert) {
  const auto topk = torch::tensor({2, 0, 1, 2, 2, 0}, torch::kInt64).view({3, 2});
  const auto g = model::group_by_expert(topk, 4);
  EXPECT_TRUE(torch::equal(g.routed, torch::tensor({2, 1, 3, 0}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(g.kept, g.routed));
  // flat copies: 0:e2 1:e0 2:e1 3:e2 4:e2 5:e0 -> expert 0: 1,5; expert 1: 2; expert 2: 0,3,4
  EXPECT_TRUE(torch::equal(g.copy_order, torch::tensor({1, 5, 2, 0, 3, 4}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(g.token_of_copy, torch::tensor({0, 2, 1, 0, 1, 2}, torch::kInt64)));
}

TEST(MoEFeedForward, ExecutorReceivesSlicesByExpert) {
  struct Recording : model::ExpertExecutor {
    model::LocalExpertExecutor local;
    torch::Tensor seen;
    explicit Recording(torch::nn::ModuleDict e) : local(std::move(e)) {}
    bool all_counted = false;
    torch::Tensor run(const torch::Tensor& grouped, const torch::Tensor& counts, int64_t capacity) override {
      seen = counts;
      all_counted = capacity == 0;
      return local.run(grouped, counts, capacity);
    }
  };
  test::DtypeAndSeed guard;
  const auto cfg = moe_config(4, 2, 1);
  model::MoEFeedForward layer(cfg);
  const auto x = torch::randn({2, 5, cfg.hidden_size});
  const auto before = layer(x);
  auto recording = std::make_shared<Recording>(layer->experts);
  layer->set_executor(recording);
  const auto after = layer(x);
  EXPECT_TRUE(torch::equal(before.hidden, after.hidden));
  EXPECT_TRUE(torch::equal(recording->seen, after.load.routed));
  EXPECT_EQ(after.load.dropped.sum().item<int64_t>(), 0);
  EXPECT_TRUE(recording->all_counted);  // no capacity: every copy kept, the layer says so
}

// all_rows_counted only drops the masks of rows past the groups: where every row is counted the
// output and every gradient are the same bit for bit; where some are not, the masked path zeroes
// them (float32 on the CPU: _grouped_mm's per-group fallback).
TEST(MoEFeedForward, GroupedExpertsSkipTheMasksOnlyWhereEveryRowIsCounted) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  model::MoEFeedForward layer(moe_config(4, 2, 0));
  std::vector<model::FeedForward> experts;
  for (const auto& m : layer->experts->values()) experts.emplace_back(std::dynamic_pointer_cast<model::FeedForwardImpl>(m));
  const auto rows = torch::randn({10, 16});
  const auto upstream = torch::randn({10, 16});
  auto run = [&](const torch::Tensor& counts, bool all_counted) {
    layer->zero_grad();
    const auto leaf = rows.clone().requires_grad_(true);
    const auto out = model::grouped_swiglu(leaf, counts, experts, torch::kFloat32, /*training=*/false, all_counted);
    out.backward(upstream);
    std::vector<torch::Tensor> result{out.detach(), leaf.grad()};
    for (const auto& p : layer->parameters()) result.push_back(grad_or_zeros(p).clone());
    return result;
  };
  const auto all = torch::tensor({3, 0, 4, 3}, torch::kInt64);
  const auto masked = run(all, false), unmasked = run(all, true);
  for (size_t i = 0; i < masked.size(); ++i) EXPECT_TRUE(torch::equal(masked[i], unmasked[i])) << "tensor " << i;
  EXPECT_GT(masked[0].abs().sum().item<double>(), 0.0);
  const auto some = run(torch::tensor({3, 0, 2, 2}, torch::kInt64), false);  // rows 7..9 dropped
  EXPECT_TRUE(torch::equal(some[0].narrow(0, 7, 3), torch::zeros({3, 16})));
  EXPECT_TRUE(torch::equal(some[1].narrow(0, 7, 3), torch::zeros({3, 16})));
  // Same experts there, in products with fewer rows: the CPU's GEMM may block them differently (a
  // few float32 roundings apart on some CPUs, e.g. AMD EPYC's MKL paths).
  EXPECT_TRUE(torch::allclose(some[0].narrow(0, 0, 5), masked[0].narrow(0, 0, 5), 1e-6, 1e-6));
}

// The grouped-GEMM experts (one _grouped_mm for all experts; ATen's per-group fallback on the CPU,
// which takes float32 but not float64) equal the per-expert loop in float32: outputs, input and
// every parameter gradient, dropless and with a capacity limit, with experts that get no token
// (8 experts, 5 tokens). Tolerance: a few float32 roundings (2e-5 relative).
TEST(MoEFeedForward, GroupedExpertsEqualLoopInFloat32) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  for (double capacity : {0.0, 0.5}) {
    for (int64_t tokens : {5, 40}) {
      auto cfg = moe_config(8, 2, 1);
      cfg.capacity_factor = capacity;
      std::vector<std::vector<torch::Tensor>> runs;
      for (const std::string compute : {"loop", "grouped"}) {
        cfg.expert_compute = compute;
        torch::manual_seed(11);
        model::MoEFeedForward layer(cfg);
        torch::manual_seed(12);
        const auto x = torch::randn({1, tokens, cfg.hidden_size});
        runs.push_back(output_and_grads([&](const torch::Tensor& xi) { return layer(xi).hidden; }, x,
                                        torch::randn(x.sizes()), *layer));
      }
      for (size_t i = 0; i < runs[0].size(); ++i) {
        EXPECT_TRUE(all_close(runs[1][i], runs[0][i], 1e-6, 2e-5))
            << "tensor " << i << " (0 output, 1 input grad, then parameters), capacity " << capacity << ", tokens "
            << tokens;
      }
    }
  }
}

// Under bf16 autocast on the CPU (the path moe-bench-model's proxies take, and the GPU's casts):
// the grouped experts, whose weights are cast into one stacked bf16 tensor and whose gradients come
// back as slices of one float32 tensor, against the loop, whose weights autocast casts one by one.
// Every expert gradient is float32 with its weight's layout. Tolerance: bf16 (2e-2 relative).
TEST(MoEFeedForward, GroupedExpertsEqualLoopUnderBf16Autocast) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  auto cfg = test::moe_layer_config(64, 96, 8, 2, 1);
  std::vector<std::vector<torch::Tensor>> results;
  for (const std::string compute : {"loop", "grouped"}) {
    cfg.expert_compute = compute;
    torch::manual_seed(5);
    model::MoEFeedForward layer(cfg);
    torch::manual_seed(6);
    const auto x = torch::randn({2, 48, cfg.hidden_size}).requires_grad_(true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    const auto out = layer(x);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
    out.hidden.to(torch::kFloat32).square().sum().backward();
    std::vector<torch::Tensor> r{out.hidden.detach(), x.grad().clone()};
    for (const auto& p : layer->experts->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << compute << " " << p.key();
      EXPECT_EQ(p.value().grad().scalar_type(), torch::kFloat32) << compute << " " << p.key();
      EXPECT_EQ(p.value().grad().strides(), p.value().strides()) << compute << " " << p.key();
      r.push_back(p.value().grad().clone());
    }
    results.push_back(r);
  }
  for (size_t i = 0; i < results[0].size(); ++i) {
    EXPECT_LT(test::relative_error(results[1][i], results[0][i]), 2e-2)
        << "tensor " << i << " (0 output, 1 input grad, then expert parameters)";
  }
}

// Hand-computed: E=2, k=1, one sequence of 2 tokens with scores [[.7,.3],[.4,.6]]; mean score [.55,.45].
TEST(AuxLoss, SequenceLevelHandValues) {
  test::DtypeAndSeed guard;
  const auto scores = torch::tensor({0.7, 0.3, 0.4, 0.6}).view({1, 2, 2});
  // Balanced choices (0, 1): share*E/(T*k) = [1, 1]; 1*.55 + 1*.45 = 1.0.
  EXPECT_NEAR(model::sequence_aux_loss(scores, torch::tensor({0, 1}, torch::kInt64).view({1, 2}), 1, 0.1).item<double>(),
              0.1, 1e-15);
  // Both to expert 0: [2, 0] -> 2 * .55 = 1.1.
  EXPECT_NEAR(model::sequence_aux_loss(scores, torch::tensor({0, 0}, torch::kInt64).view({1, 2}), 1, 0.1).item<double>(),
              0.11, 1e-15);
  // Two sequences average: (1.0 + 1.1) / 2.
  const auto two = torch::cat({scores, scores});
  EXPECT_NEAR(model::sequence_aux_loss(two, torch::tensor({0, 1, 0, 0}, torch::kInt64).view({2, 2}), 1, 1.0).item<double>(),
              1.05, 1e-15);
}

TEST(AuxLoss, BatchLevelHandValues) {
  test::DtypeAndSeed guard;
  const auto scores = torch::tensor({0.7, 0.3, 0.4, 0.6}).view({2, 2});
  // Pi = [.55, .45]; both to expert 0: fi = [1, 0] * 2 -> 1.1.
  EXPECT_NEAR(model::batch_aux_loss(scores, torch::tensor({0, 0}, torch::kInt64).view({2, 1}), 0.1).item<double>(),
              0.11, 1e-15);
  // top-2 of 2 experts: every expert chosen by every token: fi = [.5, .5] * 2 -> .55 + .45 = 1.
  EXPECT_NEAR(model::batch_aux_loss(scores, torch::tensor({0, 1, 1, 0}, torch::kInt64).view({2, 2}), 1.0).item<double>(),
              1.0, 1e-15);
}

TEST(AuxLoss, GateUsesConfiguredVariantOnlyWhenTrainingWithAlpha) {
  test::DtypeAndSeed guard;
  for (bool seq_aux : {true, false}) {
    auto cfg = moe_config(4, 2, 0);
    cfg.seq_aux = seq_aux;
    cfg.aux_loss_alpha = 0.3;
    model::MoEGate gate(cfg);
    const auto x = torch::randn({3, 5, cfg.hidden_size});
    gate->train();
    const auto r = gate(x);
    // Independent loop formula over the seeds' definitions.
    const auto scores = torch::softmax(torch::matmul(x.view({15, -1}), gate->weight.t()), -1);
    const auto idx = r.topk_idx.view({15, 2});
    double expected = 0;
    if (seq_aux) {
      for (int64_t b = 0; b < 3; ++b) {
        for (int64_t e = 0; e < 4; ++e) {
          double chosen = 0, mean_score = 0;
          for (int64_t t = 0; t < 5; ++t) {
            mean_score += scores[b * 5 + t][e].item<double>() / 5;
            for (int64_t s = 0; s < 2; ++s) chosen += idx[b * 5 + t][s].item<int64_t>() == e;
          }
          expected += chosen / (5.0 * 2 / 4) * mean_score / 3;
        }
      }
    } else {
      for (int64_t e = 0; e < 4; ++e) {
        const double share = (idx == e).sum().item<double>() / 30.0;
        expected += scores.select(1, e).mean().item<double>() * share * 4;
      }
    }
    EXPECT_NEAR(r.aux_loss.item<double>(), expected * 0.3, 1e-12) << "seq_aux " << seq_aux;
    gate->eval();
    EXPECT_EQ(gate(x).aux_loss.item<double>(), 0.0);
    cfg.aux_loss_alpha = 0.0;
    model::MoEGate no_alpha(cfg);
    no_alpha->train();
    EXPECT_EQ(no_alpha(x).aux_loss.item<double>(), 0.0);
  }
}

TEST(MoEGate, RoutingMathInFloat32ForBFloat16Inputs) {
  auto cfg = moe_config(4, 2, 0);
  model::MoEGate gate(cfg);
  const auto r = gate(torch::randn({2, 3, cfg.hidden_size}).to(torch::kBFloat16));
  EXPECT_EQ(r.topk_weight.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(all_close(r.topk_weight.sum(-1), torch::ones({6}), 1e-6, 0));
}

TEST(Capacity, GroupingKeepsEachExpertsFirstCopiesInTokenOrder) {
  // flat copies: 0:e2 1:e0 2:e1 3:e2 4:e2 5:e0. Capacity 1 keeps 1 (e0), 2 (e1), 0 (e2); drops 5, 3, 4.
  const auto topk = torch::tensor({2, 0, 1, 2, 2, 0}, torch::kInt64).view({3, 2});
  const auto g = model::group_by_expert(topk, 4, /*capacity=*/1);
  EXPECT_TRUE(torch::equal(g.copy_order, torch::tensor({1, 2, 0, 5, 3, 4}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(g.token_of_copy, torch::tensor({0, 1, 0, 2, 1, 2}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(g.routed, torch::tensor({2, 1, 3, 0}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(g.kept, torch::tensor({1, 1, 1, 0}, torch::kInt64)));
  EXPECT_EQ(model::expert_capacity(0.0, 3, 2, 4), 0);
  EXPECT_EQ(model::expert_capacity(1.0, 3, 2, 4), 2);   // ceil(1.5)
  EXPECT_EQ(model::expert_capacity(1.25, 8, 2, 4), 5);
}

// Reference by explicit loops: each expert takes its first `capacity` (token, slot) copies in token
// order; a dropped copy adds nothing to its token.
TEST(Capacity, LayerDropsOverflowDeterministicallyInTrainingOnly) {
  test::DtypeAndSeed guard;
  auto cfg = moe_config(4, 2, 1);
  cfg.capacity_factor = 0.5;  // capacity = ceil(0.5 * 12 * 2 / 4) = 3 of 12 * 2 copies
  model::MoEFeedForward layer(cfg);
  {
    torch::NoGradGuard no_grad;
    layer->gate->weight[1].add_(0.5);  // skew: expert 1 gets more than its share
  }
  const auto x = torch::randn({2, 6, cfg.hidden_size});
  layer->train();
  const auto out = layer(x);
  const auto route = layer->gate(x);
  const int64_t capacity = 3;
  auto want = torch::zeros({12, cfg.hidden_size});
  std::vector<int64_t> taken(4, 0), routed(4, 0);
  const auto flat = x.view({12, -1});
  for (int64_t t = 0; t < 12; ++t) {
    for (int64_t s = 0; s < 2; ++s) {
      const auto e = route.topk_idx[t][s].item<int64_t>();
      ++routed[e];
      if (taken[e]++ >= capacity) continue;
      auto expert = layer->experts[std::to_string(e)]->as<model::FeedForward>();
      want[t] += route.topk_weight[t][s] * expert->forward(flat[t].unsqueeze(0))[0];
    }
  }
  want += layer->shared_experts[0]->as<model::FeedForward>()->forward(flat);
  EXPECT_TRUE(all_close(out.hidden.view({12, -1}), want, 1e-12, 1e-10));
  int64_t dropped = 0;
  for (int64_t e = 0; e < 4; ++e) {
    EXPECT_EQ(out.load.routed[e].item<int64_t>(), routed[e]);
    EXPECT_EQ(out.load.dropped[e].item<int64_t>(), std::max<int64_t>(0, routed[e] - capacity)) << "expert " << e;
    dropped += std::max<int64_t>(0, routed[e] - capacity);
  }
  EXPECT_GT(dropped, 0) << "the test's routing must overflow some expert";
  // Gradients flow through the kept copies only; the run is deterministic.
  auto xi = x.clone().requires_grad_(true);
  layer(xi).hidden.sum().backward();
  EXPECT_TRUE(torch::isfinite(xi.grad()).all().item<bool>());
  EXPECT_TRUE(torch::equal(layer(x).hidden, out.hidden));
  // Evaluation is dropless.
  layer->eval();
  const auto eval_out = layer(x);
  EXPECT_EQ(eval_out.load.dropped.sum().item<int64_t>(), 0);
  EXPECT_FALSE(all_close(eval_out.hidden, out.hidden, 1e-12, 1e-10));
}

// The global-batch variant: shares from counts summed over ranks. Two "ranks" simulated in one
// process: the average of their losses equals the loss of the concatenated batch.
TEST(AuxLoss, GlobalBatchSharesEqualTheConcatenatedBatch) {
  test::DtypeAndSeed guard;
  const auto scores = torch::softmax(torch::randn({10, 4}), -1);
  const auto idx = std::get<1>(scores.topk(2, -1));
  const auto a = scores.narrow(0, 0, 5), b = scores.narrow(0, 5, 5);
  const auto ia = idx.narrow(0, 0, 5), ib = idx.narrow(0, 5, 5);
  const auto total = torch::bincount(idx.reshape({-1}), {}, 4).to(torch::kFloat64);
  const model::CountReducer all_ranks = [&](const torch::Tensor&) { return total.clone(); };
  const auto global = (model::batch_aux_loss(a, ia, 0.1, all_ranks) + model::batch_aux_loss(b, ib, 0.1, all_ranks)) / 2;
  EXPECT_NEAR(global.item<double>(), model::batch_aux_loss(scores, idx, 0.1).item<double>(), 1e-15);
  const auto local = (model::batch_aux_loss(a, ia, 0.1) + model::batch_aux_loss(b, ib, 0.1)) / 2;
  EXPECT_GT(std::abs(local.item<double>() - global.item<double>()), 1e-6) << "the test must tell the two apart";
}
