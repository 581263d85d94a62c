#include "model/rms_norm.h"

#include <torch/torch.h>

#include "model/functional.h"
#include "model/fused_rms_norm.h"

namespace moe::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) { return rms_norm(x, weight, eps_); }

torch::Tensor RMSNormImpl::forward_for_products(const torch::Tensor& x) {
  // Serves only a float32 x written in bf16/fp16: where the products would cast it.
  const auto dtype = matmul_dtype(x);
  if (fused_rms_norm_serves(x, weight, dtype)) return fused_rms_norm(x, weight, eps_, dtype);
  return forward(x);
}

SumAndNormed RMSNormImpl::add_then_forward_for_products(const torch::Tensor& x, const torch::Tensor& delta) {
  if (!delta.defined()) return {x, forward_for_products(x)};
  const auto dtype = matmul_dtype(x);
  if (fused_add_rms_norm_serves(x, delta, weight, dtype)) {
    return fused_add_rms_norm(x, delta, weight, eps_, dtype);
  }
  const auto sum = x + delta;
  return {sum, forward_for_products(sum)};
}

}  // namespace moe::model
