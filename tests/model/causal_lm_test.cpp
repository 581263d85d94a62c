// The whole model: MiniMind2 parameter names and closed-form counts, tied embeddings, the
// notebook's initialisation, the loss, KV-cache decoding equal to the full forward, causality,
// and left padding.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "common/check.h"
#include "model/causal_lm.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;

namespace {

model::ModelConfig small_config(bool use_moe, int64_t heads = 4, int64_t kv_heads = 2, bool flash = true) {
  model::ModelConfig c;
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.max_position_embeddings = 64;
  c.flash_attn = flash;
  c.use_moe = use_moe;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  return c;
}

std::set<std::string> expected_names(const model::ModelConfig& c) {
  std::set<std::string> names{"model.embed_tokens.weight", "model.norm.weight"};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto p = "model.layers." + std::to_string(l) + ".";
    for (const char* s : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                          "self_attn.o_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"}) {
      names.insert(p + s);
    }
    auto ffn = [&](const std::string& prefix) {
      for (const char* s : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) names.insert(prefix + s);
    };
    if (!c.use_moe) {
      ffn(p + "mlp.");
      continue;
    }
    names.insert(p + "mlp.gate.weight");
    for (int64_t e = 0; e < c.n_routed_experts; ++e) ffn(p + "mlp.experts." + std::to_string(e) + ".");
    for (int64_t s = 0; s < c.n_shared_experts; ++s) ffn(p + "mlp.shared_experts." + std::to_string(s) + ".");
  }
  return names;
}

int64_t closed_form_parameter_count(const model::ModelConfig& c) {
  const int64_t h = c.hidden_size, d = c.head_dim(), i = c.resolved_intermediate_size();
  const int64_t attention = h * c.num_attention_heads * d * 2 + h * c.num_key_value_heads * d * 2;
  const int64_t ffn = 3 * h * i;
  const int64_t mlp = c.use_moe ? (c.n_routed_experts + c.n_shared_experts) * ffn + c.n_routed_experts * h : ffn;
  return c.vocab_size * h + h + c.num_hidden_layers * (attention + 2 * h + mlp);
}

int64_t count(const model::CausalLM& lm) {
  int64_t n = 0;
  for (const auto& p : lm->parameters()) n += p.numel();
  return n;
}

}  // namespace

TEST(CausalLM, ParameterNamesAreMiniMind2StateDictKeys) {
  for (bool use_moe : {false, true}) {
    const auto cfg = small_config(use_moe);
    model::CausalLM lm(cfg);
    const auto keys = lm->named_parameters().keys();
    const std::set<std::string> got(keys.begin(), keys.end());
    EXPECT_EQ(got, expected_names(cfg)) << "use_moe " << use_moe;
    auto with_head = expected_names(cfg);
    with_head.insert("lm_head.weight");
    std::set<std::string> state;
    for (const auto& [k, v] : lm->state_dict()) state.insert(k);
    EXPECT_EQ(state, with_head);
  }
}

TEST(CausalLM, ParameterCountIsClosedForm) {
  for (bool use_moe : {false, true}) {
    const auto cfg = small_config(use_moe);
    EXPECT_EQ(count(model::CausalLM(cfg)), closed_form_parameter_count(cfg)) << "use_moe " << use_moe;
  }
  // MiniMind2-MoE sizes: hidden 512, 8 layers, 8/2 heads, 4 routed top-2 + 1 shared, vocab 6400.
  model::ModelConfig mm;
  mm.use_moe = true;
  mm.max_position_embeddings = 16;
  EXPECT_EQ(count(model::CausalLM(mm)), closed_form_parameter_count(mm));
  EXPECT_EQ(closed_form_parameter_count(mm), 6400 * 512 + 512 + 8 * (2 * 512 * 512 + 2 * 512 * 128 + 1024 +
                                                                       5 * 3 * 512 * 1408 + 4 * 512));
}

TEST(CausalLM, OutputProjectionIsTheEmbedding) {
  test::DtypeAndSeed guard;
  model::CausalLM lm(small_config(true));
  const auto& embed = lm->model->embed_tokens->weight;
  for (const auto& [name, t] : lm->state_dict()) {
    if (name == "lm_head.weight") EXPECT_EQ(t.data_ptr(), embed.data_ptr());
  }
  // Logits are hidden @ embed^T: a token's logit column moves when its embedding row moves.
  const auto ids = torch::tensor({{3, 4, 5}}, torch::kInt64);
  const auto out = lm(ids);
  auto hidden = lm->model(ids).hidden;
  EXPECT_TRUE(all_close(out.logits, torch::matmul(hidden, embed.t()), 1e-12, 1e-12));
}

TEST(CausalLM, NotebookInitialisation) {
  auto cfg = small_config(true);
  cfg.hidden_size = 256;
  cfg.num_hidden_layers = 8;
  cfg.vocab_size = 2000;
  model::CausalLM lm(cfg);
  const double residual = 0.02 / std::sqrt(16.0);
  for (const auto& p : lm->named_parameters()) {
    const auto& name = p.key();
    const auto& t = p.value();
    if (name.find("norm.weight") != std::string::npos) {
      EXPECT_TRUE(torch::equal(t, torch::ones_like(t))) << name;
    } else if (name.find(".gate.weight") != std::string::npos) {
      const double bound = 1.0 / std::sqrt(double(cfg.hidden_size));  // kaiming_uniform(a=sqrt(5))
      EXPECT_LE(t.abs().max().item<double>(), bound) << name;
      EXPECT_GT(t.abs().max().item<double>(), 0.9 * bound) << name;
    } else {
      const bool small = name.find("up_proj") != std::string::npos || name.find("o_proj") != std::string::npos;
      const double want = small ? residual : 0.02;
      EXPECT_NEAR(t.std().item<double>(), want, 0.05 * want) << name;
      EXPECT_NEAR(t.mean().item<double>(), 0.0, 0.05 * want) << name;
    }
  }
}

TEST(CausalLM, LossIsCrossEntropyPlusAux) {
  test::DtypeAndSeed guard;
  model::CausalLM lm(small_config(true));
  const auto ids = torch::randint(50, {3, 10}, torch::kInt64);
  auto targets = torch::randint(50, {3, 10}, torch::kInt64);
  targets.index_put_({0, torch::indexing::Slice(0, 4)}, model::CausalLMImpl::kIgnoreIndex);
  lm->train();
  const auto out = lm(ids, targets);
  // Cross entropy by hand over the counted positions.
  const auto logp = torch::log_softmax(out.logits, -1);
  double sum = 0;
  int64_t n = 0;
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t t = 0; t < 10; ++t) {
      const auto y = targets[b][t].item<int64_t>();
      if (y == model::CausalLMImpl::kIgnoreIndex) continue;
      sum -= logp[b][t][y].item<double>();
      ++n;
    }
  }
  EXPECT_NEAR(out.ce_loss.item<double>(), sum / n, 1e-12);
  EXPECT_GT(out.aux_loss.item<double>(), 0.0);
  EXPECT_NEAR(out.loss.item<double>(), out.ce_loss.item<double>() + out.aux_loss.item<double>(), 1e-12);
  EXPECT_EQ(out.expert_load.size(), 2u);
  EXPECT_EQ(out.expert_load[0].routed.sum().item<int64_t>(), 3 * 10 * 2);
  lm->eval();
  EXPECT_EQ(lm(ids, targets).aux_loss.item<double>(), 0.0);
}

class KVCacheDecoding : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, bool, bool>> {};

TEST_P(KVCacheDecoding, IncrementalEqualsFullForwardAtEveryPosition) {
  test::DtypeAndSeed guard;
  const auto [heads, kv_heads, flash, use_moe] = GetParam();
  model::CausalLM lm(small_config(use_moe, heads, kv_heads, flash));
  lm->eval();
  torch::NoGradGuard no_grad;
  const int64_t t = 12;
  const auto ids = torch::randint(50, {2, t}, torch::kInt64);
  const auto full = lm(ids).logits;

  model::KVCache one_by_one;
  for (int64_t i = 0; i < t; ++i) {
    const auto step = lm->forward(ids.slice(1, i, i + 1), {}, {}, &one_by_one).logits;
    EXPECT_TRUE(all_close(step.squeeze(1), full.select(1, i), 1e-10, 1e-9)) << "position " << i;
  }
  // Chunked prefill: 5 tokens, then 4, then 3, each attending to the cache.
  model::KVCache chunked;
  int64_t start = 0;
  for (int64_t len : {5, 4, 3}) {
    const auto step = lm->forward(ids.slice(1, start, start + len), {}, {}, &chunked).logits;
    EXPECT_TRUE(all_close(step, full.slice(1, start, start + len), 1e-10, 1e-9)) << "chunk at " << start;
    start += len;
  }
  EXPECT_EQ(chunked.length(), t);
}

INSTANTIATE_TEST_SUITE_P(GqaMhaFlashMoe, KVCacheDecoding,
                         ::testing::Values(std::make_tuple(4, 2, true, true), std::make_tuple(4, 4, true, true),
                                           std::make_tuple(4, 2, false, true), std::make_tuple(4, 1, true, false),
                                           std::make_tuple(4, 4, false, false)));

TEST(CausalLM, ChangingATokenNeverChangesEarlierLogits) {
  test::DtypeAndSeed guard;
  model::CausalLM lm(small_config(true));
  lm->eval();
  torch::NoGradGuard no_grad;
  const auto ids = torch::randint(50, {1, 10}, torch::kInt64);
  const auto base = lm(ids).logits;
  for (int64_t t : {0, 4, 9}) {
    auto changed = ids.clone();
    changed[0][t] = (ids[0][t].item<int64_t>() + 7) % 50;
    const auto logits = lm(changed).logits;
    EXPECT_TRUE(all_close(logits.slice(1, 0, t), base.slice(1, 0, t), 1e-13, 0)) << "token " << t;
    EXPECT_FALSE(torch::allclose(logits.select(1, t), base.select(1, t))) << "token " << t << " had no effect";
  }
}

TEST(CausalLM, LeftPaddingGivesTheUnpaddedLogits) {
  test::DtypeAndSeed guard;
  model::CausalLM lm(small_config(true));
  lm->eval();
  torch::NoGradGuard no_grad;
  const auto short_ids = torch::randint(50, {1, 5}, torch::kInt64);
  const auto long_ids = torch::randint(50, {1, 8}, torch::kInt64);
  auto batch = torch::zeros({2, 8}, torch::kInt64);
  batch[0].slice(0, 3, 8).copy_(short_ids[0]);
  batch[1].copy_(long_ids[0]);
  auto mask = torch::ones({2, 8}, torch::kInt64);
  mask[0].slice(0, 0, 3).fill_(0);
  const auto padded = lm->forward(batch, {}, mask).logits;
  EXPECT_TRUE(all_close(padded[0].slice(0, 3, 8), lm(short_ids).logits[0], 1e-10, 1e-9));
  EXPECT_TRUE(all_close(padded[1], lm(long_ids).logits[0], 1e-10, 1e-9));
}

TEST(CausalLM, RefusesSequencesBeyondMaxPositions) {
  model::CausalLM lm(small_config(false));
  EXPECT_THROW(lm(torch::zeros({1, 65}, torch::kInt64)), moe::InvalidArgument);
}
