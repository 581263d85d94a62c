// The element math of the MoE combine, y[n] = sum_j w[n, j] * expert_out[copy (n, j)], as
// model/moe_feed_forward.cpp's operators compute it: the weight stored in the experts' dtype, each
// product stored, the sum over the slots accumulated in float32 and stored; shared by the CUDA
// kernels and the CPU loop. `round` stores a value in the experts' dtype and reads it back.
#pragma once

#include "model/kernels/host_device.h"

namespace moe::model::kernels {

/// One slot's term of the forward sum (and, with the output's gradient for expert_out, the
/// expert output's gradient, or a term of the weight's).
template <typename Round>
MOE_HOST_DEVICE float combine_term(float value, float weight, Round round) {
  return round(value * round(weight));
}

}  // namespace moe::model::kernels
