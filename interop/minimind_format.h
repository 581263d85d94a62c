// MiniMind2's own formats: the PyTorch state dict its scripts save and load (.pth, torch.save's zip
// format), with every key MiniMindForCausalLM.load_state_dict(strict=True) expects, and the fields
// of its MiniMindConfig (config.json), which are our ModelConfig's under the same names.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "interop/hf_architecture.h"
#include "model/model_config.h"

namespace moe::interop {

/// The name MiniMind's scripts give pretrained weights: pretrain_<hidden_size>[_moe].pth (what
/// train_full_sft.py --from_weight pretrain loads from its out/ directory).
std::string minimind_weight_name(const model::ModelConfig& config);

/// Refuses, naming the field and why, a model MiniMind2's MoEGate does not compute: sigmoid scores,
/// a routing bias, group-limited routing, scaled routing weights.
void check_minimind_routing(const model::ModelConfig& config);

/// MiniMindConfig's fields for `config` (model_type "minimind").
nlohmann::ordered_json minimind_config_json(const model::ModelConfig& config);

/// Our configuration from MiniMindConfig's fields; a missing field keeps MiniMind2's default, an
/// unknown one or a bad value is refused, naming `what`.
model::ModelConfig model_config_of_minimind(const nlohmann::json& fields, const std::string& what);

/// The shapes of a MiniMind2 state dict fix everything but the attention heads, the MoE routing
/// and the numeric constants: those are taken from `given` (MiniMind2's defaults unless a
/// config.json says otherwise). Refuses a state dict that is not MiniMind2's, naming the key.
model::ModelConfig infer_minimind_config(const NamedTensors& state, model::ModelConfig given, const std::string& what);

/// Writes the tensors as torch.save would a dict of them (torch.load(path, weights_only=True)
/// reads it), through a temporary file renamed into place.
void write_pth(const std::string& path, const NamedTensors& tensors);

/// Reads a state dict saved by torch.save with LibTorch's restricted unpickler, which rebuilds
/// tensors and containers only and never executes code; refuses anything else, naming the file.
NamedTensors read_pth(const std::string& path);

}  // namespace moe::interop
