// Launchers of the fused RMSNorm kernels (rms_norm_kernels.cu) on raw device
// pointers: plain C++, no LibTorch. model/fused_rms_norm.h is what the model
// calls.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/kernels/element_type.h"

namespace moe::model::kernels {

/// Rows of `dim` elements, all contiguous. With delta (the residual's new term,
/// of delta_type), the norm's input is sum = x + delta, written to `sum`
/// (float32); without, x itself. out (out_type) = weight * (input * rstd); rstd
/// (float32 [rows]) = 1 / sqrt(mean(input^2) + eps).
struct RmsNormForward {
  const float *x;
  const void *delta;  // nullable
  ElementType delta_type;
  const float *weight;
  float eps;
  void *out;
  ElementType out_type;
  float *sum;  // written where delta is given
  float *rstd;
  int64_t rows, dim;
};
cudaError_t launch_rms_norm_forward(const RmsNormForward &p, cudaStream_t stream);

/// grad: the output's gradient (grad_type); input: the norm's input (the
/// forward's sum where it added); grad_input (float32) = the norm's gradient
/// plus grad_sum (the gradient the input gets from its other uses, nullable);
/// grad_delta (delta_type, nullable): grad_input again in delta's dtype.
/// weight_partials: float32 [rms_weight_grad_chunks(rows), dim], the weight's
/// gradient summed over each chunk of rows (the caller adds the chunks).
struct RmsNormBackward {
  const void *grad;
  ElementType grad_type;
  const float *grad_sum;  // nullable
  const float *input;
  const float *weight;
  const float *rstd;
  float *grad_input;
  void *grad_delta;  // nullable
  ElementType delta_type;
  float *weight_partials;
  int64_t rows, dim;
};
cudaError_t launch_rms_norm_backward(const RmsNormBackward &p, cudaStream_t stream);

}  // namespace moe::model::kernels
