// The element math of RMSNorm, weight * (x * rstd) with rstd = 1 /
// sqrt(mean(x^2) + eps) as MiniMind computes it in float32, and of its
// gradients, shared by the CUDA kernels and the CPU loops that check them
// (plain C++ where no CUDA compiler reads it).
#pragma once

#include <math.h>
#include <stdint.h>

#include "model/kernels/host_device.h"

namespace moe::model::kernels {

/// 1 / sqrt(mean + eps) from a row's sum of squares over `dim` elements.
MOE_HOST_DEVICE inline float rms_inverse(float sum_of_squares, int64_t dim, float eps) {
  return 1.0f / sqrtf(sum_of_squares / float(dim) + eps);
}

/// One output element: the normalised x (stored as float32, as MiniMind's x *
/// rstd is) times the weight; the caller stores it in the output's dtype.
MOE_HOST_DEVICE inline float rms_norm_element(float x, float rstd, float weight) { return weight * (x * rstd); }

/// The gradient of one input element, y = w * x * r with r = (mean(x^2) +
/// eps)^-1/2: dx = r * (w * g) - x * r^3 * sum(w * g * x) / dim; `correction`
/// is r^3 * sum(w * g * x) / dim of the row (rms_grad_correction).
MOE_HOST_DEVICE inline float rms_norm_grad_element(float grad, float x, float weight, float rstd, float correction) {
  return rstd * (weight * grad) - x * correction;
}

MOE_HOST_DEVICE inline float rms_grad_correction(float weighted_dot, float rstd, int64_t dim) {
  return rstd * rstd * rstd * weighted_dot / float(dim);
}

/// Rows per chunk of the weight's gradient: each chunk's column sums are one
/// row of partial sums, added up after (deterministic, no atomics).
constexpr int64_t kRmsWeightGradRowsPerChunk = 512;

inline int64_t rms_weight_grad_chunks(int64_t rows) {
  return (rows + kRmsWeightGradRowsPerChunk - 1) / kRmsWeightGradRowsPerChunk;
}

}  // namespace moe::model::kernels
