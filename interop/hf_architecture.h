// The Hugging Face transformers classes that compute exactly MiniMind2's function, their
// config.json, and the mapping of parameters both ways. Each choice sets the class's extra parts
// so that it equals ours, never approximately:
//   dense (use_moe false)                        LlamaForCausalLM (no biases, tied embeddings)
//   MoE without shared experts                   Qwen2MoeForCausalLM: softmax top-k with optional
//                                                renormalisation; its shared expert has width 0 and
//                                                its q/k/v biases are zero
//   MoE with shared experts, top-k > 1 and       GraniteMoeSharedForCausalLM: softmax over the top-k
//   renormalised weights (MiniMind2's default)   logits (= renormalised top-k probabilities), an
//                                                ungated shared SwiGLU: n shared experts of width I
//                                                are one of width n x I (their rows concatenated);
//                                                all multipliers 1, attention scale 1/sqrt(head_dim)
//   MoE with sigmoid scores (DeepSeek-V3's       Glm4MoeForCausalLM: sigmoid scores plus
//   router), with or without the balancing       e_score_correction_bias (zeros without one) to
//   bias, groups, a scaling factor               choose, group-limited top-k by the two best scores,
//                                                weights renormalised and scaled; the shared experts
//                                                concatenated as for Granite; full rotary, no q/k
//                                                norm, no biases, every layer MoE
// Refused: shared experts with unnormalised softmax weights (Qwen2-MoE gates its shared expert by a
// sigmoid, Granite always renormalises); softmax scores with a bias, groups or a scaling factor;
// sigmoid groups of one expert (Glm4Moe ranks a group by its two best scores).
#pragma once
#include <torch/types.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/model_config.h"

namespace moe::interop {

enum class HfArchitecture { kLlama, kQwen2Moe, kGraniteMoeShared, kGlm4Moe };

/// Refuses, naming the field and appending `why`, routing other than plain softmax top-k: sigmoid
/// scores, a routing bias, group-limited routing, scaled weights (what Qwen2-MoE, GraniteMoeShared
/// and MiniMind's own model compute without).
void check_softmax_top_k_routing(const model::ModelConfig& config, const std::string& why);

/// "LlamaForCausalLM", ...
std::string hf_class_name(HfArchitecture architecture);

/// The architecture that computes `config` exactly; refuses (moe::InvalidArgument naming the
/// field and its value) a configuration that none computes.
HfArchitecture hf_architecture_for(const model::ModelConfig& config);

/// config.json for the architecture; torch_dtype "float32" | "bfloat16" | "float16".
nlohmann::ordered_json hf_config_json(const model::ModelConfig& config, HfArchitecture architecture,
                                      const std::string& torch_dtype);

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;
using TensorLookup = std::function<torch::Tensor(const std::string&)>;

/// The architecture's tensors from ours: `ours` returns a parameter by its MiniMind2 name.
NamedTensors to_hf_tensors(const model::ModelConfig& config, HfArchitecture architecture, const TensorLookup& ours);

struct HfModel {
  model::ModelConfig config;
  HfArchitecture architecture = HfArchitecture::kLlama;
};

/// Our configuration of a config.json; refuses (naming the field and its value) a model_type
/// other than the four, or settings our model does not compute (untied embeddings, biases,
/// multipliers, rope scaling, sliding windows, dense layers among MoE ones, ...).
HfModel hf_model_of_config(const nlohmann::json& config_json, const std::string& what);

/// Every parameter of our model (MiniMind2 names) from the architecture's tensors; `hf` returns a
/// tensor by its name and refuses a missing one. Refuses tensors that would change the function
/// (non-zero biases, a shared expert gate where its width is not 0), naming them.
NamedTensors from_hf_tensors(const HfModel& model, const TensorLookup& hf);

}  // namespace moe::interop
