// The element math of the rotary embedding as model/functional.h's apply_rope computes it,
// x * cos + roll(x, D/2) * signed_sin * sign, shared by the CUDA kernel and the CPU loop that
// checks it. The product x * cos is rounded on its own (ATen stores it before its addcmul), the
// rest as addcmul evaluates it; sign -1 is the backward (the rotation by the opposite angle).
#pragma once

#include "model/kernels/host_device.h"

namespace moe::model::kernels {

/// The product alone, never contracted into a fused multiply-add with what follows.
MOE_HOST_DEVICE inline float product_rounded(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

/// x: the element, partner: the element D/2 away (roll by D/2), cos and signed_sin at x's index.
MOE_HOST_DEVICE inline float rotary_element(float x, float partner, float cos, float signed_sin, float sign) {
  return product_rounded(x, cos) + sign * partner * signed_sin;
}

}  // namespace moe::model::kernels
