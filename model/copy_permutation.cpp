#include "model/copy_permutation.h"

#include <torch/torch.h>

#include "model/fused_combine.h"

namespace moe::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct GatherCopies : torch::autograd::Function<GatherCopies> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& tokens, const torch::Tensor& token_of_copy,
                               const torch::Tensor& position_of_copy) {
    ctx->save_for_backward({position_of_copy});
    ctx->saved_data["tokens"] = tokens.size(0);
    return tokens.index_select(0, token_of_copy);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto position = ctx->get_saved_variables()[0];
    const auto n = ctx->saved_data["tokens"].toInt();
    const auto& g = grads[0];  // [N*k, H]
    if (n > 0 && fused_sum_copies_serves(g, g.size(0) / n)) {
      return {fused_sum_copies(g, position, g.size(0) / n), torch::Tensor(), torch::Tensor()};  // one kernel
    }
    auto shape = g.sizes().vec();
    shape[0] = n;
    shape.insert(shape.begin() + 1, n == 0 ? 0 : g.size(0) / n);  // [N, k, H]
    return {g.index_select(0, position).view(shape).sum(1), torch::Tensor(), torch::Tensor()};
  }
};

struct PermuteRows : torch::autograd::Function<PermuteRows> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& order,
                               const torch::Tensor& inverse) {
    ctx->save_for_backward({inverse});
    return x.index_select(0, order);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0].index_select(0, ctx->get_saved_variables()[0]), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor inverse_permutation(const torch::Tensor& order) {
  return torch::empty_like(order).scatter_(0, order, torch::arange(order.size(0), order.options()));
}

torch::Tensor gather_copies(const torch::Tensor& tokens, const torch::Tensor& token_of_copy,
                            const torch::Tensor& position_of_copy) {
  return GatherCopies::apply(tokens, token_of_copy, position_of_copy);
}

torch::Tensor ungroup_copies(const torch::Tensor& grouped, const torch::Tensor& copy_order,
                             const torch::Tensor& position_of_copy) {
  return PermuteRows::apply(grouped, position_of_copy, copy_order);
}

}  // namespace moe::model
