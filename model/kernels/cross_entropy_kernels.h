// Launchers of the fused cross entropy (cross_entropy_kernels.cu) on raw device pointers: plain
// C++, no LibTorch. model/fused_cross_entropy.h is what the model calls.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/kernels/element_type.h"

namespace moe::model::kernels {

/// rows x vocab logits (rows below 2^31), one target per row; rows whose target is ignore_index do
/// not count.
struct CrossEntropyShape {
  int64_t rows, vocab, ignore_index;
};

/// From logits [rows, vocab] of `type`: lse[r] = log sum_v exp(logits[r, v]) and loss[r] = lse[r] -
/// logits[r, target[r]] (0 where ignored, NaN for a target outside the vocabulary), float32. One
/// read of the logits: a block per row, each thread keeping a running max and sum of exponentials.
cudaError_t launch_cross_entropy(ElementType type, const void* logits, const int64_t* targets, float* lse, float* loss,
                                 const CrossEntropyShape& shape, cudaStream_t stream);

/// grad_logits[r, v] = (exp(logits[r, v] - lse[r]) - [v == target[r]]) * grad_loss[r * grad_stride]
/// in `type` (0 on ignored rows): one read of the logits, one write. grad_stride 0 reads one
/// gradient for all rows (autograd's expanded gradient of a sum).
cudaError_t launch_cross_entropy_backward(ElementType type, const void* logits, const int64_t* targets,
                                          const float* lse, const float* grad_loss, int64_t grad_stride,
                                          void* grad_logits, const CrossEntropyShape& shape, cudaStream_t stream);

}  // namespace moe::model::kernels
