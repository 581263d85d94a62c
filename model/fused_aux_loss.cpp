#include "model/fused_aux_loss.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>
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

#include "model/kernels/aux_loss_kernels.h"
#endif

namespace moe::model {

namespace {

struct Shape {
  int64_t batch, seq, experts, copies_per_sequence;
};

bool fits(const Shape& s) {
  return s.batch >= 1 && s.seq >= 1 && s.experts >= 1 && s.experts <= kernels::kMaxCountedExperts &&
         s.seq * s.experts < (int64_t(1) << 31) && s.copies_per_sequence < (int64_t(1) << 31) && s.batch < (1 << 30);
}

Shape check_forward(const at::Tensor& scores, const at::Tensor& topk_idx) {
  MOE_CHECK(scores.dim() == 3 && scores.scalar_type() == at::kFloat, "moe::sequence_aux_loss: scores ", scores.sizes(),
            " ", scores.scalar_type(), " are not float32 [B, T, E]");
  MOE_CHECK(topk_idx.dim() == 2 && topk_idx.scalar_type() == at::kLong && topk_idx.size(0) == scores.size(0) &&
                topk_idx.size(1) % std::max<int64_t>(1, scores.size(1)) == 0 && topk_idx.device() == scores.device(),
            "moe::sequence_aux_loss: topk_idx ", topk_idx.sizes(), " ", topk_idx.scalar_type(), " on ",
            topk_idx.device(), " is not int64 [B, T*k] for scores ", scores.sizes(), " on ", scores.device());
  const Shape s{scores.size(0), scores.size(1), scores.size(2), topk_idx.size(1)};
  MOE_CHECK(fits(s), "moe::sequence_aux_loss: scores ", scores.sizes(), " are not within B, T >= 1 and 1..",
            kernels::kMaxCountedExperts, " experts");
  return s;
}

Shape check_backward(const at::Tensor& grad_loss, const at::Tensor& counts, int64_t seq) {
  MOE_CHECK(grad_loss.numel() == 1 && grad_loss.scalar_type() == at::kFloat && counts.dim() == 2 &&
                counts.scalar_type() == at::kFloat && grad_loss.device() == counts.device(),
            "moe::sequence_aux_loss_backward: grad_loss ", grad_loss.sizes(), " ", grad_loss.scalar_type(),
            " and counts ", counts.sizes(), " ", counts.scalar_type(), " are not a float32 scalar and [B, E]");
  const Shape s{counts.size(0), seq, counts.size(1), 0};
  MOE_CHECK(fits(s), "moe::sequence_aux_loss_backward: counts ", counts.sizes(), " and seq ", seq,
            " are not within B, T >= 1 and 1..", kernels::kMaxCountedExperts, " experts");
  return s;
}

// The operands both devices' implementations take: checked, contiguous, the outputs allocated.
struct ForwardOperands {
  at::Tensor scores, ids, counts;  // counts [B, E]: every entry written by the implementation
  Shape shape;
};

ForwardOperands forward_operands(const at::Tensor& scores, const at::Tensor& topk_idx) {
  const auto s = check_forward(scores, topk_idx);
  return {scores.contiguous(), topk_idx.contiguous(), at::empty({s.batch, s.experts}, scores.options()), s};
}

struct BackwardOperands {
  at::Tensor grad_loss, counts, grad_scores;
  Shape shape;
};

BackwardOperands backward_operands(const at::Tensor& grad_loss, const at::Tensor& counts, int64_t seq) {
  const auto s = check_backward(grad_loss, counts, seq);
  return {grad_loss.contiguous(), counts.contiguous(), at::empty({s.batch, s.seq, s.experts}, counts.options()), s};
}

// ---- CPU: the same sums sequence by sequence, accumulated in float64 (the reference). ----

std::tuple<at::Tensor, at::Tensor> sequence_aux_loss_cpu(const at::Tensor& scores, const at::Tensor& topk_idx,
                                                         double scale) {
  const auto o = forward_operands(scores, topk_idx);
  const auto& s = o.shape;
  float* count = o.counts.mutable_data_ptr<float>();
  std::fill(count, count + s.batch * s.experts, 0.f);
  const int64_t* id = o.ids.const_data_ptr<int64_t>();
  const float* score = o.scores.const_data_ptr<float>();
  double sum = 0.0;
  for (int64_t b = 0; b < s.batch; ++b) {
    float* row_count = count + b * s.experts;
    for (int64_t i = 0; i < s.copies_per_sequence; ++i) {
      const int64_t e = id[b * s.copies_per_sequence + i];
      MOE_CHECK(e >= 0 && e < s.experts, "moe::sequence_aux_loss: sequence ", b, " copy ", i, " names expert ", e,
                ", not one of the ", s.experts);
      row_count[e] += 1.f;
    }
    const float* row = score + b * s.seq * s.experts;
    for (int64_t j = 0; j < s.seq * s.experts; ++j) sum += double(row[j]) * double(row_count[j % s.experts]);
  }
  return {at::scalar_tensor(sum * scale / double(s.seq), o.scores.options()), o.counts};
}

at::Tensor sequence_aux_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& counts, int64_t seq,
                                          double scale) {
  const auto o = backward_operands(grad_loss, counts, seq);
  const auto& s = o.shape;
  const float g = o.grad_loss.item<float>() * static_cast<float>(scale / double(seq));
  const float* count = o.counts.const_data_ptr<float>();
  float* out = o.grad_scores.mutable_data_ptr<float>();
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t j = 0; j < s.seq * s.experts; ++j) {
      out[b * s.seq * s.experts + j] = g * count[b * s.experts + j % s.experts];
    }
  }
  return o.grad_scores;
}

// ---- CUDA: model/kernels/aux_loss_kernels.cu on the current stream. ----
#ifdef MOE_TORCH_CUDA
kernels::AuxLossShape kernel_shape(const Shape& s) {
  return {s.batch, static_cast<int>(s.seq), static_cast<int>(s.experts), static_cast<int>(s.copies_per_sequence)};
}

std::tuple<at::Tensor, at::Tensor> sequence_aux_loss_cuda(const at::Tensor& scores, const at::Tensor& topk_idx,
                                                          double scale) {
  const auto o = forward_operands(scores, topk_idx);
  const c10::cuda::CUDAGuard device(o.scores.device());
  const auto partial = at::empty({o.shape.batch}, o.scores.options());
  check_launch(kernels::launch_sequence_aux_loss(o.scores.const_data_ptr<float>(), o.ids.const_data_ptr<int64_t>(),
                                                 o.counts.mutable_data_ptr<float>(), partial.mutable_data_ptr<float>(),
                                                 kernel_shape(o.shape), static_cast<float>(scale),
                                                 c10::cuda::getCurrentCUDAStream()),
               "sequence_aux_loss_kernel");
  return {partial.sum(), o.counts};
}

at::Tensor sequence_aux_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& counts, int64_t seq,
                                           double scale) {
  const auto o = backward_operands(grad_loss, counts, seq);
  const c10::cuda::CUDAGuard device(o.counts.device());
  check_launch(
      kernels::launch_sequence_aux_loss_backward(o.grad_loss.const_data_ptr<float>(), o.counts.const_data_ptr<float>(),
                                                 o.grad_scores.mutable_data_ptr<float>(), kernel_shape(o.shape),
                                                 static_cast<float>(scale), c10::cuda::getCurrentCUDAStream()),
      "sequence_aux_loss_backward_kernel");
  return o.grad_scores;
}
#endif

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& scores, const at::Tensor& topk_idx, double scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::sequence_aux_loss", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double)>();
  return op.call(scores, topk_idx, scale);
}

at::Tensor call_backward(const at::Tensor& grad_loss, const at::Tensor& counts, int64_t seq, double scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::sequence_aux_loss_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double)>();
  return op.call(grad_loss, counts, seq, scale);
}

struct SequenceAuxLoss : torch::autograd::Function<SequenceAuxLoss> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& scores, const at::Tensor& topk_idx,
                            double scale) {
    auto [loss, counts] = call_forward(scores, topk_idx, scale);
    ctx->save_for_backward({counts});
    ctx->saved_data["seq"] = scores.size(1);
    ctx->saved_data["scale"] = scale;
    return loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(3);
    if (!grads[0].defined()) return out;
    out[0] = call_backward(grads[0].to(at::kFloat), ctx->get_saved_variables()[0], ctx->saved_data["seq"].toInt(),
                           ctx->saved_data["scale"].toDouble());
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(moe, m) {
  m.def("sequence_aux_loss(Tensor scores, Tensor topk_idx, float scale) -> (Tensor, Tensor)");
  m.def("sequence_aux_loss_backward(Tensor grad_loss, Tensor counts, int seq, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(moe, CPU, m) {
  m.impl("sequence_aux_loss", TORCH_FN(sequence_aux_loss_cpu));
  m.impl("sequence_aux_loss_backward", TORCH_FN(sequence_aux_loss_backward_cpu));
}

#ifdef MOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(moe, CUDA, m) {
  m.impl("sequence_aux_loss", TORCH_FN(sequence_aux_loss_cuda));
  m.impl("sequence_aux_loss_backward", TORCH_FN(sequence_aux_loss_backward_cuda));
}
#endif

bool fused_sequence_aux_loss_serves(const at::Tensor& scores, const at::Tensor& topk_idx) {
  if (!fused_kernels_enabled() || scores.dim() != 3 || scores.scalar_type() != at::kFloat || topk_idx.dim() != 2 ||
      topk_idx.scalar_type() != at::kLong || topk_idx.size(0) != scores.size(0) || scores.size(1) < 1 ||
      topk_idx.size(1) % scores.size(1) != 0 ||
      !fits({scores.size(0), scores.size(1), scores.size(2), topk_idx.size(1)})) {
    return false;
  }
  return fused_kernels_run_on(scores);
}

at::Tensor fused_sequence_aux_loss(const at::Tensor& scores, const at::Tensor& topk_idx, double scale) {
  return SequenceAuxLoss::apply(scores, topk_idx, scale);
}

}  // namespace moe::model
