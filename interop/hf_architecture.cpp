#include "interop/hf_architecture.h"

#include <torch/torch.h>

#include <cmath>

#include "common/check.h"

namespace moe::interop {

namespace {

using model::ModelConfig;

std::string layer(int64_t l) { return "model.layers." + std::to_string(l) + "."; }

// The names every architecture shares with ours: embeddings, attention, norms.
std::vector<std::string> common_names(const ModelConfig& c) {
  std::vector<std::string> names{"model.embed_tokens.weight", "model.norm.weight"};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (const auto* p : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                          "self_attn.o_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"}) {
      names.push_back(layer(l) + p);
    }
  }
  return names;
}

std::string expert(int64_t l, const char* group, int64_t e, const char* proj) {
  return layer(l) + "mlp." + group + "." + std::to_string(e) + "." + proj + ".weight";
}

// Our shared experts as one SwiGLU of n x I (Granite's and Glm4Moe's): rows of the gate and up
// projections and columns of the down projection concatenated; n = 0 gives width-0 tensors.
struct SharedMlp {
  torch::Tensor gate, up, down;
};

SharedMlp concatenated_shared(const ModelConfig& c, int64_t l, const TensorLookup& ours) {
  if (c.n_shared_experts == 0) {
    return {torch::zeros({0, c.hidden_size}), torch::zeros({0, c.hidden_size}), torch::zeros({c.hidden_size, 0})};
  }
  std::vector<torch::Tensor> gates, ups, downs;
  for (int64_t s = 0; s < c.n_shared_experts; ++s) {
    gates.push_back(ours(expert(l, "shared_experts", s, "gate_proj")));
    ups.push_back(ours(expert(l, "shared_experts", s, "up_proj")));
    downs.push_back(ours(expert(l, "shared_experts", s, "down_proj")));
  }
  return {torch::cat(gates), torch::cat(ups), torch::cat(downs, 1)};
}

// GraniteMoeShared's input_linear holds [gate; up] rows, output_linear the down projection.
void to_granite_moe(const ModelConfig& c, int64_t l, const TensorLookup& ours, NamedTensors& out) {
  const auto moe = layer(l) + "block_sparse_moe.";
  out.emplace_back(moe + "router.layer.weight", ours(layer(l) + "mlp.gate.weight"));
  std::vector<torch::Tensor> input, output;
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    input.push_back(torch::cat({ours(expert(l, "experts", e, "gate_proj")), ours(expert(l, "experts", e, "up_proj"))}));
    output.push_back(ours(expert(l, "experts", e, "down_proj")));
  }
  out.emplace_back(moe + "input_linear.weight", torch::stack(input));
  out.emplace_back(moe + "output_linear.weight", torch::stack(output));
  const auto shared = concatenated_shared(c, l, ours);
  out.emplace_back(layer(l) + "shared_mlp.input_linear.weight", torch::cat({shared.gate, shared.up}));
  out.emplace_back(layer(l) + "shared_mlp.output_linear.weight", shared.down);
}

void from_granite_moe(const ModelConfig& c, int64_t l, const TensorLookup& hf, NamedTensors& out) {
  const auto moe = layer(l) + "block_sparse_moe.";
  const int64_t width = c.resolved_intermediate_size();
  out.emplace_back(layer(l) + "mlp.gate.weight", hf(moe + "router.layer.weight"));
  const auto input = hf(moe + "input_linear.weight"), output = hf(moe + "output_linear.weight");
  MOE_CHECK(input.dim() == 3 && input.size(0) == c.n_routed_experts && input.size(1) == 2 * width,
            moe, "input_linear.weight has shape ", input.sizes(), ", expected [", c.n_routed_experts, ", ", 2 * width,
            ", ", c.hidden_size, "]");
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    out.emplace_back(expert(l, "experts", e, "gate_proj"), input[e].slice(0, 0, width).clone());
    out.emplace_back(expert(l, "experts", e, "up_proj"), input[e].slice(0, width, 2 * width).clone());
    out.emplace_back(expert(l, "experts", e, "down_proj"), output[e].clone());
  }
  const auto shared_in = hf(layer(l) + "shared_mlp.input_linear.weight");
  const auto shared_out = hf(layer(l) + "shared_mlp.output_linear.weight");
  const int64_t all = c.n_shared_experts * width;
  MOE_CHECK(shared_in.size(0) == 2 * all, layer(l), "shared_mlp.input_linear.weight has ", shared_in.size(0),
            " rows, expected ", 2 * all);
  for (int64_t s = 0; s < c.n_shared_experts; ++s) {
    out.emplace_back(expert(l, "shared_experts", s, "gate_proj"), shared_in.slice(0, s * width, (s + 1) * width).clone());
    out.emplace_back(expert(l, "shared_experts", s, "up_proj"),
                     shared_in.slice(0, all + s * width, all + (s + 1) * width).clone());
    out.emplace_back(expert(l, "shared_experts", s, "down_proj"), shared_out.slice(1, s * width, (s + 1) * width).clone());
  }
}

// Qwen2-MoE's experts have our names; its shared expert has width 0 and a gate that multiplies 0.
void to_qwen2_moe(const ModelConfig& c, int64_t l, const TensorLookup& ours, NamedTensors& out) {
  out.emplace_back(layer(l) + "mlp.gate.weight", ours(layer(l) + "mlp.gate.weight"));
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    for (const auto* proj : {"gate_proj", "up_proj", "down_proj"}) {
      out.emplace_back(expert(l, "experts", e, proj), ours(expert(l, "experts", e, proj)));
    }
  }
  const auto shared = layer(l) + "mlp.shared_expert.";
  out.emplace_back(shared + "gate_proj.weight", torch::zeros({0, c.hidden_size}));
  out.emplace_back(shared + "up_proj.weight", torch::zeros({0, c.hidden_size}));
  out.emplace_back(shared + "down_proj.weight", torch::zeros({c.hidden_size, 0}));
  out.emplace_back(layer(l) + "mlp.shared_expert_gate.weight", torch::zeros({1, c.hidden_size}));
  // Older transformers give Qwen2-MoE q/k/v biases unconditionally: zeros keep the function.
  for (const auto* p : {"q_proj", "k_proj", "v_proj"}) {
    const auto w = ours(layer(l) + "self_attn." + p + ".weight");
    out.emplace_back(layer(l) + "self_attn." + p + ".bias", torch::zeros({w.size(0)}));
  }
}

void from_qwen2_moe(const ModelConfig& c, int64_t l, const TensorLookup& hf, NamedTensors& out) {
  out.emplace_back(layer(l) + "mlp.gate.weight", hf(layer(l) + "mlp.gate.weight"));
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    for (const auto* proj : {"gate_proj", "up_proj", "down_proj"}) {
      out.emplace_back(expert(l, "experts", e, proj), hf(expert(l, "experts", e, proj)));
    }
  }
}

// Glm4Moe's routed experts and gate weight have our names; its router adds e_score_correction_bias
// (fp32, zeros where we balance without one); one shared SwiGLU.
void to_glm4_moe(const ModelConfig& c, int64_t l, const TensorLookup& ours, NamedTensors& out) {
  const auto gate = layer(l) + "mlp.gate.";
  out.emplace_back(gate + "weight", ours(gate + "weight"));
  out.emplace_back(gate + "e_score_correction_bias", c.has_score_bias() ? ours(gate + "e_score_correction_bias")
                                                                         : torch::zeros({c.n_routed_experts}));
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    for (const auto* proj : {"gate_proj", "up_proj", "down_proj"}) {
      out.emplace_back(expert(l, "experts", e, proj), ours(expert(l, "experts", e, proj)));
    }
  }
  const auto shared = concatenated_shared(c, l, ours);
  out.emplace_back(layer(l) + "mlp.shared_experts.gate_proj.weight", shared.gate);
  out.emplace_back(layer(l) + "mlp.shared_experts.up_proj.weight", shared.up);
  out.emplace_back(layer(l) + "mlp.shared_experts.down_proj.weight", shared.down);
}

void from_glm4_moe(const ModelConfig& c, int64_t l, const TensorLookup& hf, NamedTensors& out) {
  const auto gate = layer(l) + "mlp.gate.";
  out.emplace_back(gate + "weight", hf(gate + "weight"));
  out.emplace_back(gate + "e_score_correction_bias", hf(gate + "e_score_correction_bias"));
  for (int64_t e = 0; e < c.n_routed_experts; ++e) {
    for (const auto* proj : {"gate_proj", "up_proj", "down_proj"}) {
      out.emplace_back(expert(l, "experts", e, proj), hf(expert(l, "experts", e, proj)));
    }
  }
  const int64_t width = c.resolved_intermediate_size(), all = c.n_shared_experts * width;
  const auto shared = layer(l) + "mlp.shared_experts.";
  const auto gates = hf(shared + "gate_proj.weight"), ups = hf(shared + "up_proj.weight"),
             downs = hf(shared + "down_proj.weight");
  MOE_CHECK(gates.size(0) == all && ups.size(0) == all && downs.size(1) == all, shared,
            "*_proj.weight have width ", gates.size(0), ", expected n_shared_experts x moe_intermediate_size = ", all);
  for (int64_t s = 0; s < c.n_shared_experts; ++s) {
    out.emplace_back(expert(l, "shared_experts", s, "gate_proj"), gates.slice(0, s * width, (s + 1) * width).clone());
    out.emplace_back(expert(l, "shared_experts", s, "up_proj"), ups.slice(0, s * width, (s + 1) * width).clone());
    out.emplace_back(expert(l, "shared_experts", s, "down_proj"), downs.slice(1, s * width, (s + 1) * width).clone());
  }
}

void dense_mlp(int64_t l, const TensorLookup& from, NamedTensors& out) {
  for (const auto* proj : {"gate_proj", "up_proj", "down_proj"}) {
    const auto name = layer(l) + "mlp." + proj + ".weight";
    out.emplace_back(name, from(name));
  }
}

// JSON field readers that name the field and the file.
template <typename T>
T field(const nlohmann::json& j, const char* key, const std::string& what) {
  MOE_CHECK(j.contains(key) && !j[key].is_null(), what, ": config.json lacks \"", key, "\"");
  try {
    return j[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw InvalidArgument(what + ": config.json's \"" + key + "\" is " + j[key].dump() + ", not the expected type");
  }
}

template <typename T>
T field_or(const nlohmann::json& j, const char* key, T fallback, const std::string& what) {
  return j.contains(key) && !j[key].is_null() ? field<T>(j, key, what) : fallback;
}

template <typename T>
void require(const nlohmann::json& j, const char* key, T expected, T fallback, const std::string& what,
             const char* why) {
  const T value = field_or<T>(j, key, fallback, what);
  MOE_CHECK(value == expected, what, ": config.json's \"", key, "\" is ", nlohmann::json(value).dump(), "; ", why);
}

double rope_theta_of(const nlohmann::json& j, const std::string& what) {
  for (const auto* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const auto& rope = j[key];
    const auto type = rope.value("rope_type", rope.value("type", std::string("default")));
    MOE_CHECK(type == "default", what, ": config.json's \"", key, "\" asks for ", type,
              " rope scaling, which our model does not compute");
    if (rope.contains("rope_theta")) return rope["rope_theta"].get<double>();
  }
  return field<double>(j, "rope_theta", what);
}

}  // namespace

std::string hf_class_name(HfArchitecture a) {
  switch (a) {
    case HfArchitecture::kLlama: return "LlamaForCausalLM";
    case HfArchitecture::kQwen2Moe: return "Qwen2MoeForCausalLM";
    case HfArchitecture::kGraniteMoeShared: return "GraniteMoeSharedForCausalLM";
    case HfArchitecture::kGlm4Moe: return "Glm4MoeForCausalLM";
  }
  return "";
}

void check_softmax_top_k_routing(const ModelConfig& c, const std::string& why) {
  if (!c.use_moe) return;
  MOE_CHECK(c.scoring_func == "softmax", "scoring_func '", c.scoring_func, "'", why);
  MOE_CHECK(!c.has_score_bias(), "bias_update_rate = ", c.bias_update_rate,
            " (the gates hold e_score_correction_bias, added to the scores to choose experts)", why);
  MOE_CHECK(!c.limits_groups(), "n_group = ", c.n_group, ", topk_group = ", c.topk_group, " (group-limited routing)",
            why);
  MOE_CHECK(c.routed_scaling_factor == 1.0, "routed_scaling_factor = ", c.routed_scaling_factor, why);
}

HfArchitecture hf_architecture_for(const ModelConfig& c) {
  c.validate();
  if (!c.use_moe) return HfArchitecture::kLlama;
  if (c.scoring_func == "sigmoid") {
    MOE_CHECK(c.n_routed_experts / c.n_group >= 2, "n_group = ", c.n_group, " (groups of one expert): Glm4Moe, the ",
              "transformers class of sigmoid routing, ranks a group by its two best scores");
    return HfArchitecture::kGlm4Moe;
  }
  // Qwen2-MoE and GraniteMoeShared route by softmax top-k, with neither a bias nor groups.
  check_softmax_top_k_routing(c, " with softmax scores: Qwen2-MoE and GraniteMoeShared route by softmax top-k "
                                 "without it (Glm4Moe has it for sigmoid scores only)");
  if (c.n_shared_experts == 0) return HfArchitecture::kQwen2Moe;
  MOE_CHECK(c.num_experts_per_tok > 1 && c.norm_topk_prob, "n_shared_experts = ", c.n_shared_experts,
            " with ", c.num_experts_per_tok > 1 ? "norm_topk_prob = false" : "num_experts_per_tok = 1",
            ": no transformers class computes shared experts beside unnormalised routing weights exactly "
            "(Qwen2-MoE gates its shared expert by a sigmoid, GraniteMoeShared renormalises the top-k); "
            "export it with --format minimind");
  return HfArchitecture::kGraniteMoeShared;
}

nlohmann::ordered_json hf_config_json(const ModelConfig& c, HfArchitecture a, const std::string& torch_dtype) {
  const int64_t width = c.resolved_intermediate_size();
  nlohmann::ordered_json j;
  j["architectures"] = {hf_class_name(a)};
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim();
  j["hidden_act"] = c.hidden_act;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;  // transformers 4.x; 5.x reads rope_parameters
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", c.rope_theta}};
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = true;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype;  // 4.x
  j["dtype"] = torch_dtype;        // 5.x
  switch (a) {
    case HfArchitecture::kLlama:
      j["model_type"] = "llama";
      j["intermediate_size"] = width;
      j["attention_bias"] = false;
      j["mlp_bias"] = false;
      j["pretraining_tp"] = 1;
      break;
    case HfArchitecture::kQwen2Moe:
      j["model_type"] = "qwen2_moe";
      j["intermediate_size"] = width;
      j["moe_intermediate_size"] = width;
      j["shared_expert_intermediate_size"] = 0;
      j["num_experts"] = c.n_routed_experts;
      j["num_experts_per_tok"] = c.num_experts_per_tok;
      // MiniMind2 renormalises only when more than one expert is chosen.
      j["norm_topk_prob"] = c.norm_topk_prob && c.num_experts_per_tok > 1;
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = nlohmann::json::array();
      j["qkv_bias"] = true;  // zero biases (see to_hf_tensors)
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      j["router_aux_loss_coef"] = c.aux_loss_alpha;
      j["output_router_logits"] = false;
      break;
    case HfArchitecture::kGraniteMoeShared:
      j["model_type"] = "granitemoeshared";
      j["intermediate_size"] = width;
      j["shared_intermediate_size"] = c.n_shared_experts * width;
      j["num_local_experts"] = c.n_routed_experts;
      j["num_experts_per_tok"] = c.num_experts_per_tok;
      j["attention_bias"] = false;
      j["embedding_multiplier"] = 1.0;
      j["logits_scaling"] = 1.0;
      j["residual_multiplier"] = 1.0;
      j["attention_multiplier"] = 1.0 / std::sqrt(double(c.head_dim()));
      j["router_aux_loss_coef"] = c.aux_loss_alpha;
      j["output_router_logits"] = false;
      break;
    case HfArchitecture::kGlm4Moe:
      j["model_type"] = "glm4_moe";
      j["intermediate_size"] = width;  // of dense layers: there are none (first_k_dense_replace 0)
      j["moe_intermediate_size"] = width;
      j["n_routed_experts"] = c.n_routed_experts;
      j["num_experts_per_tok"] = c.num_experts_per_tok;
      j["n_shared_experts"] = c.n_shared_experts;
      j["first_k_dense_replace"] = 0;
      j["norm_topk_prob"] = c.norm_topk_prob;
      j["routed_scaling_factor"] = c.routed_scaling_factor;
      j["n_group"] = c.n_group;
      j["topk_group"] = c.topk_group;
      j["use_qk_norm"] = false;
      j["attention_bias"] = false;
      j["partial_rotary_factor"] = 1.0;
      j["rope_parameters"]["partial_rotary_factor"] = 1.0;
      j["num_nextn_predict_layers"] = 0;
      j["output_router_logits"] = false;
      break;
  }
  return j;
}

NamedTensors to_hf_tensors(const ModelConfig& c, HfArchitecture a, const TensorLookup& ours) {
  NamedTensors out;
  for (const auto& name : common_names(c)) out.emplace_back(name, ours(name));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    switch (a) {
      case HfArchitecture::kLlama: dense_mlp(l, ours, out); break;
      case HfArchitecture::kQwen2Moe: to_qwen2_moe(c, l, ours, out); break;
      case HfArchitecture::kGraniteMoeShared: to_granite_moe(c, l, ours, out); break;
      case HfArchitecture::kGlm4Moe: to_glm4_moe(c, l, ours, out); break;
    }
  }
  return out;
}

HfModel hf_model_of_config(const nlohmann::json& j, const std::string& what) {
  HfModel m;
  auto& c = m.config;
  const auto type = field<std::string>(j, "model_type", what);
  c.vocab_size = field<int64_t>(j, "vocab_size", what);
  c.hidden_size = field<int64_t>(j, "hidden_size", what);
  c.num_hidden_layers = field<int64_t>(j, "num_hidden_layers", what);
  c.num_attention_heads = field<int64_t>(j, "num_attention_heads", what);
  c.num_key_value_heads = field_or<int64_t>(j, "num_key_value_heads", c.num_attention_heads, what);
  c.hidden_act = field_or<std::string>(j, "hidden_act", "silu", what);
  c.max_position_embeddings = field_or<int64_t>(j, "max_position_embeddings", c.max_position_embeddings, what);
  c.rms_norm_eps = field_or<double>(j, "rms_norm_eps", c.rms_norm_eps, what);
  c.rope_theta = rope_theta_of(j, what);
  c.bos_token_id = field_or<int64_t>(j, "bos_token_id", c.bos_token_id, what);
  c.eos_token_id = j.contains("eos_token_id") && j["eos_token_id"].is_array()
                       ? j["eos_token_id"].at(0).get<int64_t>()
                       : field_or<int64_t>(j, "eos_token_id", c.eos_token_id, what);
  c.dropout = field_or<double>(j, "attention_dropout", 0.0, what);
  require<bool>(j, "tie_word_embeddings", true, false, what,
                "our model ties the output projection to the embedding");
  const int64_t head_dim = field_or<int64_t>(j, "head_dim", c.hidden_size / c.num_attention_heads, what);
  MOE_CHECK(head_dim * c.num_attention_heads == c.hidden_size, what, ": config.json's \"head_dim\" is ", head_dim,
            "; our model's is hidden_size / num_attention_heads = ", c.hidden_size / c.num_attention_heads);
  const char* no_bias = "our model has no biases";
  if (type == "llama") {
    m.architecture = HfArchitecture::kLlama;
    c.use_moe = false;
    c.intermediate_size = field<int64_t>(j, "intermediate_size", what);
    require<bool>(j, "attention_bias", false, false, what, no_bias);
    require<bool>(j, "mlp_bias", false, false, what, no_bias);
    require<int64_t>(j, "pretraining_tp", 1, 1, what, "only 1 computes the plain projections");
  } else if (type == "qwen2_moe") {
    m.architecture = HfArchitecture::kQwen2Moe;
    c.use_moe = true;
    c.intermediate_size = field<int64_t>(j, "moe_intermediate_size", what);
    c.n_routed_experts = field<int64_t>(j, "num_experts", what);
    c.num_experts_per_tok = field<int64_t>(j, "num_experts_per_tok", what);
    c.n_shared_experts = 0;
    c.norm_topk_prob = field_or<bool>(j, "norm_topk_prob", false, what) || c.num_experts_per_tok == 1;
    c.aux_loss_alpha = field_or<double>(j, "router_aux_loss_coef", c.aux_loss_alpha, what);
    require<int64_t>(j, "shared_expert_intermediate_size", 0, -1, what,
                     "our shared experts are not gated by a sigmoid; only 0 (none) computes our function");
    require<int64_t>(j, "decoder_sparse_step", 1, 1, what, "our model has an MoE feed-forward in every layer");
    MOE_CHECK(!j.contains("mlp_only_layers") || j["mlp_only_layers"].empty(), what,
              ": config.json's \"mlp_only_layers\" is ", j["mlp_only_layers"].dump(),
              "; our model has an MoE feed-forward in every layer");
    require<bool>(j, "use_sliding_window", false, false, what, "our attention is over the whole sequence");
  } else if (type == "granitemoeshared") {
    m.architecture = HfArchitecture::kGraniteMoeShared;
    c.use_moe = true;
    c.intermediate_size = field<int64_t>(j, "intermediate_size", what);
    c.n_routed_experts = field<int64_t>(j, "num_local_experts", what);
    c.num_experts_per_tok = field<int64_t>(j, "num_experts_per_tok", what);
    c.norm_topk_prob = true;
    c.aux_loss_alpha = field_or<double>(j, "router_aux_loss_coef", c.aux_loss_alpha, what);
    const auto shared = field<int64_t>(j, "shared_intermediate_size", what);
    MOE_CHECK(shared > 0 && shared % c.intermediate_size == 0, what, ": config.json's \"shared_intermediate_size\" ",
              shared, " is not a positive multiple of \"intermediate_size\" ", c.intermediate_size,
              ": our shared experts have the routed experts' width");
    c.n_shared_experts = shared / c.intermediate_size;
    MOE_CHECK(c.num_experts_per_tok > 1, what,
              ": config.json's \"num_experts_per_tok\" is 1; GraniteMoeShared then weighs the expert by 1, ours by "
              "its probability");
    require<bool>(j, "attention_bias", false, false, what, no_bias);
    for (const auto* key : {"embedding_multiplier", "logits_scaling", "residual_multiplier"}) {
      require<double>(j, key, 1.0, 1.0, what, "our model has no such scaling (only 1 computes our function)");
    }
    const double scale = field<double>(j, "attention_multiplier", what);
    const double ours = 1.0 / std::sqrt(double(head_dim));
    MOE_CHECK(std::abs(scale - ours) <= 1e-6 * ours, what, ": config.json's \"attention_multiplier\" is ", scale,
              "; our attention scales by 1/sqrt(head_dim) = ", ours);
  } else if (type == "glm4_moe") {
    m.architecture = HfArchitecture::kGlm4Moe;
    c.use_moe = true;
    c.scoring_func = "sigmoid";
    c.intermediate_size = field<int64_t>(j, "moe_intermediate_size", what);
    c.n_routed_experts = field<int64_t>(j, "n_routed_experts", what);
    c.num_experts_per_tok = field<int64_t>(j, "num_experts_per_tok", what);
    c.n_shared_experts = field_or<int64_t>(j, "n_shared_experts", 1, what);
    c.norm_topk_prob = field_or<bool>(j, "norm_topk_prob", true, what);
    c.routed_scaling_factor = field_or<double>(j, "routed_scaling_factor", 1.0, what);
    c.n_group = field_or<int64_t>(j, "n_group", 1, what);
    c.topk_group = field_or<int64_t>(j, "topk_group", 1, what);
    // Its router always adds e_score_correction_bias: ours holds it when balancing by bias, so an
    // import balances by bias at DeepSeek-V3's rate (--model.bias_update_rate changes it later).
    c.bias_update_rate = 1e-3;
    require<int64_t>(j, "first_k_dense_replace", 0, 1, what, "our model has an MoE feed-forward in every layer");
    require<bool>(j, "use_qk_norm", false, false, what, "our attention normalises neither queries nor keys");
    require<bool>(j, "attention_bias", false, false, what, no_bias);
    double partial = field_or<double>(j, "partial_rotary_factor", 0.5, what);
    if (j.contains("rope_parameters") && j["rope_parameters"].contains("partial_rotary_factor")) {
      partial = j["rope_parameters"]["partial_rotary_factor"].get<double>();
    }
    MOE_CHECK(partial == 1.0, what, ": config.json's \"partial_rotary_factor\" is ", partial,
              "; our rotary embedding turns the whole head");
  } else {
    throw InvalidArgument(what + ": model_type '" + type + "' is not one we import (llama, qwen2_moe, "
                          "granitemoeshared, glm4_moe: the ones our export writes)");
  }
  try {
    c.validate();
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(what + ": " + e.what());
  }
  return m;
}

NamedTensors from_hf_tensors(const HfModel& m, const TensorLookup& hf) {
  const auto& c = m.config;
  NamedTensors out;
  for (const auto& name : common_names(c)) out.emplace_back(name, hf(name));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    switch (m.architecture) {
      case HfArchitecture::kLlama: dense_mlp(l, hf, out); break;
      case HfArchitecture::kGraniteMoeShared: from_granite_moe(c, l, hf, out); break;
      case HfArchitecture::kGlm4Moe: from_glm4_moe(c, l, hf, out); break;
      case HfArchitecture::kQwen2Moe:
        from_qwen2_moe(c, l, hf, out);
        for (const auto* p : {"q_proj", "k_proj", "v_proj"}) {
          const auto bias = layer(l) + "self_attn." + p + ".bias";
          torch::Tensor value;
          try {
            value = hf(bias);
          } catch (const InvalidArgument&) {
            continue;  // no bias (qkv_bias false)
          }
          MOE_CHECK(value.count_nonzero().item<int64_t>() == 0, "tensor ", bias,
                    " is not zero: our attention has no bias, so this model cannot be imported exactly");
        }
        break;
    }
  }
  return out;
}

}  // namespace moe::interop
