// Launchers of the fused MoE combine (combine_kernels.cu) on raw device pointers: plain C++, no
// LibTorch. model/fused_combine.h is what the model calls.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/kernels/element_type.h"

namespace moe::model::kernels {

/// expert_out: [N*k, H] of `type`; position: [N*k] int64, the row of copy (n, j) = n*k + j;
/// weights: [N, k] float32, or null in the forward (every copy weighs 1: the sum of a token's copies,
/// the dispatch's backward); shared: [N, H] of `type` added to each output (the shared experts'), or
/// null; out: [N, H] of `out_type` (`type` or float32). All contiguous.
struct CombineShape {
  int64_t tokens, slots, hidden;
};
cudaError_t launch_combine(ElementType type, ElementType out_type, const void* expert_out, const int64_t* position,
                           const float* weights, const void* shared, void* out, const CombineShape& shape,
                           cudaStream_t stream);

/// From grad [N, H] of `out_type`: grad_expert_out [N*k, H] of `type` (each copy's row, written at its
/// position), grad_weights [N, k] float32 and, where grad_shared is not null, the shared experts'
/// gradient [N, H] of `type` (grad in their dtype), in one pass (a warp per copy).
cudaError_t launch_combine_backward(ElementType type, ElementType out_type, const void* grad, const void* expert_out,
                                    const int64_t* position, const float* weights, void* grad_expert_out,
                                    float* grad_weights, void* grad_shared, const CombineShape& shape,
                                    cudaStream_t stream);

}  // namespace moe::model::kernels
