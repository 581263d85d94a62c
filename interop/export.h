// moe-export: a checkpoint of any (world, ep) layout -> a model other tools load.
//   --format hf        <out>/config.json, generation_config.json, model.safetensors (or
//                      model-00001-of-0000N.safetensors + model.safetensors.index.json above the
//                      shard size), tokenizer.json, tokenizer_config.json: transformers'
//                      AutoModelForCausalLM / AutoTokenizer load it, no remote code
//                      (interop/hf_architecture.h says which class computes which config)
//   --format minimind  <out>/pretrain_<hidden>[_moe].pth (MiniMind2's state dict, lm_head.weight
//                      included), config.json (MiniMindConfig's fields), the tokenizer files
// The directory is written beside <out> and renamed into place when complete.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe::interop {

struct ExportOptions {
  std::string checkpoint;  // a run directory or a step directory
  std::string out_dir;
  std::string format = "hf";   // hf | minimind
  std::string dtype = "fp32";  // fp32 | bf16 | fp16
  uint64_t max_shard_bytes = uint64_t(5) << 30;  // hf: larger models are sharded
  bool tokenizer = true;       // export the run's tokenizer (needs launch/setup.sh --python)
};

struct ExportSummary {
  std::string step_dir, model_class;
  std::vector<std::string> files;
  uint64_t tensor_bytes = 0;
  int64_t parameters = 0;  // of our model (the tied embedding counted once)
};

/// Refuses, naming the field, a configuration the format cannot represent exactly.
ExportSummary export_checkpoint(const ExportOptions& options);

}  // namespace moe::interop
