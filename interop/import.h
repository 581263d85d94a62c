// moe-import: a model of another tool -> a checkpoint of ours (model only, step 0) that
// `moe-train --checkpoint.init_from` starts from under any layout and `moe-generate` runs.
//   a Hugging Face directory   config.json of llama, qwen2_moe or granitemoeshared (what
//                              moe-export writes; refused: settings our model does not compute),
//                              model.safetensors or the index of shards, tokenizer.json if any
//   a MiniMind2 .pth           its state dict, read by LibTorch's restricted unpickler (no code
//                              runs); the configuration from its shapes and config.json beside it
//                              (or --config), else MiniMind2's defaults; the tokenizer beside it
// The checkpoint goes to <out>/checkpoints/step_00000000 with `latest` naming it.
#pragma once
#include <string>

#include "model/model_config.h"

namespace moe::interop {

struct ImportOptions {
  std::string source;     // a Hugging Face directory or a .pth file
  std::string out_dir;    // the run directory to create
  std::string config;     // .pth: a MiniMind config.json or our .ini for what shapes do not fix
  std::string tokenizer;  // a tokenizer.model / tokenizer.json to use instead of the source's
};

struct ImportSummary {
  std::string step_dir, kind;  // kind: the architecture or "MiniMind2 state dict"
  model::ModelConfig config;
  int64_t parameters = 0;
};

ImportSummary import_model(const ImportOptions& options);

}  // namespace moe::interop
