// RMSNorm: weight * x / sqrt(mean(x^2) + eps), as MiniMind2.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "model/fused_rms_norm.h"

namespace moe::model {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  /// x: [..., dim] -> same shape and dtype.
  torch::Tensor forward(const torch::Tensor& x);
  /// forward(x) in the dtype the products after it compute in (matmul_dtype: bf16 under autocast),
  /// written so by the fused kernel where it serves (model/fused_rms_norm.h): the casts each product
  /// would make, made once. Elsewhere forward(x), which the products cast as before.
  torch::Tensor forward_for_products(const torch::Tensor& x);
  /// x + delta (the residual's add; delta undefined: x) and forward_for_products of it, in one pass
  /// where the fused kernel serves (model/fused_rms_norm.h), else the add and the norm as before.
  SumAndNormed add_then_forward_for_products(const torch::Tensor& x, const torch::Tensor& delta);

  torch::Tensor weight;  // [dim], ones at init

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

}  // namespace moe::model
