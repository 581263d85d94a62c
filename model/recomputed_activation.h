// The feed-forward's down projection of act(gate) * up without keeping act(gate) * up for the
// backward (train.recompute act): the product saves [gate | up] instead (which the activation's
// own backward needs anyway) and its backward recomputes act(gate) * up in one elementwise pass.
// torch.compile's partitioner makes the same trade by default. Per layer it frees the product:
// [rows, I] of the routed experts and [tokens, I] of a shared expert or dense layer (there also
// act(gate) in fp32 without autocast, where gate and up are separate products).
// Values and gradients equal the plain composition's bit for bit: the same operators run.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace moe::model {

/// linear(act(gate) * up, weight) for hidden = [gate | up] ([..., 2I]); weight [out, I] in hidden's
/// dtype (cast it beforehand: the cast's own backward then returns the gradient in the parameter's
/// dtype).
at::Tensor recomputed_gated_linear(const at::Tensor& hidden, const at::Tensor& weight, const std::string& act);

/// _grouped_mm(act(gate) * up, down^T, ends) for hidden = [gate | up] ([M, 2I], the grouped
/// experts' first product), down [E, H, I], ends: [E] int32 group ends (as _grouped_mm takes).
/// Returns [M, H]; rows past ends[-1] are not written (mask them, as grouped_swiglu does).
at::Tensor recomputed_grouped_gated_linear(const at::Tensor& hidden, const at::Tensor& down, const at::Tensor& ends,
                                           const std::string& act);

/// The same with down given as the experts' float32 weights ([H, I] each), stacked and cast to
/// hidden's dtype in the forward and again in the backward instead of kept (train.recompute
/// weights; model/expert_stack.h); their gradients in float32.
at::Tensor recomputed_grouped_gated_linear_recast(const at::Tensor& hidden, const std::vector<at::Tensor>& down_parts,
                                                  const at::Tensor& ends, const std::string& act);

}  // namespace moe::model
