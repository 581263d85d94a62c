// Model checkpoints that moe-generate (and later resume and export) read:
//   <run>/checkpoints/step_000100/config.ini            the run's configuration (trainer/config_cli.h)
//                                 tokenizer.model       the run's tokenizer
//                                 model-ep0-of-2.pt ...  parameters of EP rank r (rank 0 adds the dense ones)
//   <run>/checkpoints/latest                            the name of the newest complete step directory
// Each .pt file is a torch::serialize archive keyed by MiniMind2's parameter names; expert keys
// carry global expert ids, so the files of all EP ranks together hold the whole model once.
// A step directory is written under a temporary name and renamed when every file is complete.
#pragma once
#include <string>

#include "model/causal_lm.h"
#include "parallel/topology.h"
#include "trainer/train_config.h"

namespace moe::trainer {

/// Collective over groups.world. Returns the step directory.
std::string save_model_checkpoint(model::CausalLM& lm, const parallel::ParallelGroups& groups,
                                  const TrainConfig& config, int64_t step, const std::string& run_dir,
                                  const std::string& tokenizer_path);

struct LoadedModel {
  TrainConfig config;
  model::CausalLM lm = nullptr;  // all experts, on the CPU, in eval mode
  std::string tokenizer_path;
  std::string step_dir;
};

/// path: a step directory, a run directory or its checkpoints/ directory (the latest step).
/// Refuses a checkpoint that lacks any parameter, naming it.
LoadedModel load_model_for_inference(const std::string& path);

}  // namespace moe::trainer
