// The model on CUDA against references: fp32 on the GPU against the CPU in float64 (whole model:
// logits, loss, every gradient; the MoE layer against the seeds' training path), bf16 autocast
// against fp32 on the GPU, the grouped-GEMM experts against the per-expert loop, greedy generation
// against the CPU. Every test skips, saying so, where no CUDA device is visible.
//
// Tolerances: fp32 on the GPU without TF32 differs from float64 by accumulated float32 rounding
// (~1e-7 relative per operation; we allow 1e-4 relative in norm). bf16 keeps 8 significant bits
// (relative rounding 2^-9 = 2e-3 per operation); through a 2-layer model we allow 3e-2 relative
// in norm for outputs and 6e-2 for gradients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/causal_lm.h"
#include "model/feed_forward.h"
#include "model/generate.h"
#include "model/moe_feed_forward.h"
#include "tests/reference/minimind_reference.h"
#include "tests/support.h"
#include "trainer/device.h"
#include "trainer/graphed_step.h"

using namespace moe;
using moe::test::all_close;

namespace {

#define SKIP_WITHOUT_CUDA()                                                                           \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible: the CUDA path is tested " \
                                                    "on the GPU machine (README, GPU status)"

const torch::Device kCuda(torch::kCUDA, 0);

using test::relative_error;

// The same weights: a second model built from the same seed.
model::CausalLM build(const model::ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  return model::CausalLM(c);
}

struct Run {
  torch::Tensor logits, loss;
  std::vector<std::pair<std::string, torch::Tensor>> grads;
};

Run forward_backward(model::CausalLM& lm, const torch::Tensor& x, const torch::Tensor& y, bool autocast) {
  lm->zero_grad();
  model::CausalLMOutput out;
  {
    trainer::AutocastScope scope(autocast);
    out = lm(x, y);
  }
  out.loss.backward();
  Run r{out.logits.detach(), out.loss.detach(), {}};
  for (const auto& p : lm->named_parameters()) r.grads.emplace_back(p.key(), test::grad_or_zeros(p.value()));
  return r;
}

}  // namespace

TEST(CudaModel, Fp32OnGpuEqualsFloat64OnCpu) {
  SKIP_WITHOUT_CUDA();
  test::DtypeAndSeed guard;  // float64 reference
  auto cfg = test::small_moe_config(64);
  auto ref = build(cfg, 1);
  auto gpu = build(cfg, 1);
  gpu->to(kCuda, torch::kFloat32);
  const auto x = torch::randint(64, {3, 16}, torch::kInt64), y = torch::randint(64, {3, 16}, torch::kInt64);
  const auto want = forward_backward(ref, x, y, false);
  const auto got = forward_backward(gpu, x.to(kCuda), y.to(kCuda), false);
  EXPECT_LT(relative_error(got.logits, want.logits), 1e-4);
  EXPECT_NEAR(got.loss.item<double>(), want.loss.item<double>(), 1e-4 * std::abs(want.loss.item<double>()));
  for (size_t i = 0; i < want.grads.size(); ++i) {
    EXPECT_LT(relative_error(got.grads[i].second, want.grads[i].second), 1e-4) << want.grads[i].first;
  }
}

TEST(CudaModel, Bf16AutocastEqualsFp32WithinBf16Rounding) {
  SKIP_WITHOUT_CUDA();
  auto cfg = test::small_moe_config(64);
  auto lm = build(cfg, 2);
  lm->to(kCuda);
  torch::manual_seed(3);
  const auto x = torch::randint(64, {4, 16}, torch::kInt64).to(kCuda);
  const auto y = torch::randint(64, {4, 16}, torch::kInt64).to(kCuda);
  const auto fp32 = forward_backward(lm, x, y, false);
  const auto bf16 = forward_backward(lm, x, y, true);
  EXPECT_LT(relative_error(bf16.logits, fp32.logits), 3e-2);
  EXPECT_NEAR(bf16.loss.item<double>(), fp32.loss.item<double>(), 3e-2 * fp32.loss.item<double>());
  for (size_t i = 0; i < fp32.grads.size(); ++i) {
    if (fp32.grads[i].second.norm().item<double>() == 0) continue;  // an expert no token chose
    EXPECT_LT(relative_error(bf16.grads[i].second, fp32.grads[i].second), 6e-2) << fp32.grads[i].first;
  }
}

// The MoE layer in fp32 on the GPU (loop and grouped experts) against the seeds' training path in
// float64 on the CPU: outputs and input gradients.
TEST(CudaModel, MoELayerFp32EqualsSeedsTrainingPath) {
  SKIP_WITHOUT_CUDA();
  test::DtypeAndSeed guard;
  auto cfg = test::moe_layer_config(64, 96, 4, 2, 1);
  for (const std::string compute : {"loop", "grouped"}) {
    cfg.expert_compute = compute;
    torch::manual_seed(4);
    model::MoEFeedForward layer(cfg);
    std::vector<reference::ExpertWeights> experts, shared;
    for (size_t e = 0; e < layer->experts->size(); ++e) {
      auto ff = layer->experts[std::to_string(e)]->as<model::FeedForward>();
      experts.push_back({ff->gate_proj->weight, ff->up_proj->weight, ff->down_proj->weight});
    }
    for (const auto& s : *layer->shared_experts) {
      auto ff = s->as<model::FeedForward>();
      shared.push_back({ff->gate_proj->weight, ff->up_proj->weight, ff->down_proj->weight});
    }
    const auto x = torch::randn({2, 24, cfg.hidden_size});
    const auto g = torch::randn_like(x);
    auto xr = x.clone().requires_grad_(true);
    const auto want = reference::moe_training_path(xr, layer->gate->weight, experts, shared, 2, cfg.norm_topk_prob);
    want.backward(g);
    layer->zero_grad();  // the reference's CPU gradients must not meet the GPU ones
    layer->to(kCuda, torch::kFloat32);
    auto xg = x.to(kCuda, torch::kFloat32).requires_grad_(true);
    const auto got = layer(xg).hidden;
    got.backward(g.to(kCuda, torch::kFloat32));
    EXPECT_LT(relative_error(got, want), 1e-5) << compute;
    EXPECT_LT(relative_error(xg.grad(), xr.grad()), 1e-5) << compute;
  }
}

// bf16: the grouped experts against the loop under the same autocast, with and without a capacity
// limit (dropped copies must contribute exactly nothing), outputs and every gradient.
TEST(CudaModel, GroupedExpertsEqualLoopInBf16) {
  SKIP_WITHOUT_CUDA();
  for (double capacity : {0.0, 0.6}) {
    auto cfg = test::moe_layer_config(128, 256, 8, 2, 1);
    cfg.capacity_factor = capacity;
    std::vector<std::vector<torch::Tensor>> results;
    for (const std::string compute : {"loop", "grouped"}) {
      cfg.expert_compute = compute;
      torch::manual_seed(5);
      model::MoEFeedForward layer(cfg);
      layer->to(kCuda);
      layer->train();
      torch::manual_seed(6);
      auto x = torch::randn({4, 64, cfg.hidden_size}, torch::TensorOptions().device(kCuda)).requires_grad_(true);
      model::MoEOutput out;
      {
        trainer::AutocastScope scope(true);
        out = layer(x);
      }
      (out.hidden.to(torch::kFloat32).square().sum() + out.aux_loss).backward();
      std::vector<torch::Tensor> r{out.hidden.detach().to(torch::kFloat32), x.grad().clone(), out.load.dropped};
      for (const auto& p : layer->parameters()) r.push_back(test::grad_or_zeros(p));
      results.push_back(r);
    }
    const auto& loop = results[0];
    const auto& grouped = results[1];
    EXPECT_TRUE(torch::equal(loop[2], grouped[2])) << "same drops, capacity " << capacity;
    if (capacity > 0) EXPECT_GT(loop[2].sum().item<int64_t>(), 0) << "the capacity must drop copies";
    EXPECT_LT(relative_error(grouped[0], loop[0]), 1e-2) << "output, capacity " << capacity;
    EXPECT_LT(relative_error(grouped[1], loop[1]), 2e-2) << "input gradient, capacity " << capacity;
    for (size_t i = 3; i < loop.size(); ++i) {
      if (loop[i].norm().item<double>() == 0) {
        EXPECT_EQ(grouped[i].norm().item<double>(), 0) << "parameter " << i - 3;
        continue;
      }
      EXPECT_LT(relative_error(grouped[i], loop[i]), 2e-2) << "parameter " << i - 3 << ", capacity " << capacity;
    }
  }
}

TEST(CudaModel, GreedyGenerationEqualsCpu) {
  SKIP_WITHOUT_CUDA();
  auto cfg = test::small_moe_config(64);
  auto cpu = build(cfg, 7);
  auto gpu = build(cfg, 7);
  gpu->to(kCuda);
  model::SamplingConfig greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 12;
  const std::vector<std::vector<int64_t>> prompts = {{5, 9, 3}, {7}, {1, 2, 3, 4, 5}};
  EXPECT_EQ(model::generate(gpu, prompts, greedy), model::generate(cpu, prompts, greedy));
  // Sampled generation runs and stays in the vocabulary.
  model::SamplingConfig sampled;
  sampled.temperature = 0.8;
  sampled.top_p = 0.9;
  sampled.max_new_tokens = 8;
  for (const auto& row : model::generate(gpu, prompts, sampled)) {
    for (auto token : row) EXPECT_TRUE(token >= 0 && token < 64) << token;
  }
}

// The forward and backward replayed from a CUDA graph equal the eager ones (bf16 autocast, grouped
// experts): the same kernels on the same data, so the loss and every gradient agree to float32
// rounding, for two different batches (the graph re-reads its inputs).
TEST(CudaModel, GraphedStepEqualsEagerStep) {
  SKIP_WITHOUT_CUDA();
  auto cfg = test::small_moe_config(64);
  auto lm = build(cfg, 8), eager_lm = build(cfg, 8);  // the same weights; the graph owns lm's gradients
  lm->to(kCuda);
  eager_lm->to(kCuda);
  trainer::GraphedStep graphed(lm, 4, 16, /*autocast=*/true);
  for (int batch = 0; batch < 2; ++batch) {
    torch::manual_seed(20 + batch);
    const auto x = torch::randint(64, {4, 16}, torch::kInt64).to(kCuda);
    const auto y = torch::randint(64, {4, 16}, torch::kInt64).to(kCuda);
    const auto loss = graphed.run(x, y).loss.item<double>();
    std::vector<torch::Tensor> replayed;
    for (const auto& p : lm->parameters()) replayed.push_back(p.grad().clone());
    const auto eager = forward_backward(eager_lm, x, y, true);
    EXPECT_NEAR(loss, eager.loss.item<double>(), 1e-5 * std::abs(loss)) << "batch " << batch;
    for (size_t i = 0; i < replayed.size(); ++i) {
      EXPECT_TRUE(all_close(replayed[i], eager.grads[i].second, 1e-6, 1e-4)) << eager.grads[i].first;
    }
  }
}

// train.recompute act, weights, and act,weights (the graph) on the GPU, grouped experts under bf16
// autocast: the same loss and gradients as keeping the activation and the weight stacks (the same kernels run, the down product's weight gradient as one grouped
// product of grad^T and the recomputed activation: equal up to its summation order, well within
// bf16's rounding: 1e-2 relative in norm), eager and replayed as a CUDA graph.
TEST(CudaModel, RecomputedActivationEqualsKeptActivation) {
  SKIP_WITHOUT_CUDA();
  auto cfg = test::small_moe_config(64);
  cfg.expert_compute = "grouped";
  auto kept = build(cfg, 9), recomputed = build(cfg, 9), recast = build(cfg, 9), graphed_lm = build(cfg, 9);
  model::set_activation_recompute(*recomputed, true);
  model::set_weight_recast(*recast, true);
  model::set_recompute(*graphed_lm, model::parse_recompute("act,weights"));
  for (auto* lm : {&kept, &recomputed, &recast, &graphed_lm}) (*lm)->to(kCuda);
  trainer::GraphedStep graphed(graphed_lm, 4, 16, /*autocast=*/true);
  torch::manual_seed(30);
  const auto x = torch::randint(64, {4, 16}, torch::kInt64).to(kCuda);
  const auto y = torch::randint(64, {4, 16}, torch::kInt64).to(kCuda);
  const auto reference = forward_backward(kept, x, y, true);
  const auto eager = forward_backward(recomputed, x, y, true);
  const auto recast_eager = forward_backward(recast, x, y, true);
  const auto replayed_loss = graphed.run(x, y).loss.item<double>();
  EXPECT_NEAR(eager.loss.item<double>(), reference.loss.item<double>(), 1e-5 * reference.loss.item<double>());
  EXPECT_NEAR(replayed_loss, reference.loss.item<double>(), 1e-5 * reference.loss.item<double>());
  EXPECT_NEAR(recast_eager.loss.item<double>(), reference.loss.item<double>(), 1e-5 * reference.loss.item<double>());
  const auto params = graphed_lm->parameters();
  for (size_t i = 0; i < reference.grads.size(); ++i) {
    if (reference.grads[i].second.norm().item<double>() == 0) continue;  // an expert no token chose
    EXPECT_LT(relative_error(eager.grads[i].second, reference.grads[i].second), 1e-2) << reference.grads[i].first;
    EXPECT_LT(relative_error(recast_eager.grads[i].second, reference.grads[i].second), 1e-2)
        << "recast " << reference.grads[i].first;
    EXPECT_LT(relative_error(params[i].grad(), reference.grads[i].second), 1e-2) << "graphed " << reference.grads[i].first;
  }
}
