// Launchers of the fused router (route_kernels.cu) on raw device pointers: plain C++, no LibTorch.
// model/fused_route.h is what the model calls.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/kernels/element_type.h"

namespace moe::model::kernels {

/// tokens x experts logits, top_k choices each (at most kMaxRouteTopK, model/kernels/route_math.h).
struct RouteShape {
  int64_t tokens;
  int experts, top_k;
  bool sigmoid, renormalise;
  float scale;
};

/// From logits [N, E] of `type`: scores [N, E] float32 (softmax or sigmoid), the top_k experts by
/// score + bias (bias: [E] float32 or null) as topk_idx [N, k] int64, best first, and their weights
/// [N, k] float32 (the unbiased scores, renormalised and scaled as the shape says). A warp per token.
cudaError_t launch_route(ElementType type, const void* logits, const float* bias, float* scores, int64_t* topk_idx,
                         float* topk_weight, const RouteShape& shape, cudaStream_t stream);

/// grad_logits [N, E] of `type` from the scores' gradient [N, E] and the weights' [N, k] (float32;
/// either may be null: zero), with the forward's scores and topk_idx. A warp per token.
cudaError_t launch_route_backward(ElementType type, const float* grad_scores, const float* grad_weight,
                                  const float* scores, const int64_t* topk_idx, void* grad_logits,
                                  const RouteShape& shape, cudaStream_t stream);

}  // namespace moe::model::kernels
