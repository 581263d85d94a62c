#include "model/fused_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "common/check.h"
#include "model/fused_kernels.h"

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/kernels/cross_entropy_kernels.h"
#endif

namespace moe::model {

namespace {

void check_rows(const char* op, const at::Tensor& logits, const at::Tensor& targets) {
  MOE_CHECK(logits.dim() == 2 && fused_kernel_dtype(logits.scalar_type()) && logits.size(1) >= 1, op, ": logits ",
            logits.sizes(), " ", logits.scalar_type(), " are not [N, V] of Float, BFloat16 or Half");
  MOE_CHECK(targets.dim() == 1 && targets.scalar_type() == at::kLong && targets.size(0) == logits.size(0) &&
                targets.device() == logits.device(),
            op, ": targets ", targets.sizes(), " ", targets.scalar_type(), " are not int64 [", logits.size(0), "] on ",
            logits.device());
  MOE_CHECK(logits.size(0) < (int64_t(1) << 31), op, ": ", logits.size(0), " rows are more than the kernels take");
}

// The operands both devices' implementations take: checked, contiguous, the outputs allocated.
struct ForwardOperands {
  at::Tensor logits, targets, lse, loss;
  int64_t rows, vocab;
};

ForwardOperands forward_operands(const at::Tensor& logits, const at::Tensor& targets) {
  check_rows("moe::cross_entropy_rows", logits, targets);
  const auto as_float = logits.options().dtype(at::kFloat);
  return {logits.contiguous(),
          targets.contiguous(),
          at::empty({logits.size(0)}, as_float),
          at::empty({logits.size(0)}, as_float),
          logits.size(0),
          logits.size(1)};
}

struct BackwardOperands {
  at::Tensor logits, targets, lse, row_grad, grad_logits;
  int64_t row_grad_stride;  // 0 (autograd's expanded gradient of a sum: one value for all rows) or 1
  int64_t rows, vocab;
};

BackwardOperands backward_operands(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& targets,
                                   const at::Tensor& lse) {
  check_rows("moe::cross_entropy_rows_backward", logits, targets);
  const int64_t rows = logits.size(0);
  MOE_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == rows && lse.dim() == 1 && lse.size(0) == rows,
            "moe::cross_entropy_rows_backward: gradient ", grad_loss.sizes(), " and lse ", lse.sizes(), " are not [",
            rows, "]");
  BackwardOperands o{logits.contiguous(),
                     targets.contiguous(),
                     lse.to(at::kFloat).contiguous(),
                     grad_loss.to(at::kFloat),
                     at::Tensor(),
                     1,
                     rows,
                     logits.size(1)};
  if (rows > 0 && o.row_grad.stride(0) == 0) {
    o.row_grad_stride = 0;
  } else {
    o.row_grad = o.row_grad.contiguous();
  }
  o.grad_logits = at::empty_like(o.logits, at::MemoryFormat::Contiguous);
  return o;
}

// ---- CPU: the same math row by row (the reference; what the proxies count). ----

constexpr int64_t kRowsPerTask = 16;

std::tuple<at::Tensor, at::Tensor> cross_entropy_rows_cpu(const at::Tensor& logits_in, const at::Tensor& targets_in,
                                                          int64_t ignore_index) {
  const auto o = forward_operands(logits_in, targets_in);
  const int64_t rows = o.rows, vocab = o.vocab;
  const int64_t* target = o.targets.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    MOE_CHECK(target[r] == ignore_index || (target[r] >= 0 && target[r] < vocab), "moe::cross_entropy_rows: row ", r,
              " has target ", target[r], ", outside the vocabulary of ", vocab);
  }
  for_cpu_element_type(o.logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = o.logits.const_data_ptr<T>();
    float* lse_out = o.lse.mutable_data_ptr<float>();
    float* loss_out = o.loss.mutable_data_ptr<float>();
    at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = x + r * vocab;
        float top = -std::numeric_limits<float>::infinity(), sum = 0.f;
        for (int64_t v = 0; v < vocab; ++v) top = std::max(top, static_cast<float>(row[v]));
        if (top != -std::numeric_limits<float>::infinity()) {
          for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<float>(row[v]) - top);
        }
        lse_out[r] = top + std::log(sum);
        loss_out[r] = target[r] == ignore_index ? 0.f : lse_out[r] - static_cast<float>(row[target[r]]);
      }
    });
  });
  return {o.lse, o.loss};
}

at::Tensor cross_entropy_rows_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits_in,
                                           const at::Tensor& targets_in, const at::Tensor& lse_in,
                                           int64_t ignore_index) {
  const auto o = backward_operands(grad_loss, logits_in, targets_in, lse_in);
  const int64_t vocab = o.vocab, stride = o.row_grad_stride;
  for_cpu_element_type(o.logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = o.logits.const_data_ptr<T>();
    const int64_t* target = o.targets.const_data_ptr<int64_t>();
    const float* row_lse = o.lse.const_data_ptr<float>();
    const float* row_grad = o.row_grad.const_data_ptr<float>();
    T* out = o.grad_logits.mutable_data_ptr<T>();
    at::parallel_for(0, o.rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const bool counted = target[r] != ignore_index;
        const float scale = row_grad[r * stride];
        for (int64_t v = 0; v < vocab; ++v) {
          const float softmax = std::exp(static_cast<float>(x[r * vocab + v]) - row_lse[r]);
          out[r * vocab + v] = static_cast<T>(counted ? (softmax - (v == target[r] ? 1.f : 0.f)) * scale : 0.f);
        }
      }
    });
  });
  return o.grad_logits;
}

// ---- CUDA: model/kernels/cross_entropy_kernels.cu on the current stream. ----
#ifdef MOE_TORCH_CUDA
std::tuple<at::Tensor, at::Tensor> cross_entropy_rows_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                                           int64_t ignore_index) {
  const auto o = forward_operands(logits, targets);
  const c10::cuda::CUDAGuard device(o.logits.device());
  check_launch(kernels::launch_cross_entropy(element_type(o.logits.scalar_type()), o.logits.const_data_ptr(),
                                             o.targets.const_data_ptr<int64_t>(), o.lse.mutable_data_ptr<float>(),
                                             o.loss.mutable_data_ptr<float>(), {o.rows, o.vocab, ignore_index},
                                             c10::cuda::getCurrentCUDAStream()),
               "cross_entropy_kernel");
  return {o.lse, o.loss};
}

at::Tensor cross_entropy_rows_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                            const at::Tensor& targets, const at::Tensor& lse, int64_t ignore_index) {
  const auto o = backward_operands(grad_loss, logits, targets, lse);
  const c10::cuda::CUDAGuard device(o.logits.device());
  check_launch(
      kernels::launch_cross_entropy_backward(
          element_type(o.logits.scalar_type()), o.logits.const_data_ptr(), o.targets.const_data_ptr<int64_t>(),
          o.lse.const_data_ptr<float>(), o.row_grad.const_data_ptr<float>(), o.row_grad_stride,
          o.grad_logits.mutable_data_ptr(), {o.rows, o.vocab, ignore_index}, c10::cuda::getCurrentCUDAStream()),
      "cross_entropy_backward_kernel");
  return o.grad_logits;
}
#endif

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& logits, const at::Tensor& targets,
                                                int64_t ignore_index) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moe::cross_entropy_rows", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(logits, targets, ignore_index);
}

at::Tensor call_backward(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& targets,
                         const at::Tensor& lse, int64_t ignore_index) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moe::cross_entropy_rows_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(grad_loss, logits, targets, lse, ignore_index);
}

struct CrossEntropyRows : torch::autograd::Function<CrossEntropyRows> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& targets,
                            int64_t ignore_index) {
    auto [lse, loss] = call_forward(logits, targets, ignore_index);
    ctx->save_for_backward({logits, targets, lse});
    ctx->saved_data["ignore_index"] = ignore_index;
    return loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(3);
    if (!grads[0].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    out[0] = call_backward(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["ignore_index"].toInt());
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(moe, m) {
  m.def("cross_entropy_rows(Tensor logits, Tensor targets, int ignore_index) -> (Tensor, Tensor)");
  m.def(
      "cross_entropy_rows_backward(Tensor grad_loss, Tensor logits, Tensor targets, Tensor lse, int ignore_index) -> "
      "Tensor");
}

TORCH_LIBRARY_IMPL(moe, CPU, m) {
  m.impl("cross_entropy_rows", TORCH_FN(cross_entropy_rows_cpu));
  m.impl("cross_entropy_rows_backward", TORCH_FN(cross_entropy_rows_backward_cpu));
}

#ifdef MOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(moe, CUDA, m) {
  m.impl("cross_entropy_rows", TORCH_FN(cross_entropy_rows_cuda));
  m.impl("cross_entropy_rows_backward", TORCH_FN(cross_entropy_rows_backward_cuda));
}
#endif

bool fused_cross_entropy_serves(const at::Tensor& logits, const at::Tensor& targets) {
  if (!fused_kernels_enabled() || logits.dim() != 2 || logits.size(1) < 1 || logits.size(0) >= (int64_t(1) << 31) ||
      targets.dim() != 1 || targets.scalar_type() != at::kLong || targets.size(0) != logits.size(0) ||
      targets.device() != logits.device()) {
    return false;
  }
  return fused_kernels_take(logits);
}

at::Tensor fused_cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index) {
  return CrossEntropyRows::apply(logits, targets, ignore_index);
}

}  // namespace moe::model
