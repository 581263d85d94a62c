// The manifest of a training checkpoint (manifest.json in a step directory): what was saved, by
// which layout, and how to check every byte of it. The tensor files it lists are safetensors
// (common/safetensors.h). No LibTorch here (the fuzz target builds this alone).
//
// {
//   "format": "moe-pretrain-checkpoint", "format_version": 1,
//   "step": 100, "tokens": 409600,
//   "state": {"data_epoch": 0, "data_window": 800, "train_tokens": 123456, "seq_len": 256,
//             "bad_steps_in_a_row": 0, "last_lr": 0.00093},
//   "topology": {"world": 4, "ep": 2, "edp": 2},
//   "config": {"model.hidden_size": "512", ...},          the resolved configuration, "group.key": value
//   "rng": [{"cpu": "<hex>", "cuda": "<hex>"}, ...],        one entry per rank of the saving job
//   "files": {"model-00000-of-00004.safetensors": {"size": 123, "crc32": 456, "header_crc32": 789,
//                                                  "rank": 0}, ...},
//   "tensors": {"model.layers.0.mlp.experts.3.up_proj.weight":
//                 {"file": "...", "dtype": "F32", "shape": [1408, 512], "crc32": 12345}, ...}
// }
// Model tensors carry MiniMind2's parameter names with global expert ids; optimiser state is
// "optimizer.<parameter name>.exp_avg | .exp_avg_sq | .step" (fp32).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "trainer/training_state.h"

namespace moe::trainer {

struct ManifestFile {
  uint64_t size = 0;
  uint32_t crc32 = 0, header_crc32 = 0;
  int rank = 0;  // the rank that wrote it
};

struct ManifestTensor {
  std::string file, dtype;
  std::vector<int64_t> shape;
  uint32_t crc32 = 0;
};

struct CheckpointManifest {
  static constexpr int kFormatVersion = 1;
  static constexpr const char* kFormat = "moe-pretrain-checkpoint";
  static constexpr uint64_t kMaxBytes = uint64_t(256) << 20;

  int64_t step = 0, tokens = 0;
  TrainingState state;           // its rng is unused: see `rng`
  uint64_t train_tokens = 0;     // size of the training stream the data position refers to
  int64_t seq_len = 0;
  int world = 1, ep = 1, edp = 1;
  std::map<std::string, std::string> config;  // "group.key" -> value, as dump_config writes it
  std::vector<RankRng> rng;                    // per rank of the saving job
  std::map<std::string, ManifestFile> files;
  std::map<std::string, ManifestTensor> tensors;

  std::string to_json() const;
  /// Parses and validates (types, ranges, every tensor's file listed, sizes that fit its file).
  /// Refuses, naming `what`: malformed JSON, a foreign format, an unknown format version, a missing
  /// or mistyped field.
  static CheckpointManifest parse(const std::string& text, const std::string& what);
};

/// The name of a parameter's optimiser state in a checkpoint: "optimizer.<param>.<field>", field
/// exp_avg, exp_avg_sq or step.
std::string optimizer_key(const std::string& param, const char* field);

/// Raw bytes <-> lowercase hex (the RNG states in the manifest).
std::string to_hex(const std::string& bytes);
std::string from_hex(const std::string& hex, const std::string& what);

}  // namespace moe::trainer
