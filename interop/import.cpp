#include "interop/import.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "common/check.h"
#include "common/safetensors.h"
#include "common/safetensors_torch.h"
#include "interop/hf_architecture.h"
#include "interop/minimind_format.h"
#include "model/causal_lm.h"
#include "parallel/communicator.h"
#include "parallel/topology.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/config_cli.h"
#include "trainer/data/tokenizer.h"

namespace fs = std::filesystem;

namespace moe::interop {

namespace {

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  MOE_CHECK(in.good(), "cannot open '", path.string(), "'");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument("'" + path.string() + "' is not valid JSON: " + e.what());
  }
}

// The safetensors files of a Hugging Face directory, each tensor name -> its file.
class HfWeights {
 public:
  explicit HfWeights(const fs::path& dir) {
    const auto index = dir / "model.safetensors.index.json";
    std::vector<std::string> names;
    if (fs::exists(index)) {
      const auto j = read_json(index);
      MOE_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), "'", index.string(), "' has no weight_map");
      for (const auto& [name, file] : j["weight_map"].items()) names.push_back(file.get<std::string>());
    } else {
      MOE_CHECK(fs::exists(dir / "model.safetensors"), "'", dir.string(),
                "' has neither model.safetensors nor model.safetensors.index.json (only safetensors weights are read)");
      names.push_back("model.safetensors");
    }
    for (const auto& name : names) {
      if (files_.count(name)) continue;
      MOE_CHECK(name.find('/') == std::string::npos, "'", index.string(), "' names a file outside the directory: ", name);
      auto& file = files_[name] = std::make_unique<SafetensorsFile>((dir / name).string());
      for (const auto& entry : file->header().tensors) where_[entry.name] = file.get();
    }
  }
  torch::Tensor operator()(const std::string& name) const {
    const auto it = where_.find(name);
    MOE_CHECK(it != where_.end(), "the model has no tensor ", name);
    return read_tensor(*it->second, *it->second->find(name));
  }

 private:
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
};

model::ModelConfig given_minimind_config(const ImportOptions& o) {
  auto path = o.config;
  if (path.empty() && fs::exists(fs::path(o.source).parent_path() / "config.json")) {
    path = (fs::path(o.source).parent_path() / "config.json").string();
  }
  if (path.empty()) return model::ModelConfig{};  // MiniMind2's defaults
  if (fs::path(path).extension() == ".json") return model_config_of_minimind(read_json(path), path);
  return trainer::load_config_file(path).model;
}

// Our model of `config` holding `tensors` (MiniMind2 names, all of them, nothing else).
model::CausalLM model_of(const model::ModelConfig& config, const NamedTensors& tensors, const std::string& what) {
  model::CausalLM lm(config);
  std::map<std::string, torch::Tensor> given(tensors.begin(), tensors.end());
  const auto tied = given.find("lm_head.weight");
  if (tied != given.end()) {
    const auto& embed = given.at("model.embed_tokens.weight");
    MOE_CHECK(tied->second.sizes() == embed.sizes() && torch::equal(tied->second, embed), what,
              ": lm_head.weight differs from model.embed_tokens.weight; our model ties them");
    given.erase(tied);
  }
  torch::NoGradGuard no_grad;
  for (auto& p : lm->named_parameters()) {
    const auto it = given.find(p.key());
    MOE_CHECK(it != given.end(), what, " lacks ", p.key());
    MOE_CHECK(it->second.sizes() == p.value().sizes(), what, ": ", p.key(), " has shape ", it->second.sizes(),
              ", the model expects ", p.value().sizes());
    MOE_CHECK(torch::isfinite(it->second).all().item<bool>(), what, ": ", p.key(), " holds non-finite values");
    p.value().copy_(it->second);
    given.erase(it);
  }
  MOE_CHECK(given.empty(), what, " holds ", given.begin()->first, ", which the model of this configuration has not");
  return lm;
}

}  // namespace

ImportSummary import_model(const ImportOptions& o) {
  MOE_CHECK(!o.out_dir.empty(), "no --out_dir given");
  MOE_CHECK(fs::exists(o.source), "'", o.source, "' does not exist");
  MOE_CHECK(trainer::step_dirs(o.out_dir).empty(), "'", o.out_dir,
            "' already holds checkpoints: import into another --out_dir");
  ImportSummary summary;
  NamedTensors tensors;
  std::vector<std::string> tokenizer;
  if (fs::is_directory(o.source)) {
    const auto what = (fs::path(o.source) / "config.json").string();
    MOE_CHECK(fs::exists(what), "'", o.source, "' is a directory without config.json (not a Hugging Face model)");
    const auto hf = hf_model_of_config(read_json(what), what);
    summary.config = hf.config;
    summary.kind = hf_class_name(hf.architecture);
    const HfWeights weights(o.source);
    tensors = from_hf_tensors(hf, std::cref(weights));
    tokenizer = trainer::tokenizer_files(o.source);
  } else {
    tensors = read_pth(o.source);
    summary.config = infer_minimind_config(tensors, given_minimind_config(o), o.source);
    summary.kind = "MiniMind2 state dict";
    tokenizer = trainer::tokenizer_files(fs::path(o.source).parent_path().string());
  }
  if (!o.tokenizer.empty()) {
    MOE_CHECK(fs::is_regular_file(o.tokenizer), "--tokenizer '", o.tokenizer, "' is not a file");
    tokenizer = {o.tokenizer};
    const auto config = fs::path(o.tokenizer).parent_path() / "tokenizer_config.json";
    if (fs::path(o.tokenizer).extension() == ".json" && fs::exists(config)) tokenizer.push_back(config.string());
  }
  for (auto& [name, value] : tensors) value = value.to(torch::kFloat32);
  auto lm = model_of(summary.config, tensors, o.source);
  for (const auto& p : lm->parameters()) summary.parameters += p.numel();

  trainer::TrainConfig config;
  config.model = summary.config;
  config.train.out_dir = o.out_dir;
  const auto groups = parallel::make_groups(parallel::make_single_communicator(), 1,
                                            summary.config.use_moe ? summary.config.n_routed_experts : 1);
  trainer::CheckpointInputs in;
  in.lm = lm;
  in.groups = &groups;
  in.config = &config;
  in.tokenizer_files = tokenizer;
  summary.step_dir = trainer::save_checkpoint(in).dir;
  return summary;
}

}  // namespace moe::interop
