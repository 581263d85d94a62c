#include "model/fused_projection.h"

#include <ATen/ops/_foreach_copy.h>
#include <torch/torch.h>

#include <numeric>

#include "common/check.h"
#include "model/functional.h"

namespace moe::model {

std::vector<int64_t> rows_of(at::TensorList parts) {
  std::vector<int64_t> rows;
  for (const auto& p : parts) rows.push_back(p.size(0));
  return rows;
}

at::Tensor cast_concat(at::TensorList parts, c10::ScalarType dtype) {
  const auto rows = rows_of(parts);
  auto shape = parts.front().sizes().vec();
  shape[0] = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  auto out = torch::empty(shape, parts.front().options().dtype(dtype));
  at::_foreach_copy_(out.split_with_sizes(rows), parts);
  return out;
}

std::vector<at::Tensor> split_cast_back(const at::Tensor& grad, c10::ScalarType dtype, const std::vector<int64_t>& rows) {
  // Contiguous: each slice then has its part's layout, and autograd keeps it as the gradient
  // instead of copying it once more.
  return grad.to(dtype, /*non_blocking=*/false, /*copy=*/false, at::MemoryFormat::Contiguous).split_with_sizes(rows);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct ConcatAs : torch::autograd::Function<ConcatAs> {
  static at::Tensor forward(AutogradContext* ctx, at::TensorList parts, c10::ScalarType dtype) {
    ctx->saved_data["dtype"] = static_cast<int64_t>(parts.front().scalar_type());
    ctx->saved_data["rows"] = rows_of(parts);
    return cast_concat(parts, dtype);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto out = split_cast_back(grads[0], static_cast<c10::ScalarType>(ctx->saved_data["dtype"].toInt()),
                               ctx->saved_data["rows"].toIntVector());
    out.emplace_back();  // dtype
    return out;
  }
};

}  // namespace

at::Tensor concat_as(const std::vector<at::Tensor>& parts, c10::ScalarType dtype) {
  MOE_CHECK(!parts.empty(), "concat_as: no parts");
  for (const auto& p : parts) {
    MOE_CHECK(p.scalar_type() == parts.front().scalar_type() && p.dim() == parts.front().dim() &&
                  p.sizes().slice(1) == parts.front().sizes().slice(1),
              "concat_as: part ", p.sizes(), " ", p.scalar_type(), " does not match ", parts.front().sizes(), " ",
              parts.front().scalar_type());
  }
  return ConcatAs::apply(at::TensorList(parts), dtype);
}

bool projection_casts(const at::Tensor& x, c10::ScalarType weight_dtype) { return matmul_dtype(x) != weight_dtype; }

at::Tensor fused_projection(const at::Tensor& x, const std::vector<at::Tensor>& weights) {
  const auto dtype = matmul_dtype(x);
  return torch::linear(x.to(dtype), concat_as(weights, dtype));
}

}  // namespace moe::model
