#include "model/cross_entropy.h"

#include <torch/torch.h>

#include <algorithm>

#include "common/check.h"
#include "model/functional.h"
#include "model/fused_cross_entropy.h"

namespace moe::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kBlockElements = int64_t{1} << 25;  // 128 MiB of float32 per block

struct BlockwiseCrossEntropy : torch::autograd::Function<BlockwiseCrossEntropy> {
  // Per block: log_softmax (one fused pass, as torch's cross_entropy), of which only the target's
  // entry is kept, and the row's log-sum-exp recovered from it for the backward.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& targets,
                            int64_t ignore_index, int64_t block_rows) {
    const auto dtype = compute_dtype(logits.scalar_type());
    const auto n = logits.size(0);
    const auto counted = targets != ignore_index;
    const auto picked = torch::where(counted, targets, 0).unsqueeze(1);  // a valid column for every row
    auto lse = torch::empty({n}, logits.options().dtype(dtype));
    auto log_p = torch::empty({n}, logits.options().dtype(dtype));  // log softmax at the target
    for (int64_t begin = 0; begin < n; begin += block_rows) {
      const auto rows = std::min(block_rows, n - begin);
      const auto x = logits.narrow(0, begin, rows).to(dtype);
      const auto t = picked.narrow(0, begin, rows);
      auto block_log_p = log_p.narrow(0, begin, rows).unsqueeze(1), block_lse = lse.narrow(0, begin, rows);
      at::gather_out(block_log_p, at::log_softmax(x, 1), 1, t);
      at::sub_out(block_lse, x.gather(1, t).squeeze(1), block_log_p.squeeze(1));
    }
    const auto count = counted.sum().to(dtype);
    ctx->save_for_backward({logits, lse, picked, counted, count});
    ctx->saved_data["block_rows"] = block_rows;
    return -torch::where(counted, log_p, 0).sum() / count;
  }

  // d loss / d logits = (softmax(row) - onehot(target)) * grad / count on counted rows, 0 elsewhere:
  // per block one pass from the logits to float32 softmax, one writing the gradient in their dtype.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &logits = saved[0], &lse = saved[1], &picked = saved[2], &counted = saved[3], &count = saved[4];
    const auto block_rows = ctx->saved_data["block_rows"].toInt();
    const auto n = logits.size(0);
    const auto row_scale = (counted.to(lse.scalar_type()) * (grads[0] / count)).unsqueeze(1);  // [N, 1]
    auto grad_logits = at::empty_like(logits, at::MemoryFormat::Contiguous);
    const auto minus_one = torch::full({std::min(block_rows, n), 1}, -1.0, lse.options());
    for (int64_t begin = 0; begin < n; begin += block_rows) {
      const auto rows = std::min(block_rows, n - begin);
      // logits (any dtype) minus a float32 column: float32, cast inside the subtraction's kernel.
      auto softmax = (logits.narrow(0, begin, rows) - lse.narrow(0, begin, rows).unsqueeze(1)).exp_();
      softmax.scatter_add_(1, picked.narrow(0, begin, rows), minus_one.narrow(0, 0, rows));
      auto out = grad_logits.narrow(0, begin, rows);
      at::mul_out(out, softmax, row_scale.narrow(0, begin, rows));
    }
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor blockwise_cross_entropy(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index,
                                   int64_t block_rows) {
  MOE_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
            "blockwise_cross_entropy: logits ", logits.sizes(), " and targets ", targets.sizes(), " do not match");
  MOE_CHECK(block_rows >= 0, "blockwise_cross_entropy: block_rows ", block_rows, " is negative");
  if (fused_cross_entropy_serves(logits, targets)) {
    // One kernel each way (model/fused_cross_entropy.h): no block of float32 logits at all.
    const auto rows = fused_cross_entropy_rows(logits, targets, ignore_index);
    return rows.sum() / (targets != ignore_index).sum().to(rows.scalar_type());  // NaN when none counts
  }
  if (block_rows == 0) block_rows = std::max<int64_t>(1, kBlockElements / std::max<int64_t>(1, logits.size(1)));
  return BlockwiseCrossEntropy::apply(logits, targets, ignore_index, block_rows);
}

}  // namespace moe::model
