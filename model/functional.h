// Pure math of the model as free functions, so tests can call them without a module.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace moe::model {

/// Floating dtype used for numerically sensitive math: at least float32, float64 stays float64.
c10::ScalarType compute_dtype(c10::ScalarType dtype);

/// Whether autocast is on for x's device type (a floating x): its products then compute in the
/// autocast dtype, whatever x's own.
bool autocast_on(const at::Tensor& x);

/// The dtype matrix products on x compute in: the autocast dtype where autocast is on for x's
/// device type (bfloat16 in training on GPUs), else x's own.
c10::ScalarType matmul_dtype(const at::Tensor& x);

/// weight * x / sqrt(mean(x^2, -1) + eps), computed in compute_dtype and returned in x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

/// Rotary tables for positions [0, max_positions), each [max_positions, head_dim], in the rotate-half
/// layout (frequencies repeated over both halves), computed in float64 and returned in dtype: cos,
/// and sin with its first half negated (rotate_half's sign folded in, see apply_rope).
struct RopeTables {
  at::Tensor cos;
  at::Tensor signed_sin;
};
RopeTables rope_tables(int64_t head_dim, int64_t max_positions, double theta, c10::ScalarType dtype);

/// MiniMind's x * cos + rotate_half(x) * sin, with rotate_half([x1, x2]) = [-x2, x1], computed as
/// x * cos + roll(x, head_dim / 2) * signed_sin: three passes over x (a product, a roll, a fused
/// multiply-add) instead of seven. x: [B, T, heads, head_dim]; cos, signed_sin: [B, T, head_dim]
/// (RopeTables). Computed in compute_dtype, returned in x's dtype.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin);

/// [B, T, kv_heads, D] -> [B, T, kv_heads * n_rep, D], each kv head repeated n_rep times in place.
at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep);

/// The named activation: silu, gelu or relu.
at::Tensor activation(const at::Tensor& x, const std::string& name);

/// activation(gate) * up for hidden = [gate | up] ([rows, 2I], the layout of the grouped experts'
/// first product), with its own backward (gated_activation_backward), which saves only `hidden`
/// (activation(gate) is recomputed): autograd of the two slices would zero-fill a [rows, 2I]
/// gradient per slice and add them (2.8 GB of fills per step on config a), and keep activation(gate).
at::Tensor gated_activation(const at::Tensor& hidden, const std::string& name);

/// The gradient of activation(gate) * up with respect to hidden = [gate | up], both halves written
/// into one tensor by the operators autograd's nodes call (so the same values), and, with_product,
/// the product again, which a caller recomputing it needs. silu on CUDA: one fused kernel
/// (model/fused_swiglu.h), likewise gated_activation's forward.
struct GatedActivationGrad {
  at::Tensor grad_hidden;
  at::Tensor product;  // defined only with_product
};
GatedActivationGrad gated_activation_backward(const at::Tensor& grad, const at::Tensor& hidden, const std::string& name,
                                              bool with_product);

/// How often each id in [0, n) occurs in `ids` (int64, on ids' device). Unlike torch::bincount,
/// which reads the maximum back to the host on CUDA, this never synchronises.
at::Tensor count_ids(const at::Tensor& ids, int64_t n);

}  // namespace moe::model
