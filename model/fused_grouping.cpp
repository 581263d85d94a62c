#include "model/fused_grouping.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "model/fused_kernels.h"
#include "model/kernels/expert_limits.h"

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/kernels/grouping_kernels.h"
#endif

namespace moe::model {

namespace {

using Grouped = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The operands both devices' implementations take: checked, contiguous, the outputs allocated.
struct Operands {
  at::Tensor ids, copy_order, token_of_copy, position_of_copy, routed;
  int64_t top_k;
};

Operands operands(const at::Tensor& topk_idx, int64_t num_experts) {
  MOE_CHECK(topk_idx.dim() == 2 && topk_idx.scalar_type() == at::kLong && topk_idx.size(1) >= 1,
            "moe::group_copies: topk_idx ", topk_idx.sizes(), " ", topk_idx.scalar_type(), " is not int64 [N, k]");
  MOE_CHECK(num_experts >= 1 && num_experts <= kernels::kMaxCountedExperts, "moe::group_copies: ", num_experts,
            " experts are not within 1..", kernels::kMaxCountedExperts);
  MOE_CHECK(topk_idx.numel() < (int64_t(1) << 31), "moe::group_copies: ", topk_idx.numel(),
            " copies are more than int32 places hold");
  const auto ids = topk_idx.contiguous().view({-1});
  const auto copies = ids.size(0);
  return {ids,
          at::empty({copies}, ids.options()),
          at::empty({copies}, ids.options()),
          at::empty({copies}, ids.options()),
          at::empty({num_experts}, ids.options()),
          topk_idx.size(1)};
}

// ---- CPU: the counting sort in one pass to count and one to place (the reference). ----

Grouped group_copies_cpu(const at::Tensor& topk_idx, int64_t num_experts) {
  const auto o = operands(topk_idx, num_experts);
  const int64_t* ids = o.ids.const_data_ptr<int64_t>();
  const int64_t copies = o.ids.size(0);
  int64_t* routed = o.routed.mutable_data_ptr<int64_t>();
  std::fill(routed, routed + num_experts, int64_t{0});
  for (int64_t i = 0; i < copies; ++i) {
    MOE_CHECK(ids[i] >= 0 && ids[i] < num_experts, "moe::group_copies: copy ", i, " names expert ", ids[i],
              ", not one of the ", num_experts);
    ++routed[ids[i]];
  }
  std::vector<int64_t> next(num_experts, 0);
  for (int64_t e = 1; e < num_experts; ++e) next[e] = next[e - 1] + routed[e - 1];
  int64_t* order = o.copy_order.mutable_data_ptr<int64_t>();
  int64_t* token = o.token_of_copy.mutable_data_ptr<int64_t>();
  int64_t* position = o.position_of_copy.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < copies; ++i) {
    const int64_t place = next[ids[i]]++;
    order[place] = i, token[place] = i / o.top_k, position[i] = place;
  }
  return {o.copy_order, o.token_of_copy, o.position_of_copy, o.routed};
}

// ---- CUDA: model/kernels/grouping_kernels.cu on the current stream. ----
#ifdef MOE_TORCH_CUDA
Grouped group_copies_cuda(const at::Tensor& topk_idx, int64_t num_experts) {
  const auto o = operands(topk_idx, num_experts);
  const c10::cuda::CUDAGuard device(o.ids.device());
  const kernels::GroupingShape shape{o.ids.size(0), static_cast<int>(o.top_k), static_cast<int>(num_experts)};
  const auto workspace = at::empty({kernels::grouping_workspace_ints(shape)}, o.ids.options().dtype(at::kInt));
  check_launch(
      kernels::launch_group_copies(o.ids.const_data_ptr<int64_t>(), o.copy_order.mutable_data_ptr<int64_t>(),
                                   o.token_of_copy.mutable_data_ptr<int64_t>(),
                                   o.position_of_copy.mutable_data_ptr<int64_t>(), o.routed.mutable_data_ptr<int64_t>(),
                                   workspace.mutable_data_ptr<int>(), shape, c10::cuda::getCurrentCUDAStream()),
      "group_copies kernels");
  return {o.copy_order, o.token_of_copy, o.position_of_copy, o.routed};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(moe, m) {
  m.def("group_copies(Tensor topk_idx, int num_experts) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(moe, CPU, m) { m.impl("group_copies", TORCH_FN(group_copies_cpu)); }

#ifdef MOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(moe, CUDA, m) { m.impl("group_copies", TORCH_FN(group_copies_cuda)); }
#endif

bool fused_grouping_serves(const at::Tensor& topk_idx, int64_t num_experts) {
  if (!fused_kernels_enabled() || topk_idx.dim() != 2 || topk_idx.scalar_type() != at::kLong || num_experts < 1 ||
      num_experts > kernels::kMaxCountedExperts || topk_idx.numel() >= (int64_t(1) << 31)) {
    return false;
  }
#ifdef MOE_TORCH_CUDA
  if (topk_idx.is_cuda()) return true;
#endif
  return topk_idx.is_cpu();  // the counting sort beats ATen's sort on the CPU as well (kernel_bench: ~5x)
}

CopyGrouping fused_group_copies(const at::Tensor& topk_idx, int64_t num_experts) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::group_copies", "")
                             .typed<Grouped(const at::Tensor&, int64_t)>();
  auto [order, token, position, routed] = op.call(topk_idx, num_experts);
  return {order, token, position, routed};
}

}  // namespace moe::model
