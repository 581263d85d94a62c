// The element math of SwiGLU, silu(gate) * up, and of its backward, shared by the CUDA kernels and
// the CPU tests that check it (plain C++ where no CUDA compiler reads it). Acc is the type the math
// runs in (float for bf16/fp16/fp32 tensors, as ATen's opmath; double in the tests); `round` stores
// a value in the tensor's dtype and reads it back. The rounding points are the ones ATen's operator
// composition has (silu stored, then the product; grad * up stored, then silu_backward), so that
// the fused kernels give the values of the unfused operators.
#pragma once

#include <math.h>

#include "model/kernels/host_device.h"

namespace moe::model::kernels {

MOE_HOST_DEVICE inline float exp_of(float x) { return expf(x); }
MOE_HOST_DEVICE inline double exp_of(double x) { return exp(x); }

/// silu(gate) as ATen computes it (gate / (1 + exp(-gate))), stored, times up; the caller stores
/// the result.
template <typename Acc, typename Round>
MOE_HOST_DEVICE Acc swiglu_product(Acc gate, Acc up, Round round) {
  const Acc activated = round(gate / (Acc(1) + exp_of(-gate)));
  return activated * up;
}

template <typename Acc>
struct SwigluGrads {
  Acc grad_gate;
  Acc grad_up;
  Acc product;  // the forward's value again, for a caller that recomputes it
};

/// d/dgate and d/dup of silu(gate) * up given the output's gradient. silu'(x) = s (1 + x (1 - s)),
/// s = sigmoid(x), as ATen's silu_backward writes it.
template <typename Acc, typename Round>
MOE_HOST_DEVICE SwigluGrads<Acc> swiglu_backward(Acc grad, Acc gate, Acc up, Round round) {
  const Acc denominator = Acc(1) + exp_of(-gate);
  const Acc sigmoid = Acc(1) / denominator;
  const Acc activated = round(gate / denominator);
  const Acc grad_activated = round(grad * up);
  return {grad_activated * sigmoid * (Acc(1) + gate * (Acc(1) - sigmoid)), grad * activated, activated * up};
}

}  // namespace moe::model::kernels
