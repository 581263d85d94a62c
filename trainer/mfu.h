// Model FLOPs utilisation, counted as the baselines we compare with count it (Megatron's and
// the PyTorch baseline's convention): training FLOPs per token = 6 x active parameters
// + 12 x layers x hidden x seq (attention scores and values, forward and backward), where the
// active parameters are all parameters less the routed experts a token does not use. MFU = FLOPs
// per token x tokens/s / the device's dense bf16 matrix rate.
#pragma once
#include <torch/types.h>

#include <cstdint>

#include "model/model_config.h"

namespace moe::trainer {

/// Parameters of the whole model (every expert once; the embedding counted once, it is tied).
int64_t total_parameters(const model::ModelConfig& config);
/// Parameters one token uses: total less (n_routed_experts - num_experts_per_tok) experts per layer.
int64_t active_parameters(const model::ModelConfig& config);
double training_flops_per_token(const model::ModelConfig& config, int64_t seq_len);

/// Dense bf16 matrix rate of one device in FLOP/s, 0 where unknown: 790e12 on H100 and H200 (an
/// 8192^3 bf16 product measured on our H100 and H200 machines), 312e12 on A100 (datasheet).
double known_peak_flops(const torch::Device& device);

}  // namespace moe::trainer
