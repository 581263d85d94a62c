// Reading a checkpoint of any (world, ep) layout: every file checked against the manifest, every
// tensor against its CRC-32, and each parameter taken by name, whatever experts this rank holds.
// The format: trainer/checkpoint/checkpoint.h.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "common/safetensors.h"
#include "model/causal_lm.h"
#include "trainer/checkpoint/checkpoint_manifest.h"
#include "trainer/optim/training_optimizer.h"
#include "trainer/train_config.h"

namespace moe::trainer {

/// A validated checkpoint: the manifest is parsed and every file it lists exists with its size.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& step_dir);
  ~CheckpointReader();
  const CheckpointManifest& manifest() const { return manifest_; }
  const std::string& dir() const { return dir_; }
  bool has(const std::string& name) const { return manifest_.tensors.count(name) > 0; }
  /// The tensor as saved (CPU), after checking its file's header and its CRC-32 against the
  /// manifest. Refuses, naming the file, a mismatch.
  torch::Tensor read(const std::string& name) const;
  /// The configuration the run was saved with.
  TrainConfig config() const;
  /// The path of a listed non-tensor file (e.g. "tokenizer.model") after checking its CRC-32;
  /// empty if not in the checkpoint.
  std::string verified_file(const std::string& name) const;
  /// The checkpoint's tokenizer (tokenizer.model or tokenizer.json), its files verified; empty if
  /// it has none.
  std::string tokenizer_path() const;

 private:
  const SafetensorsFile& open(const std::string& file) const;
  std::string dir_;
  CheckpointManifest manifest_;
  mutable std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
};

/// Copies every parameter of lm (whatever experts it holds) from the checkpoint; refuses a
/// missing one or a shape that differs, naming both.
void restore_parameters(const CheckpointReader& reader, model::CausalLM& lm);

/// Restores the AdamW state of every parameter of lm that has one in the checkpoint.
void restore_optimizer(const CheckpointReader& reader, model::CausalLM& lm, TrainingOptimizer& optimizer);

struct LoadedModel {
  TrainConfig config;
  model::CausalLM lm = nullptr;  // all experts, on the CPU, in eval mode
  std::string tokenizer_path;    // empty if the checkpoint has none
  std::string step_dir;
};

/// The whole model of a checkpoint of any layout (moe-generate, export). path: see
/// resolve_checkpoint_dir.
LoadedModel load_model_for_inference(const std::string& path);

}  // namespace moe::trainer
