// Every ModelConfig::validate() rule refuses its bad value with a message naming the field.
#include <gtest/gtest.h>

#include <cmath>

#include <functional>
#include <string>

#include "common/check.h"
#include "model/model_config.h"

using moe::model::ModelConfig;

namespace {

ModelConfig valid_moe() {
  ModelConfig c;
  c.use_moe = true;
  return c;
}

struct Rule {
  std::string expected_in_message;
  std::function<void(ModelConfig&)> break_it;
};

}  // namespace

TEST(ModelConfig, DefaultsAreMiniMind2AndValid) {
  ModelConfig c;
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.num_hidden_layers, 8);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.vocab_size, 6400);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.use_moe);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.n_routed_experts, 4);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.aux_loss_alpha, 0.01);  // MiniMind2's MiniMindConfig (0.1 here before, by mistake)
  EXPECT_TRUE(c.seq_aux);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_NO_THROW(c.validate());
  EXPECT_NO_THROW(valid_moe().validate());
}

TEST(ModelConfig, IntermediateSizeFollowsMiniMindRule) {
  ModelConfig c;
  // 64 * ceil(int(8 * h / 3) / 64)
  for (auto [h, expected] : std::vector<std::pair<int64_t, int64_t>>{{512, 1408}, {640, 1728}, {768, 2048},
                                                                     {128, 384}, {64, 192}, {96, 256}}) {
    c.hidden_size = h;
    EXPECT_EQ(c.resolved_intermediate_size(), expected) << "hidden " << h;
  }
  c.intermediate_size = 100;
  EXPECT_EQ(c.resolved_intermediate_size(), 100);
}

TEST(ModelConfig, EveryRuleRefusesWithFieldAndValue) {
  const std::vector<Rule> rules = {
      {"hidden_size must be positive, got 0", [](auto& c) { c.hidden_size = 0; }},
      {"num_hidden_layers must be positive, got 0", [](auto& c) { c.num_hidden_layers = 0; }},
      {"num_attention_heads must be positive, got -1", [](auto& c) { c.num_attention_heads = -1; }},
      {"hidden_size 500 is not divisible by num_attention_heads 8", [](auto& c) { c.hidden_size = 500; }},
      {"head dimension", [](auto& c) { c.hidden_size = 24, c.num_attention_heads = 8, c.num_key_value_heads = 1; }},
      {"num_key_value_heads 3 must be positive and divide num_attention_heads 8",
       [](auto& c) { c.num_key_value_heads = 3; }},
      {"num_key_value_heads 0", [](auto& c) { c.num_key_value_heads = 0; }},
      {"vocab_size must be positive, got 0", [](auto& c) { c.vocab_size = 0; }},
      {"bos_token_id 6400 is outside the vocabulary", [](auto& c) { c.bos_token_id = 6400; }},
      {"eos_token_id -1 is outside the vocabulary", [](auto& c) { c.eos_token_id = -1; }},
      {"intermediate_size must be positive", [](auto& c) { c.intermediate_size = -5; }},
      {"max_position_embeddings must be positive, got 0", [](auto& c) { c.max_position_embeddings = 0; }},
      {"rms_norm_eps must be a finite positive number, got 0", [](auto& c) { c.rms_norm_eps = 0; }},
      {"rms_norm_eps must be a finite positive number, got inf", [](auto& c) { c.rms_norm_eps = INFINITY; }},
      {"rope_theta must be a finite positive number, got -1", [](auto& c) { c.rope_theta = -1; }},
      {"rope_theta must be a finite positive number, got nan", [](auto& c) { c.rope_theta = NAN; }},
      {"dropout must be in [0, 1), got 1", [](auto& c) { c.dropout = 1.0; }},
      {"hidden_act 'tanh' is not one of silu, gelu, relu", [](auto& c) { c.hidden_act = "tanh"; }},
      {"n_routed_experts must be positive, got 0", [](auto& c) { c.n_routed_experts = 0; }},
      {"num_experts_per_tok 5 must be in [1, n_routed_experts = 4]", [](auto& c) { c.num_experts_per_tok = 5; }},
      {"num_experts_per_tok 0", [](auto& c) { c.num_experts_per_tok = 0; }},
      {"n_shared_experts must be >= 0, got -1", [](auto& c) { c.n_shared_experts = -1; }},
      {"scoring_func 'tanh' is not one of softmax, sigmoid", [](auto& c) { c.scoring_func = "tanh"; }},
      {"routed_scaling_factor must be a finite positive number, got 0", [](auto& c) { c.routed_scaling_factor = 0; }},
      {"bias_update_rate must be finite and >= 0 (0 = off), got -0.001", [](auto& c) { c.bias_update_rate = -1e-3; }},
      {"bias_update_rate must be finite and >= 0 (0 = off), got nan", [](auto& c) { c.bias_update_rate = NAN; }},
      {"router_z_loss_coef must be finite and >= 0 (0 = off), got -1", [](auto& c) { c.router_z_loss_coef = -1; }},
      {"n_group 3 must be positive and divide n_routed_experts = 4", [](auto& c) { c.n_group = 3; }},
      {"n_group 0 must be positive", [](auto& c) { c.n_group = 0; }},
      {"topk_group 3 must be in [1, n_group = 2]", [](auto& c) { c.n_group = 2; c.topk_group = 3; }},
      {"topk_group 0 must be in [1, n_group = 2]", [](auto& c) { c.n_group = 2; c.topk_group = 0; }},
      {"topk_group 1 groups of 1 experts cannot hold num_experts_per_tok = 2",
       [](auto& c) { c.n_group = 4; c.topk_group = 1; c.num_experts_per_tok = 2; }},
      {"aux_loss_alpha must be finite and >= 0, got -0.1", [](auto& c) { c.aux_loss_alpha = -0.1; }},
      {"aux_loss_alpha must be finite and >= 0, got inf", [](auto& c) { c.aux_loss_alpha = INFINITY; }},
      {"capacity_factor must be finite and >= 0 (0 = dropless), got inf",
       [](auto& c) { c.capacity_factor = INFINITY; }},
  };
  for (const auto& rule : rules) {
    auto c = valid_moe();
    rule.break_it(c);
    try {
      c.validate();
      ADD_FAILURE() << "accepted a config that should fail with: " << rule.expected_in_message;
    } catch (const moe::InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(rule.expected_in_message), std::string::npos)
          << "message '" << e.what() << "' lacks '" << rule.expected_in_message << "'";
    }
  }
}

TEST(ModelConfig, MoeFieldsIgnoredWhenDense) {
  ModelConfig c;
  c.use_moe = false;
  c.n_routed_experts = 0;
  c.scoring_func = "sigmoid";
  EXPECT_NO_THROW(c.validate());
}

TEST(ModelConfig, ToStringListsEveryField) {
  const auto s = "\n" + valid_moe().to_string();
  for (const char* key : {"dropout", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "intermediate_size",
                          "max_position_embeddings", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
                          "vocab_size", "rms_norm_eps", "rope_theta", "flash_attn", "use_moe", "num_experts_per_tok",
                          "n_routed_experts", "n_shared_experts", "scoring_func", "aux_loss_alpha", "seq_aux",
                          "norm_topk_prob", "routed_scaling_factor", "bias_update_rate", "router_z_loss_coef",
                          "n_group", "topk_group"}) {
    EXPECT_NE(s.find(std::string("\n") + key + " = "), std::string::npos) << key;
  }
}
