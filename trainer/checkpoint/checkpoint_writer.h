// Saving a checkpoint: every rank writes its share of the training state (the plan of
// trainer/checkpoint/checkpoint_write_plan.h) into step_N.tmp/, rank 0 joins the shares into the
// manifest, renames the directory into place and replaces `latest`. The format and its guarantees:
// trainer/checkpoint/checkpoint.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "parallel/topology.h"
#include "trainer/optim/training_optimizer.h"
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
  TrainingOptimizer* optimizer = nullptr;  // null: no optimiser state saved
  const parallel::ParallelGroups* groups = nullptr;
  const TrainConfig* config = nullptr;
  TrainingState state;        // with this rank's RNG states
  uint64_t train_tokens = 0;  // size of the training stream
  std::vector<std::string> tokenizer_files;  // copied into the checkpoint (see tokenizer_files())
};

/// Collective over groups.world: saves into <config.train.out_dir>/checkpoints/, replaces `latest`
/// and keeps the newest config.checkpoint.keep step directories up to this step (later ones, of an
/// abandoned continuation, are left alone). A failure on any rank throws the same error on every
/// rank, removes the partial step_N.tmp/ and leaves the earlier checkpoints and `latest` as they
/// were.
/// Test hook: MOE_CHECKPOINT_FAULT=<point>[:<rank>|all[:kill|fail|pause<seconds>[:<step>]]] stops
/// the save (of that step, or every save) at a named point by SIGKILL (default) or an error, or
/// slows it down (pause20: 20 s there): before_write, written (each rank's files), manifest (rank 0:
/// written, not renamed), renamed (the step directory is in place, `latest` still names the
/// previous one), latest (`latest` replaced).
SavedCheckpoint save_checkpoint(const CheckpointInputs& inputs);

}  // namespace moe::trainer
