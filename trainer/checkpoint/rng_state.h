// The random generators a training step draws from (dropout): torch's default CPU generator and,
// on a GPU, the default CUDA generator of the current device. Saved per rank in checkpoints.
#pragma once
#include <torch/types.h>

#include <string>

#include "trainer/checkpoint/checkpoint_manifest.h"

namespace moe::trainer {

/// This process's generator states (cuda empty unless `device` is a CUDA device).
RankRng capture_rng(const torch::Device& device);

/// Sets the generators to saved states; refuses (naming `what`) a state of the wrong size. An
/// empty cuda state leaves the CUDA generator as it is.
void restore_rng(const RankRng& rng, const torch::Device& device, const std::string& what);

}  // namespace moe::trainer
