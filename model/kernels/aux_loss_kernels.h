// Launchers of the fused sequence aux loss (aux_loss_kernels.cu) on raw device pointers: plain C++,
// no LibTorch. model/fused_aux_loss.h is what the gate calls.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/kernels/expert_limits.h"

namespace moe::model::kernels {

/// batch sequences of seq tokens, each token's scores over `experts` (at most kMaxCountedExperts),
/// copies_per_sequence = seq x top_k chosen ids; seq x experts below 2^31.
struct AuxLossShape {
  int64_t batch;
  int seq, experts, copies_per_sequence;
};

/// Per sequence b: counts [b, e] (float32) of the ids [B, copies_per_sequence] int64, and
/// partial[b] = scale / seq * sum_{t,e} counts[b, e] * scores[b, t, e] (scores [B, seq, E] float32).
/// A block per sequence. The loss is the sum of the partials.
cudaError_t launch_sequence_aux_loss(const float* scores, const int64_t* ids, float* counts, float* partial,
                                     const AuxLossShape& shape, float scale, cudaStream_t stream);

/// grad_scores [B, seq, E] = grad_loss[0] * scale / seq * counts[b, e]; grad_loss a device scalar.
cudaError_t launch_sequence_aux_loss_backward(const float* grad_loss, const float* counts, float* grad_scores,
                                              const AuxLossShape& shape, float scale, cudaStream_t stream);

}  // namespace moe::model::kernels
