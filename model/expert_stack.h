// The routed experts' weights as one stack [experts, N, K] in the products' dtype, cast from their
// float32 parameters in one multi-tensor copy, and a grouped product that casts that stack again in
// its backward instead of keeping it from the forward (train.recompute weights). Kept, each layer's
// bf16 stack lives from its forward to its backward: all the experts' weights once more in bf16 at
// the peak (c: 2.2 B expert parameters, 4.3 GB); recast, one layer's at a time, for one more cast per
// step (what torch.compile's partitioner does for the baseline, whose casts it recomputes).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <vector>

namespace moe::model {

/// cat(parts, 0) cast to dtype, viewed as [experts, rows / experts, K]: parts [rows_i, K] of one
/// dtype, in expert order (gate_e, up_e, ... for the first product; down_e for the second). No
/// autograd.
at::Tensor stack_as(at::TensorList parts, int64_t experts, c10::ScalarType dtype);

/// The stack's gradient back to the parts: cast to their dtype, each its own contiguous rows.
std::vector<at::Tensor> unstack_gradient(const at::Tensor& grad, at::TensorList parts);

/// _grouped_mm(x, stack_as(parts, experts, x's dtype)^T, ends): [M, rows / experts], with autograd
/// for x and the parts; the backward casts the stack again. ends: [experts] int32 group ends.
at::Tensor recast_grouped_linear(const at::Tensor& x, const std::vector<at::Tensor>& parts, int64_t experts,
                                 const at::Tensor& ends);

}  // namespace moe::model
