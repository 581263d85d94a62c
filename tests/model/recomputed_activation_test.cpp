// The recomputed activation (model/recomputed_activation.h, train.recompute act): the same values
// and gradients as the plain composition bit for bit (the same operators run, in the backward
// instead of the forward), against a float64 per-expert reference, through a whole model under
// bf16 autocast, and with less memory kept from the forward for the backward. The same for the
// experts' weight stacks (recompute weights) and whole blocks (recompute block).
#include <ATen/ops/_grouped_mm.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "bench/step_proxies.h"
#include "model/causal_lm.h"
#include "model/feed_forward.h"
#include "model/functional.h"
#include "model/recomputed_activation.h"
#include "tests/support.h"
#include "trainer/device.h"

namespace moe::model {
namespace {

using test::all_close;

// Before any tensor: every free during a recording is then counted.
const bool kTracking = (bench::track_cpu_allocations(), true);

const std::vector<std::string> kActivations{"silu", "gelu", "relu"};

struct Leaves {
  std::vector<torch::Tensor> tensors;
  std::vector<torch::Tensor> fresh() const {
    std::vector<torch::Tensor> out;
    for (const auto& t : tensors) out.push_back(t.detach().clone().requires_grad_(true));
    return out;
  }
};

// out, then each leaf's gradient, for f(leaves) under the upstream gradient `grad`.
std::vector<torch::Tensor> value_and_grads(const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& f,
                                           const Leaves& leaves, const torch::Tensor& grad) {
  auto inputs = leaves.fresh();
  const auto out = f(inputs);
  out.backward(grad);
  std::vector<torch::Tensor> result{out.detach()};
  for (const auto& t : inputs) result.push_back(t.grad());
  return result;
}

TEST(RecomputedActivation, GatedLinearEqualsTheCompositionBitForBit) {
  for (const auto dtype : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
    for (const auto& act : kActivations) {
      torch::manual_seed(1);
      const auto opts = torch::TensorOptions().dtype(dtype);
      const Leaves leaves{{torch::randn({2, 5, 24}, opts), torch::randn({7, 12}, opts)}};
      const auto grad = torch::randn({2, 5, 7}, opts);
      const auto plain = value_and_grads(
          [&](const auto& t) {
            return torch::linear(activation(t[0].narrow(-1, 0, 12), act) * t[0].narrow(-1, 12, 12), t[1]);
          },
          leaves, grad);
      const auto recomputed =
          value_and_grads([&](const auto& t) { return recomputed_gated_linear(t[0], t[1], act); }, leaves, grad);
      for (size_t i = 0; i < plain.size(); ++i) {
        EXPECT_TRUE(torch::equal(recomputed[i], plain[i]))
            << "tensor " << i << " (0 value, then [gate | up] and weight gradients), " << act << ", " << dtype;
      }
    }
  }
}

// hidden [10, 2 x 8], 3 experts of [16, 8], groups of 3, 0 and 5 rows, 2 rows past the last group
// (_grouped_mm takes rows of a multiple of 16 bytes).
struct GroupedCase {
  Leaves leaves;
  torch::Tensor ends = torch::tensor({3, 3, 8}, torch::kInt32);
  int64_t rows = 8;
  explicit GroupedCase(c10::ScalarType dtype)
      : leaves{{torch::randn({10, 16}, torch::dtype(dtype)), torch::randn({3, 16, 8}, torch::dtype(dtype))}} {}
};

TEST(RecomputedActivation, GroupedGatedLinearEqualsTheCompositionBitForBit) {
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (const auto& act : kActivations) {
      torch::manual_seed(2);
      const GroupedCase c(dtype);
      const auto grad = torch::randn({10, 16}, torch::dtype(dtype));
      const auto valid = (torch::arange(10) < c.rows).unsqueeze(1);
      // As grouped_swiglu masks: rows past the last group are not written by _grouped_mm.
      const auto plain = value_and_grads(
          [&](const auto& t) {
            return torch::where(valid, at::_grouped_mm(gated_activation(t[0], act), t[1].transpose(1, 2), c.ends), 0);
          },
          c.leaves, grad);
      const auto recomputed = value_and_grads(
          [&](const auto& t) { return torch::where(valid, recomputed_grouped_gated_linear(t[0], t[1], c.ends, act), 0); },
          c.leaves, grad);
      EXPECT_TRUE(torch::equal(recomputed[0], plain[0])) << "value, " << act << ", " << dtype;
      EXPECT_TRUE(torch::equal(recomputed[1].narrow(0, 0, c.rows), plain[1].narrow(0, 0, c.rows)))
          << "hidden's gradient, " << act << ", " << dtype;
      EXPECT_TRUE(torch::equal(recomputed[2], plain[2])) << "down's gradient, " << act << ", " << dtype;
    }
  }
}

// Independent of _grouped_mm's autograd: each expert's rows through float64 autograd.
TEST(RecomputedActivation, GroupedGatedLinearMatchesAFloat64PerExpertReference) {
  torch::manual_seed(3);
  const GroupedCase c(torch::kFloat32);
  const auto grad = torch::randn({10, 16});
  const auto ours = value_and_grads(
      [&](const auto& t) { return recomputed_grouped_gated_linear(t[0], t[1], c.ends, "silu"); }, c.leaves, grad);
  const auto hidden = c.leaves.tensors[0].to(torch::kFloat64).requires_grad_(true);
  const auto down = c.leaves.tensors[1].to(torch::kFloat64).requires_grad_(true);
  std::vector<torch::Tensor> parts;
  for (int64_t e = 0, begin = 0; e < 3; ++e) {
    const auto end = c.ends[e].item<int64_t>();
    const auto h = hidden.narrow(0, begin, end - begin);
    parts.push_back(torch::matmul(torch::silu(h.narrow(1, 0, 8)) * h.narrow(1, 8, 8), down[e].t()));
    begin = end;
  }
  const auto reference = torch::cat(parts);
  reference.backward(grad.narrow(0, 0, c.rows).to(torch::kFloat64));
  // float32 sums of 8 (forward), 16 (hidden's gradient) and up to 5 (down's) products: a few roundings.
  EXPECT_TRUE(all_close(ours[0].narrow(0, 0, c.rows), reference, 1e-5, 1e-5));
  EXPECT_TRUE(all_close(ours[1].narrow(0, 0, c.rows), hidden.grad().narrow(0, 0, c.rows), 1e-5, 1e-5));
  EXPECT_TRUE(all_close(ours[2], down.grad(), 1e-5, 1e-5));
}

TEST(RecomputedActivation, NamesWhatItCannotTake) {
  const auto hidden = torch::randn({4, 12});
  try {
    recomputed_gated_linear(hidden, torch::randn({3, 5}), "silu");
    FAIL() << "a weight of the wrong width was taken";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 5]"), std::string::npos) << e.what();
  }
  try {
    recomputed_gated_linear(hidden.requires_grad_(true), torch::randn({3, 6}), "tanh").sum().backward();
    FAIL() << "an unknown activation was taken";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("'tanh'"), std::string::npos) << e.what();
  }
}

// Loss and every parameter gradient of a small MoE model (routed experts grouped or in a loop, a
// shared expert) with and without recomputation (of the activation, of the experts' bf16 weights,
// of both, of whole blocks), under bf16 autocast as on a GPU: bit for bit.
TEST(RecomputedActivation, WholeModelUnchangedBitForBit) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  for (const std::string compute : {"grouped", "loop"}) {
    auto cfg = test::small_moe_config(64);
    cfg.expert_compute = compute;
    std::vector<std::vector<torch::Tensor>> runs;
    const std::vector<std::string> choices{"none", "act", "weights", "act,weights", "block"};
    for (const auto& choice : choices) {
      torch::manual_seed(7);
      CausalLM lm(cfg);
      set_recompute(*lm, parse_recompute(choice));
      const auto ids = torch::randint(0, 64, {2, 16});
      const auto out = [&] {
        trainer::AutocastScope autocast(true, torch::kCPU);
        return lm(ids, ids);
      }();
      out.loss.backward();
      std::vector<torch::Tensor> r{out.loss.detach()};
      for (const auto& p : lm->named_parameters()) r.push_back(p.value().grad().defined() ? p.value().grad() : torch::Tensor());
      runs.push_back(r);
    }
    const auto names = CausalLM(cfg)->named_parameters().keys();
    for (size_t run = 1; run < runs.size(); ++run) {
      const auto label = compute + ", recompute " + choices[run];
      ASSERT_EQ(runs[0].size(), runs[run].size());
      EXPECT_TRUE(torch::equal(runs[run][0], runs[0][0])) << label << ": loss";
      for (size_t i = 1; i < runs[0].size(); ++i) {
        ASSERT_EQ(runs[run][i].defined(), runs[0][i].defined()) << label << ": " << names[i - 1];
        if (runs[0][i].defined()) EXPECT_TRUE(torch::equal(runs[run][i], runs[0][i])) << label << ": " << names[i - 1];
      }
    }
  }
}

// What the forward keeps for the backward: L feed-forward layers in a row, tokens T, width I,
// float32. Without recomputation each layer keeps gate, act(gate), up and their product; with it,
// [gate | up]. The peak (at the end of the forward) is then lower by 2 x T x I x 4 bytes for every
// layer but the last (whose transients the forward's peak includes either way).
TEST(RecomputedActivation, KeepsTwoFewerActivationsPerLayer) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  constexpr int64_t layers = 6, tokens = 64, width = 128;
  ModelConfig cfg;
  cfg.hidden_size = 32;
  cfg.intermediate_size = width;
  std::vector<int64_t> peaks;
  for (const bool recompute : {false, true}) {
    torch::manual_seed(4);
    std::vector<FeedForward> stack;
    for (int64_t l = 0; l < layers; ++l) {
      stack.emplace_back(cfg);
      stack.back()->set_recompute_activation(recompute);
    }
    auto x = torch::randn({tokens, cfg.hidden_size}).requires_grad_(true);
    torch::Tensor y;
    {
      bench::ProxyRecorder recorder(torch::kCPU);
      y = x;
      for (auto& ff : stack) y = ff(y);
      peaks.push_back(recorder.result().peak_bytes);
    }
    y.sum().backward();  // the graph holds what it saved until here
  }
  const int64_t per_layer = 2 * tokens * width * 4;
  EXPECT_GE(peaks[0] - peaks[1], (layers - 1) * per_layer) << "peaks without and with: " << peaks[0] << ", " << peaks[1];
}

// The grouped experts' bf16 weight stacks recast in the backward (recompute weights): what the
// forward keeps drops by both stacks of every layer, 3 x E x H x I x 2 bytes; each layer's forward
// still makes them (a transient), so the peak drops by that of all layers but one.
TEST(RecomputedWeights, KeepsNoWeightStacks) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  auto cfg = test::small_moe_config(64);
  cfg.expert_compute = "grouped";
  cfg.hidden_size = 64;
  cfg.intermediate_size = 256;
  cfg.num_hidden_layers = 4;
  cfg.n_routed_experts = 8;
  std::vector<int64_t> peaks;
  for (const auto* choice : {"none", "weights"}) {
    torch::manual_seed(7);
    CausalLM lm(cfg);
    set_recompute(*lm, parse_recompute(choice));
    const auto ids = torch::randint(0, 64, {2, 16});
    bench::ProxyRecorder recorder(torch::kCPU);
    trainer::AutocastScope autocast(true, torch::kCPU);
    const auto out = lm(ids, ids);
    peaks.push_back(recorder.result().peak_bytes);
  }
  const int64_t stacks = 3 * cfg.n_routed_experts * cfg.hidden_size * cfg.resolved_intermediate_size() * 2;
  EXPECT_GE(peaks[0] - peaks[1], (cfg.num_hidden_layers - 1) * stacks)
      << "peaks kept and recast: " << peaks[0] << ", " << peaks[1];
}

TEST(RecomputedWeights, ParsesTheChoicesAndNamesAnyOther) {
  EXPECT_FALSE(parse_recompute("none").activation);
  EXPECT_FALSE(parse_recompute("none").weights);
  EXPECT_TRUE(parse_recompute("act").activation && !parse_recompute("act").weights);
  EXPECT_TRUE(!parse_recompute("weights").activation && parse_recompute("weights").weights);
  EXPECT_TRUE(parse_recompute("act,weights").activation && parse_recompute("act,weights").weights);
  EXPECT_TRUE(parse_recompute("block").block && !parse_recompute("act,weights").block);
  test::expect_refusal([] { parse_recompute("weight"); },
                       {"recompute 'weight'", "none, act, weights, act,weights, block"});
}

// Whole blocks recomputed (model/recomputed_block.h): the forward keeps each block's input only, so
// its peak stays about one block's activations however many blocks there are, where without it the
// activations of every block add up; a float32 model of 6 blocks against 1.
TEST(RecomputedBlock, KeepsOnlyEachBlocksInput) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  auto peak_of = [](int64_t layers, const char* choice) {
    auto cfg = test::small_moe_config(64);
    cfg.num_hidden_layers = layers;
    torch::manual_seed(7);
    CausalLM lm(cfg);
    set_recompute(*lm, parse_recompute(choice));
    const auto ids = torch::randint(0, 64, {4, 32});
    bench::ProxyRecorder recorder(torch::kCPU);
    const auto out = lm(ids, ids);
    return recorder.result().peak_bytes;
  };
  const auto kept_one = peak_of(1, "none"), kept_six = peak_of(6, "none");
  const auto block_one = peak_of(1, "block"), block_six = peak_of(6, "block");
  const auto per_block_kept = (kept_six - kept_one) / 5, per_block_recomputed = (block_six - block_one) / 5;
  EXPECT_GT(per_block_kept, 0);
  // What each further block adds: its output residual ([4 x 32, hidden] float32, two tensors) and
  // the losses, against every activation it would keep.
  EXPECT_LT(per_block_recomputed * 4, per_block_kept)
      << "per block: kept " << per_block_kept << " B, recomputed " << per_block_recomputed << " B";
}

// A frozen parameter inside a recomputed block gets no gradient, the others theirs as without the
// recomputation.
TEST(RecomputedBlock, FrozenParametersGetNoGradient) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  const auto cfg = test::small_moe_config(64);
  const auto ids = torch::randint(0, 64, {2, 8});
  const std::string frozen = "model.layers.0.input_layernorm.weight";
  std::vector<std::map<std::string, torch::Tensor>> runs;
  for (const auto* choice : {"none", "block"}) {
    torch::manual_seed(7);
    CausalLM lm(cfg);
    set_recompute(*lm, parse_recompute(choice));
    lm->named_parameters()[frozen].requires_grad_(false);
    lm(ids, ids).loss.backward();
    std::map<std::string, torch::Tensor> grads;
    for (const auto& p : lm->named_parameters()) grads[p.key()] = p.value().grad();
    runs.push_back(grads);
  }
  EXPECT_FALSE(runs[1].at(frozen).defined());
  for (const auto& [name, grad] : runs[0]) {
    ASSERT_EQ(runs[1].at(name).defined(), grad.defined()) << name;
    if (grad.defined()) EXPECT_TRUE(torch::allclose(runs[1].at(name), grad, 1e-6, 1e-7)) << name;
  }
}

// The recomputation outside training (evaluation, generation) is off: no graph to recompute for;
// and it is refused where the recomputed forward could not equal the first (dropout).
TEST(RecomputedBlock, OnlyInTrainingAndNeverWithDropout) {
  test::DtypeAndSeed guard(caffe2::TypeMeta::Make<float>());
  auto cfg = test::small_moe_config(64);
  torch::manual_seed(7);
  CausalLM lm(cfg);
  const auto ids = torch::randint(0, 64, {2, 8});
  lm->eval();
  const auto plain = lm(ids).logits;
  set_recompute(*lm, parse_recompute("block"));
  EXPECT_TRUE(torch::equal(lm(ids).logits, plain));
  {
    torch::NoGradGuard no_grad;
    lm->train();
    EXPECT_FALSE(lm(ids, ids).loss.requires_grad());
  }
  cfg.dropout = 0.1;
  CausalLM with_dropout(cfg);
  test::expect_refusal([&] { set_recompute(*with_dropout, parse_recompute("block")); },
                       {"recompute block needs model.dropout 0", "0.1"});
}

}  // namespace
}  // namespace moe::model
