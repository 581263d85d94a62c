// Our fused kernels (model/fused_kernels.h) against the ATen operators they replace, on the shapes
// one training step gives them: time per call, the bytes a call must move at least, and the
// bandwidth that makes. On a GPU this says whether a kernel runs near the memory's rate; on the CPU
// it only exercises the loops.
#pragma once
#include <torch/types.h>

#include <string>

#include "model/model_config.h"

namespace moe::bench {

/// One table row and one JSON line per kernel and direction, for `config` on `tokens` tokens.
void run_kernel_bench(const std::string& name, const model::ModelConfig& config, int64_t batch, int64_t seq,
                      const torch::Device& device, int steps);

}  // namespace moe::bench
