// The export/import mappings without Python: every architecture's tensors map back to ours bit for
// bit, config.json round trips, every refusal names its field; the .pth writer and reader, the
// MiniMind config and the shape inference. (tests/interop/interop_e2e.sh checks against transformers.)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "interop/hf_architecture.h"
#include "interop/minimind_format.h"
#include "model/causal_lm.h"
#include "tests/support.h"
#include "tests/trainer/temp_dir.h"

using namespace moe;
using namespace moe::interop;

namespace {

model::ModelConfig tiny(bool moe, int64_t shared, int64_t top_k = 2, bool norm = true) {
  model::ModelConfig c;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = 50;
  c.use_moe = moe;
  c.n_routed_experts = 4;
  c.n_shared_experts = shared;
  c.num_experts_per_tok = top_k;
  c.norm_topk_prob = norm;
  return c;
}

std::map<std::string, torch::Tensor> parameters_of(const model::ModelConfig& c) {
  torch::manual_seed(3);
  model::CausalLM lm(c);
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : lm->named_parameters()) out.emplace(p.key(), p.value().detach().clone());
  return out;
}

TensorLookup lookup_in(const std::map<std::string, torch::Tensor>& tensors) {
  return [&tensors](const std::string& name) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) throw InvalidArgument("no tensor " + name);
    return it->second;
  };
}

struct Case {
  const char* name;
  model::ModelConfig config;
  HfArchitecture architecture;
};

// DeepSeek-V3's routing: sigmoid scores, the bias (the rate an import sets), 2 groups, scaled weights.
model::ModelConfig deepseek_routing(int64_t shared) {
  auto c = tiny(true, shared);
  c.scoring_func = "sigmoid";
  c.bias_update_rate = 1e-3;
  c.n_group = 2;
  c.topk_group = 1;
  c.routed_scaling_factor = 1.5;
  return c;
}

std::vector<Case> cases() {
  return {{"dense", tiny(false, 0), HfArchitecture::kLlama},
          {"moe_no_shared", tiny(true, 0), HfArchitecture::kQwen2Moe},
          {"moe_top1_unnormalised", tiny(true, 0, 1, false), HfArchitecture::kQwen2Moe},
          {"moe_two_shared", tiny(true, 2), HfArchitecture::kGraniteMoeShared},
          {"sigmoid_no_shared", deepseek_routing(0), HfArchitecture::kGlm4Moe},
          {"sigmoid_two_shared", deepseek_routing(2), HfArchitecture::kGlm4Moe}};
}

}  // namespace

TEST(HfArchitecture, EachConfigurationGetsTheClassThatComputesIt) {
  for (const auto& c : cases()) EXPECT_EQ(hf_architecture_for(c.config), c.architecture) << c.name;
  test::expect_refusal([] { hf_architecture_for(tiny(true, 1, 2, false)); }, {"norm_topk_prob = false", "--format minimind"});
  test::expect_refusal([] { hf_architecture_for(tiny(true, 1, 1, true)); }, {"num_experts_per_tok = 1"});
}

// Routing a format cannot compute is refused, naming the field and the reason: MiniMind's .pth
// routes by softmax top-k only; of the transformers classes, Glm4Moe takes the bias, groups and
// scaling with sigmoid scores only.
TEST(Export, RoutingAFormatCannotExpressIsRefusedNamingTheField) {
  struct Refused {
    std::function<void(model::ModelConfig&)> set;
    const char* field;
  };
  const std::vector<Refused> refused = {
      {[](auto& c) { c.bias_update_rate = 1e-3; }, "bias_update_rate = 0.001"},
      {[](auto& c) { c.n_group = 2; c.topk_group = 1; }, "n_group = 2, topk_group = 1"},
      {[](auto& c) { c.routed_scaling_factor = 2.5; }, "routed_scaling_factor = 2.5"},
  };
  for (const auto& r : refused) {
    for (const int shared : {0, 2}) {
      auto c = tiny(true, shared);
      r.set(c);
      test::expect_refusal([&] { hf_architecture_for(c); }, {r.field, "with softmax scores", "Glm4Moe"});
      test::expect_refusal([&] { check_minimind_routing(c); }, {r.field, "MiniMind2's MoEGate computes softmax"});
    }
  }
  auto sigmoid = tiny(true, 1);
  sigmoid.scoring_func = "sigmoid";
  EXPECT_EQ(hf_architecture_for(sigmoid), HfArchitecture::kGlm4Moe);
  test::expect_refusal([&] { check_minimind_routing(sigmoid); }, {"scoring_func 'sigmoid'", "MiniMind2's MoEGate"});
  sigmoid.n_group = 4;
  sigmoid.topk_group = 2;
  test::expect_refusal([&] { hf_architecture_for(sigmoid); }, {"n_group = 4 (groups of one expert)", "two best"});
  auto z = tiny(true, 0);
  z.router_z_loss_coef = 1e-3;  // a training loss: nothing to export, nothing refused
  EXPECT_EQ(hf_architecture_for(z), HfArchitecture::kQwen2Moe);
  EXPECT_NO_THROW(check_minimind_routing(z));
  EXPECT_FALSE(minimind_config_json(z).contains("router_z_loss_coef"));
}

TEST(HfArchitecture, TensorsMapBackBitForBit) {
  for (const auto& c : cases()) {
    const auto ours = parameters_of(c.config);
    const auto hf_list = to_hf_tensors(c.config, c.architecture, lookup_in(ours));
    const std::map<std::string, torch::Tensor> hf(hf_list.begin(), hf_list.end());
    EXPECT_EQ(hf.size(), hf_list.size()) << c.name << ": a name written twice";
    const auto json = hf_config_json(c.config, c.architecture, "float32");
    const auto model = hf_model_of_config(nlohmann::json::parse(json.dump()), c.name);
    EXPECT_EQ(model.architecture, c.architecture) << c.name;
    const auto back = from_hf_tensors(model, lookup_in(hf));
    ASSERT_EQ(back.size(), ours.size()) << c.name;
    for (const auto& [name, value] : back) {
      ASSERT_TRUE(ours.count(name)) << c.name << ": " << name;
      EXPECT_TRUE(torch::equal(value, ours.at(name))) << c.name << ": " << name;
    }
  }
}

TEST(HfArchitecture, GraniteSharedMlpIsTheSumOfOurSharedExperts) {
  // Independent of the name mapping: the concatenated SwiGLU equals the sum of the experts.
  const auto c = tiny(true, 2);
  const auto ours = parameters_of(c);
  const auto hf_list = to_hf_tensors(c, HfArchitecture::kGraniteMoeShared, lookup_in(ours));
  const std::map<std::string, torch::Tensor> hf(hf_list.begin(), hf_list.end());
  const auto x = torch::randn({5, c.hidden_size}, torch::kFloat64);
  const auto in = hf.at("model.layers.1.shared_mlp.input_linear.weight").to(torch::kFloat64);
  const auto out = hf.at("model.layers.1.shared_mlp.output_linear.weight").to(torch::kFloat64);
  const auto chunks = torch::matmul(x, in.t()).chunk(2, -1);
  const auto granite = torch::matmul(torch::silu(chunks[0]) * chunks[1], out.t());
  auto expected = torch::zeros_like(granite);
  for (int s = 0; s < 2; ++s) {
    const auto w = [&](const char* p) {
      return ours.at("model.layers.1.mlp.shared_experts." + std::to_string(s) + "." + p + ".weight").to(torch::kFloat64);
    };
    expected += torch::matmul(torch::silu(torch::matmul(x, w("gate_proj").t())) * torch::matmul(x, w("up_proj").t()),
                              w("down_proj").t());
  }
  EXPECT_LT((granite - expected).abs().max().item<double>(), 1e-12);
}

TEST(HfArchitecture, ConfigJsonRoundTrips) {
  for (const auto& c : cases()) {
    auto expected = c.config;
    expected.intermediate_size = expected.resolved_intermediate_size();
    if (c.architecture == HfArchitecture::kQwen2Moe && expected.num_experts_per_tok == 1) expected.norm_topk_prob = true;
    if (!expected.use_moe) {  // Llama has no MoE fields: ours keep their defaults
      const model::ModelConfig defaults;
      expected.n_shared_experts = defaults.n_shared_experts;
      expected.num_experts_per_tok = defaults.num_experts_per_tok;
      expected.n_routed_experts = defaults.n_routed_experts;
    }
    const auto got = hf_model_of_config(nlohmann::json::parse(hf_config_json(c.config, c.architecture, "bfloat16").dump()),
                                        c.name).config;
    EXPECT_EQ(got.to_string(), expected.to_string()) << c.name;
  }
}

TEST(HfArchitecture, ImportRefusesWhatOurModelDoesNotCompute) {
  struct Edit {
    HfArchitecture architecture;
    const char* key;
    nlohmann::json value;
    const char* expected;
  };
  const std::vector<Edit> edits = {
      {HfArchitecture::kLlama, "tie_word_embeddings", false, "ties the output projection"},
      {HfArchitecture::kLlama, "attention_bias", true, "no biases"},
      {HfArchitecture::kLlama, "mlp_bias", true, "no biases"},
      {HfArchitecture::kLlama, "pretraining_tp", 2, "pretraining_tp"},
      {HfArchitecture::kLlama, "head_dim", 16, "head_dim"},
      {HfArchitecture::kLlama, "rope_parameters", {{"rope_type", "yarn"}, {"factor", 4.0}}, "yarn"},
      {HfArchitecture::kLlama, "model_type", "mixtral", "model_type 'mixtral'"},
      {HfArchitecture::kQwen2Moe, "shared_expert_intermediate_size", 64, "sigmoid"},
      {HfArchitecture::kQwen2Moe, "decoder_sparse_step", 2, "decoder_sparse_step"},
      {HfArchitecture::kQwen2Moe, "mlp_only_layers", {0}, "mlp_only_layers"},
      {HfArchitecture::kQwen2Moe, "use_sliding_window", true, "use_sliding_window"},
      {HfArchitecture::kGraniteMoeShared, "embedding_multiplier", 12.0, "embedding_multiplier"},
      {HfArchitecture::kGraniteMoeShared, "residual_multiplier", 0.22, "residual_multiplier"},
      {HfArchitecture::kGraniteMoeShared, "logits_scaling", 8.0, "logits_scaling"},
      {HfArchitecture::kGraniteMoeShared, "attention_multiplier", 0.015625, "attention_multiplier"},
      {HfArchitecture::kGraniteMoeShared, "shared_intermediate_size", 100, "not a positive multiple"},
      {HfArchitecture::kGraniteMoeShared, "num_experts_per_tok", 1, "weighs the expert by 1"},
      {HfArchitecture::kGraniteMoeShared, "vocab_size", "many", "not the expected type"},
      {HfArchitecture::kGlm4Moe, "first_k_dense_replace", 1, "first_k_dense_replace"},
      {HfArchitecture::kGlm4Moe, "use_qk_norm", true, "use_qk_norm"},
      {HfArchitecture::kGlm4Moe, "attention_bias", true, "no biases"},
      {HfArchitecture::kGlm4Moe, "rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6}, {"partial_rotary_factor", 0.5}}, "partial_rotary_factor"},
      {HfArchitecture::kGlm4Moe, "n_group", 3, "n_group 3"},
  };
  for (const auto& e : edits) {
    const auto config = e.architecture == HfArchitecture::kLlama      ? tiny(false, 0)
                        : e.architecture == HfArchitecture::kQwen2Moe ? tiny(true, 0)
                        : e.architecture == HfArchitecture::kGlm4Moe  ? deepseek_routing(1)
                                                                      : tiny(true, 1);
    auto json = nlohmann::json::parse(hf_config_json(config, e.architecture, "float32").dump());
    json[e.key] = e.value;
    test::expect_refusal([&] { hf_model_of_config(json, "x/config.json"); }, {"x/config.json", e.expected});
  }
  auto no_field = nlohmann::json::parse(hf_config_json(tiny(false, 0), HfArchitecture::kLlama, "float32").dump());
  no_field.erase("hidden_size");
  test::expect_refusal([&] { hf_model_of_config(no_field, "x/config.json"); }, {"lacks \"hidden_size\""});
}

TEST(HfArchitecture, ANonZeroQkvBiasIsRefused) {
  const auto c = tiny(true, 0);
  const auto ours = parameters_of(c);
  const auto hf_list = to_hf_tensors(c, HfArchitecture::kQwen2Moe, lookup_in(ours));
  std::map<std::string, torch::Tensor> hf(hf_list.begin(), hf_list.end());
  hf["model.layers.1.self_attn.k_proj.bias"] = torch::full({c.num_key_value_heads * c.head_dim()}, 0.5f);
  const HfModel model{c, HfArchitecture::kQwen2Moe};
  test::expect_refusal([&] { from_hf_tensors(model, lookup_in(hf)); }, {"model.layers.1.self_attn.k_proj.bias", "not zero"});
}

TEST(MinimindFormat, PthRoundTripsEveryDtype) {
  test::TempDir dir;
  NamedTensors tensors = {{"a.weight", torch::randn({3, 4})},
                          {"b.weight", torch::randn({5}).to(torch::kBFloat16)},
                          {"c.weight", torch::randn({2, 2}).to(torch::kHalf)}};
  const auto path = dir / "x.pth";
  write_pth(path, tensors);
  const auto back = read_pth(path);
  ASSERT_EQ(back.size(), tensors.size());
  std::map<std::string, torch::Tensor> by_name(back.begin(), back.end());
  for (const auto& [name, value] : tensors) {
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_EQ(by_name[name].scalar_type(), value.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(by_name[name], value)) << name;
  }
  std::ofstream(dir / "junk.pth") << "not a zip";
  test::expect_refusal([&] { read_pth(dir / "junk.pth"); }, {"junk.pth", "restricted unpickler"});
}

TEST(MinimindFormat, ConfigJsonRoundTripsAndShapesGiveTheSizes) {
  auto c = tiny(true, 2);
  c.num_attention_heads = 8;
  c.aux_loss_alpha = 0.05;
  c.intermediate_size = c.resolved_intermediate_size();
  const auto json = minimind_config_json(c);
  EXPECT_EQ(json["model_type"], "minimind");
  EXPECT_FALSE(json.contains("capacity_factor"));  // ours, not MiniMindConfig's
  EXPECT_EQ(model_config_of_minimind(nlohmann::json::parse(json.dump()), "c").to_string(), c.to_string());
  auto yarn = nlohmann::json::parse(json.dump());
  yarn["inference_rope_scaling"] = true;
  test::expect_refusal([&] { model_config_of_minimind(yarn, "c.json"); }, {"c.json", "inference_rope_scaling"});

  torch::manual_seed(0);
  model::CausalLM lm(c);
  const auto state = lm->state_dict();
  model::ModelConfig given;  // MiniMind2's defaults, then the shapes
  given.num_attention_heads = 8;
  const auto inferred = infer_minimind_config(NamedTensors(state.begin(), state.end()), given, "x.pth");
  EXPECT_EQ(inferred.hidden_size, c.hidden_size);
  EXPECT_EQ(inferred.num_hidden_layers, c.num_hidden_layers);
  EXPECT_EQ(inferred.num_key_value_heads, c.num_key_value_heads);
  EXPECT_EQ(inferred.vocab_size, c.vocab_size);
  EXPECT_EQ(inferred.n_routed_experts, c.n_routed_experts);
  EXPECT_EQ(inferred.n_shared_experts, c.n_shared_experts);
  EXPECT_EQ(inferred.resolved_intermediate_size(), c.resolved_intermediate_size());
  test::expect_refusal([&] { infer_minimind_config({{"x", torch::zeros({1})}}, given, "y.pth"); },
                {"y.pth", "model.embed_tokens.weight"});
  EXPECT_EQ(minimind_weight_name(c), "pretrain_32_moe.pth");
  EXPECT_EQ(minimind_weight_name(tiny(false, 0)), "pretrain_32.pth");
}
