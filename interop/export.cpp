#include "interop/export.h"

#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "common/check.h"
#include "common/durable_file.h"
#include "common/python_tool.h"
#include "common/remove_tree.h"
#include "common/safetensors.h"
#include "common/safetensors_torch.h"
#include "interop/hf_architecture.h"
#include "interop/minimind_format.h"
#include "trainer/checkpoint/checkpoint.h"

namespace fs = std::filesystem;

namespace moe::interop {

namespace {

torch::ScalarType export_dtype(const std::string& dtype) {
  if (dtype == "fp32") return torch::kFloat32;
  if (dtype == "bf16") return torch::kBFloat16;
  if (dtype == "fp16") return torch::kFloat16;
  throw InvalidArgument("--dtype '" + dtype + "' is not fp32, bf16 or fp16");
}

std::string torch_dtype_name(torch::ScalarType t) {
  return t == torch::kFloat32 ? "float32" : t == torch::kBFloat16 ? "bfloat16" : "float16";
}

void write_json(const fs::path& path, const nlohmann::ordered_json& j) {
  const auto text = j.dump(2) + "\n";
  DurableFile out(path.string());
  out.write(text.data(), text.size());
  out.close();
}

// Refuses a weight the narrower type cannot hold (fp16 overflows beyond 65504), naming it.
NamedTensors converted(NamedTensors tensors, torch::ScalarType dtype) {
  for (auto& [name, value] : tensors) {
    // The routing bias stays fp32 (transformers keeps it so): its steps are finer than bf16's.
    const std::string bias = ".e_score_correction_bias";
    const bool fp32 = name.size() > bias.size() && name.compare(name.size() - bias.size(), bias.size(), bias) == 0;
    value = value.to(fp32 ? torch::kFloat32 : dtype).contiguous();
    MOE_CHECK(torch::isfinite(value).all().item<bool>(), name, " does not fit in ", c10::toString(dtype),
              " (values beyond its range): export with --dtype bf16 or fp32");
  }
  return tensors;
}

uint64_t bytes_of(const NamedTensors& tensors) {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.second.nbytes();
  return n;
}

// model.safetensors, or shards of at most max_bytes (a larger tensor alone) with the index
// transformers reads: {"metadata": {"total_size": N}, "weight_map": {name: file}}.
std::vector<std::string> write_hf_weights(const fs::path& dir, const NamedTensors& tensors, uint64_t max_bytes) {
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t bytes = tensors[i].second.nbytes();
    if (!shards.back().empty() && in_shard + bytes > max_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes;
  }
  const auto shard_name = [&](size_t s) {
    if (shards.size() == 1) return std::string("model.safetensors");
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    return std::string(name);
  };
  std::vector<std::string> files;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    std::vector<SafetensorsTensor> part;
    for (size_t i : shards[s]) {
      const auto& [name, value] = tensors[i];
      part.push_back({name, safetensors_dtype(value.scalar_type()), value.sizes().vec(), value.data_ptr()});
      weight_map[name] = shard_name(s);
    }
    write_safetensors((dir / shard_name(s)).string(), part, {{"format", "pt"}});
    files.push_back(shard_name(s));
  }
  if (shards.size() > 1) {
    write_json(dir / "model.safetensors.index.json",
               {{"metadata", {{"total_size", bytes_of(tensors)}}}, {"weight_map", weight_map}});
    files.push_back("model.safetensors.index.json");
  }
  return files;
}

}  // namespace

ExportSummary export_checkpoint(const ExportOptions& o) {
  MOE_CHECK(o.format == "hf" || o.format == "minimind", "--format '", o.format, "' is not hf or minimind");
  MOE_CHECK(!o.out_dir.empty(), "no --out_dir given");
  const auto dtype = export_dtype(o.dtype);
  ExportSummary summary;
  summary.step_dir = trainer::resolve_checkpoint_dir(o.checkpoint);
  const auto config = trainer::CheckpointReader(summary.step_dir).config().model;
  if (o.format == "minimind") check_minimind_routing(config);  // refuse before any work
  const auto architecture = o.format == "hf" ? hf_architecture_for(config) : HfArchitecture::kLlama;
  auto loaded = trainer::load_model_for_inference(summary.step_dir);
  std::map<std::string, torch::Tensor> ours;
  for (const auto& [name, value] : loaded.lm->state_dict()) ours.emplace(name, value.detach());
  for (const auto& p : loaded.lm->parameters()) summary.parameters += p.numel();
  const TensorLookup lookup = [&](const std::string& name) {
    const auto it = ours.find(name);
    MOE_CHECK(it != ours.end(), "the model has no parameter ", name);
    return it->second;
  };
  MOE_CHECK(!o.tokenizer || !loaded.tokenizer_path.empty(), "checkpoint '", summary.step_dir,
            "' has no tokenizer to export: give --no_tokenizer");

  const fs::path out(o.out_dir), tmp = fs::path(o.out_dir).string() + ".tmp";
  // A directory is replaced only if it is an earlier export (never, say, a run directory).
  MOE_CHECK(!fs::exists(out) || fs::is_empty(out) || fs::exists(out / "config.json"), "--out_dir '", o.out_dir,
            "' exists and is not an export: choose another");
  remove_tree(tmp.string());
  fs::create_directories(tmp);
  if (o.format == "hf") {
    summary.model_class = hf_class_name(architecture);
    const auto tensors = converted(to_hf_tensors(config, architecture, lookup), dtype);
    summary.tensor_bytes = bytes_of(tensors);
    summary.files = write_hf_weights(tmp, tensors, o.max_shard_bytes);
    write_json(tmp / "config.json", hf_config_json(config, architecture, torch_dtype_name(dtype)));
    write_json(tmp / "generation_config.json",
               {{"bos_token_id", config.bos_token_id}, {"eos_token_id", config.eos_token_id}});
    summary.files.insert(summary.files.end(), {"config.json", "generation_config.json"});
  } else {
    summary.model_class = "MiniMindForCausalLM";
    const auto tensors = converted(NamedTensors(ours.begin(), ours.end()), dtype);
    summary.tensor_bytes = bytes_of(tensors);
    write_pth((tmp / minimind_weight_name(config)).string(), tensors);
    write_json(tmp / "config.json", minimind_config_json(config));
    summary.files = {minimind_weight_name(config), "config.json"};
  }
  if (o.tokenizer) {
    run_python_tool("hf_tokenizer.py", {"export", loaded.tokenizer_path, tmp.string()});
    summary.files.insert(summary.files.end(), {"tokenizer.json", "tokenizer_config.json"});
  }
  fsync_directory(tmp.string());
  remove_tree(out.string());
  rename_path(tmp.string(), out.string());
  return summary;
}

}  // namespace moe::interop
