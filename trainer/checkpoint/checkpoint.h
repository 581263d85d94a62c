// Training checkpoints: the whole training state, sharded over the ranks that hold it, in a layout
// any other (world, ep) layout can resume from and Python can read.
//
//   <run>/checkpoints/step_00000100/manifest.json     what is where, with sizes and CRC-32s
//                                                     (trainer/checkpoint/checkpoint_manifest.h)
//                                   model-00000-of-00004.safetensors       parameters written by rank 0
//                                   optimizer-00000-of-00004.safetensors   their AdamW state
//                                   ... one pair per rank
//                                   config.ini, tokenizer.model            the run's, for tools
//                                   (or tokenizer.json [+ tokenizer_config.json])
//   <run>/checkpoints/latest                          the name of the newest complete step directory
//
// Tensor names are MiniMind2's parameter names with global expert ids, whatever the layout. Every
// parameter is written once: each expert by one of the ranks that hold it, the replicated dense
// parameters spread over all ranks (balanced by bytes), each with its optimiser state.
// A save writes step_N.tmp/ (every file fsync'ed), then the manifest, renames the directory and
// then replaces `latest` atomically: a crash at any moment leaves the previous checkpoint and
// `latest` valid. Readers validate every header against the file before using it and the CRC-32
// of every tensor they read.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/safetensors.h"
#include "model/causal_lm.h"
#include "parallel/topology.h"
#include "trainer/checkpoint/checkpoint_manifest.h"
#include "trainer/optim/fused_adamw.h"
#include "trainer/train_config.h"
#include "trainer/training_state.h"

namespace moe::trainer {

struct SavedCheckpoint {
  std::string dir;              // the step directory
  uint64_t bytes_this_rank = 0;  // tensor bytes this rank wrote
  uint64_t bytes_total = 0;      // all ranks together
  std::vector<uint64_t> bytes_per_rank;
  double seconds = 0;
};

struct CheckpointInputs {
  model::CausalLM lm = nullptr;
  const FusedAdamW* optimizer = nullptr;  // null: no optimiser state saved
  const parallel::ParallelGroups* groups = nullptr;
  const TrainConfig* config = nullptr;
  TrainingState state;        // with this rank's RNG states
  uint64_t train_tokens = 0;  // size of the training stream
  std::vector<std::string> tokenizer_files;  // copied into the checkpoint (see tokenizer_files())
};

/// Collective over groups.world: saves into <config.train.out_dir>/checkpoints/, replaces `latest`
/// and keeps the newest config.checkpoint.keep step directories up to this step (later ones, of an
/// abandoned continuation, are left alone). A failure on any rank throws the
/// same error on every rank and leaves the earlier checkpoints and `latest` as they were.
/// Test hook: MOE_CHECKPOINT_FAULT=<point>[:<rank>|all[:kill|fail[:<step>]]] stops the save (of
/// that step, or every save) at a named point by SIGKILL (default) or an error: before_write,
/// written (each rank's files), manifest (rank 0: written, not renamed), renamed (the step
/// directory is in place, `latest` still names the previous one), latest (`latest` replaced).
SavedCheckpoint save_checkpoint(const CheckpointInputs& inputs);

/// The step directory `path` names: a step directory, a run directory or its checkpoints/
/// directory (then the step `latest` names). Refuses, naming the path, one that has none.
std::string resolve_checkpoint_dir(const std::string& path);

/// The step directories in <run_dir>/checkpoints/, in step order.
std::vector<std::string> step_dirs(const std::string& run_dir);

/// The step directory <run_dir>/checkpoints/latest names, if there is one.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

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
void restore_optimizer(const CheckpointReader& reader, model::CausalLM& lm, FusedAdamW& optimizer);

struct LoadedModel {
  TrainConfig config;
  model::CausalLM lm = nullptr;  // all experts, on the CPU, in eval mode
  std::string tokenizer_path;    // empty if the checkpoint has none
  std::string step_dir;
};

/// The whole model of a checkpoint of any layout (moe-generate, export). path: see
/// resolve_checkpoint_dir.
LoadedModel load_model_for_inference(const std::string& path);

/// The step directory name of a step: "step_00000100".
std::string step_dir_name(int64_t step);

}  // namespace moe::trainer
