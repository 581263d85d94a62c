// Several weight matrices used as one, cast once: under autocast every Linear casts its weight and
// its input to bf16 on its own, and its backward casts the weight's gradient back and adds the
// input's gradients of every projection that read the same input. Concatenating the weights as
// they are cast (one multi-tensor copy) turns q/k/v, or an FFN's gate/up, into one product: one
// input cast, one GEMM with a wider output, one gradient GEMM for the input (no sums of gradients),
// one cast of the weights' gradient back. The parameters stay separate (names unchanged).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <vector>

namespace moe::model {

/// torch::cat(parts, 0).to(dtype) in one pass (one kernel on CUDA for all parts). Its backward casts
/// the gradient back to the parts' dtype at once and hands each part a contiguous slice of it.
/// The parts: same dtype, same sizes after the first dimension.
at::Tensor concat_as(const std::vector<at::Tensor>& parts, c10::ScalarType dtype);

/// concat_as without autograd: cat(parts, 0) cast to dtype in one multi-tensor copy.
at::Tensor cast_concat(at::TensorList parts, c10::ScalarType dtype);
/// Its backward: the gradient of the concatenation, [sum of rows, ...], cast to dtype (the parts')
/// and split into each part's rows, each slice contiguous.
std::vector<at::Tensor> split_cast_back(const at::Tensor& grad, c10::ScalarType dtype, const std::vector<int64_t>& rows);
/// The parts' first dimensions.
std::vector<int64_t> rows_of(at::TensorList parts);

/// Whether projecting x with weights of weight_dtype needs a cast (autocast on x's device): only then
/// does fusing pay, the cast making the concatenated copy anyway.
bool projection_casts(const at::Tensor& x, c10::ScalarType weight_dtype);

/// linear(x, cat(weights)) in matmul_dtype(x): [..., sum of the weights' rows]. For weights that
/// projection_casts; elsewhere the separate products need no copy of the weights.
at::Tensor fused_projection(const at::Tensor& x, const std::vector<at::Tensor>& weights);

}  // namespace moe::model
