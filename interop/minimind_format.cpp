#include "interop/minimind_format.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "common/check.h"
#include "common/durable_file.h"
#include "trainer/config_cli.h"

namespace moe::interop {

namespace {

const std::set<std::string>& ours_only() {
  static const std::set<std::string> fields{"capacity_factor",  "expert_compute", "routed_scaling_factor",
                                            "bias_update_rate", "router_z_loss_coef", "n_group",
                                            "topk_group"};
  return fields;
}

trainer::TrainConfig with_model(const model::ModelConfig& model) {
  trainer::TrainConfig config;
  config.model = model;
  return config;
}

}  // namespace

std::string minimind_weight_name(const model::ModelConfig& c) {
  return "pretrain_" + std::to_string(c.hidden_size) + (c.use_moe ? "_moe" : "") + ".pth";
}

void check_minimind_routing(const model::ModelConfig& c) {
  check_softmax_top_k_routing(c, ": MiniMind2's MoEGate computes softmax top-k only; export it with --format hf");
}

nlohmann::ordered_json minimind_config_json(const model::ModelConfig& config) {
  auto c = config;
  c.intermediate_size = c.resolved_intermediate_size();
  nlohmann::ordered_json j;
  j["architectures"] = {"MiniMindForCausalLM"};
  j["model_type"] = "minimind";
  for (const auto& [key, text] : trainer::config_values(with_model(c))) {
    if (key.rfind("model.", 0) != 0) continue;
    const auto name = key.substr(6);
    if (ours_only().count(name)) continue;
    const auto value = nlohmann::json::parse(text, nullptr, false);  // numbers and true/false
    j[name] = value.is_discarded() ? nlohmann::json(text) : value;
  }
  j["inference_rope_scaling"] = false;
  return j;
}

model::ModelConfig model_config_of_minimind(const nlohmann::json& fields, const std::string& what) {
  MOE_CHECK(fields.is_object(), what, " is not a JSON object");
  static const std::set<std::string> ignored{"architectures", "model_type", "transformers_version", "torch_dtype",
                                             "dtype", "tie_word_embeddings", "auto_map", "rope_scaling"};
  std::map<std::string, std::string> values;
  for (const auto& [key, value] : fields.items()) {
    if (ignored.count(key) || value.is_null()) continue;
    if (key == "inference_rope_scaling") {
      MOE_CHECK(!value.get<bool>(), what, ": inference_rope_scaling true (YaRN) is not computed by our model");
      continue;
    }
    MOE_CHECK(!ours_only().count(key), what, ": '", key, "' is not a MiniMindConfig field");
    values["model." + key] = value.is_string() ? value.get<std::string>() : value.dump();
  }
  return trainer::config_from_values(values, what).model;
}

model::ModelConfig infer_minimind_config(const NamedTensors& state, model::ModelConfig c, const std::string& what) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  const auto get = [&](const std::string& name) {
    const auto it = by_name.find(name);
    MOE_CHECK(it != by_name.end(), what, " is not a MiniMind2 state dict: it lacks ", name);
    return it->second;
  };
  const auto embed = get("model.embed_tokens.weight");
  c.vocab_size = embed.size(0);
  c.hidden_size = embed.size(1);
  const std::regex layer_key(R"(model\.layers\.(\d+)\..*)"), expert_key(R"(model\.layers\.0\.mlp\.(experts|shared_experts)\.(\d+)\.gate_proj\.weight)");
  int64_t layers = 0, routed = 0, shared = 0;
  for (const auto& [name, value] : state) {
    std::smatch m;
    if (std::regex_match(name, m, layer_key)) layers = std::max<int64_t>(layers, std::stoll(m[1]) + 1);
    if (std::regex_match(name, m, expert_key)) {
      auto& count = m[1] == "experts" ? routed : shared;
      count = std::max<int64_t>(count, std::stoll(m[2]) + 1);
    }
  }
  c.num_hidden_layers = layers;
  c.use_moe = by_name.count("model.layers.0.mlp.gate.weight") > 0;
  if (c.use_moe) {
    c.n_routed_experts = get("model.layers.0.mlp.gate.weight").size(0);
    MOE_CHECK(routed == c.n_routed_experts, what, ": the gate of layer 0 routes to ", c.n_routed_experts,
              " experts, the state dict holds ", routed);
    c.n_shared_experts = shared;
    c.num_experts_per_tok = std::min(c.num_experts_per_tok, c.n_routed_experts);
    c.intermediate_size = get("model.layers.0.mlp.experts.0.gate_proj.weight").size(0);
  } else {
    c.intermediate_size = get("model.layers.0.mlp.gate_proj.weight").size(0);
  }
  MOE_CHECK(c.hidden_size % c.num_attention_heads == 0, what, ": hidden_size ", c.hidden_size,
            " is not a multiple of num_attention_heads ", c.num_attention_heads, " (give the model's config.json)");
  c.num_key_value_heads = get("model.layers.0.self_attn.k_proj.weight").size(0) / c.head_dim();
  c.validate();
  return c;
}

// torch::pickle_save() tags typed containers with torch.jit._pickle.restore_type_tag, which
// torch.load(weights_only=True) refuses; the same pickler without tags writes what torch.save does.
void write_pth(const std::string& path, const NamedTensors& tensors) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  for (const auto& [name, value] : tensors) dict.insert(name, value.contiguous());
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&](const char* bytes, size_t n) { pickle.insert(pickle.end(), bytes, bytes + n); },
                              nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(dict);
  pickler.stop();
  const auto tmp = path + ".tmp";
  DurableFile out(tmp);
  {
    caffe2::serialize::PyTorchStreamWriter zip([&](const void* bytes, size_t n) {
      out.write(bytes, n);
      return n;
    });
    torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), zip);
    zip.writeEndOfFile();
  }
  out.close();
  rename_path(tmp, path);
}

NamedTensors read_pth(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), "cannot open '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    std::string why = e.what();
    why = why.substr(0, why.find('\n'));
    // Its assertion on an OrderedDict with _metadata (torch.save(model.state_dict())) says nothing useful.
    if (why.find("INTERNAL ASSERT") != std::string::npos) why = "an OrderedDict with metadata, or another object";
    throw InvalidArgument("'" + path + "' is not a state dict LibTorch's restricted unpickler (which runs no code) can "
                          "read: " + why + ". It reads a plain dict of tensors, as MiniMind's scripts save; re-save "
                          "one in Python with torch.save(dict(state_dict), path)");
  }
  MOE_CHECK(value.isGenericDict(), "'", path, "' holds a ", value.tagKind(), ", not a dict of tensors");
  NamedTensors out;
  for (const auto& entry : value.toGenericDict()) {
    MOE_CHECK(entry.key().isString() && entry.value().isTensor(), "'", path,
              "' is not a state dict: an entry is not a name and a tensor");
    out.emplace_back(entry.key().toStringRef(), entry.value().toTensor());
  }
  return out;
}

}  // namespace moe::interop
