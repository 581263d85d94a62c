// RMSNorm: weight * x / sqrt(mean(x^2) + eps), as MiniMind2.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace moe::model {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  /// x: [..., dim] -> same shape and dtype.
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [dim], ones at init

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

}  // namespace moe::model
