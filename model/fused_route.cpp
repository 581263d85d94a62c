#include "model/fused_route.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "model/fused_kernels.h"
#include "model/kernels/route_math.h"

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/kernels/route_kernels.h"
#endif

namespace moe::model {

namespace {

using kernels::kMaxRouteTopK;

struct Shape {
  int64_t tokens, experts, top_k;
};

void check_top_k(const char* op, int64_t top_k, int64_t experts) {
  MOE_CHECK(top_k >= 1 && top_k <= experts && top_k <= kMaxRouteTopK, op, ": top_k ", top_k, " is not within 1..min(",
            experts, " experts, ", kMaxRouteTopK, ")");
}

Shape check_route(const at::Tensor& logits, int64_t top_k) {
  MOE_CHECK(logits.dim() == 2 && fused_kernel_dtype(logits.scalar_type()), "moe::route: logits ", logits.sizes(), " ",
            logits.scalar_type(), " are not [N, E] of Float, BFloat16 or Half");
  check_top_k("moe::route", top_k, logits.size(1));
  return {logits.size(0), logits.size(1), top_k};
}

void check_float_rows(const at::Tensor& t, const char* what, int64_t rows, int64_t cols, const at::Device& device) {
  MOE_CHECK(
      t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == rows && t.size(1) == cols && t.device() == device,
      "moe::route: ", what, " ", t.sizes(), " ", t.scalar_type(), " on ", t.device(), " is not float32 [", rows, ", ",
      cols, "] on ", device);
}

// The operands both devices' implementations take: checked, contiguous, the outputs allocated.
struct ForwardOperands {
  at::Tensor logits, bias, scores, topk_idx, topk_weight;
  Shape shape;
};

ForwardOperands forward_operands(const at::Tensor& logits, const std::optional<at::Tensor>& bias, int64_t top_k) {
  ForwardOperands o{logits.contiguous(), {}, {}, {}, {}, check_route(logits, top_k)};
  if (bias.has_value() && bias->defined()) {
    MOE_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == o.shape.experts &&
                  bias->device() == logits.device(),
              "moe::route: bias ", bias->sizes(), " ", bias->scalar_type(), " is not float32 [", o.shape.experts,
              "] on ", logits.device());
    o.bias = bias->contiguous();
  }
  const auto as_float = o.logits.options().dtype(at::kFloat);
  o.scores = at::empty({o.shape.tokens, o.shape.experts}, as_float);
  o.topk_idx = at::empty({o.shape.tokens, top_k}, o.logits.options().dtype(at::kLong));
  o.topk_weight = at::empty({o.shape.tokens, top_k}, as_float);
  return o;
}

struct BackwardOperands {
  at::Tensor grad_scores, grad_weight, scores, topk_idx, grad_logits;
  Shape shape;
};

BackwardOperands backward_operands(const std::optional<at::Tensor>& grad_scores,
                                   const std::optional<at::Tensor>& grad_weight, const at::Tensor& scores,
                                   const at::Tensor& topk_idx, c10::ScalarType logits_dtype) {
  MOE_CHECK(scores.dim() == 2 && topk_idx.dim() == 2 && topk_idx.scalar_type() == at::kLong &&
                topk_idx.size(0) == scores.size(0) && topk_idx.device() == scores.device(),
            "moe::route_backward: topk_idx ", topk_idx.sizes(), " ", topk_idx.scalar_type(),
            " is not int64 [N, k] for scores ", scores.sizes());
  const Shape shape{scores.size(0), scores.size(1), topk_idx.size(1)};
  check_float_rows(scores, "scores", shape.tokens, shape.experts, scores.device());
  MOE_CHECK(fused_kernel_dtype(logits_dtype), "moe::route_backward: logits dtype ", logits_dtype,
            " is not Float, BFloat16 or Half");
  check_top_k("moe::route_backward", shape.top_k, shape.experts);
  BackwardOperands o{{}, {}, scores.contiguous(), topk_idx.contiguous(), {}, shape};
  if (grad_scores.has_value() && grad_scores->defined()) {
    check_float_rows(*grad_scores, "the scores' gradient", shape.tokens, shape.experts, scores.device());
    o.grad_scores = grad_scores->contiguous();
  }
  if (grad_weight.has_value() && grad_weight->defined()) {
    check_float_rows(*grad_weight, "the weights' gradient", shape.tokens, shape.top_k, scores.device());
    o.grad_weight = grad_weight->contiguous();
  }
  o.grad_logits = at::empty({shape.tokens, shape.experts}, o.scores.options().dtype(logits_dtype));
  return o;
}

// ---- CPU: the math token by token (the reference; what the proxies count). ----

template <typename T>
void route_token_cpu(const T* logits, const float* bias, float* score, int64_t* topk_idx, float* topk_weight,
                     int64_t experts, int64_t top_k, const RouteOptions& o) {
  if (o.sigmoid) {
    for (int64_t e = 0; e < experts; ++e) score[e] = 1.f / (1.f + std::exp(-static_cast<float>(logits[e])));
  } else {
    float top = -std::numeric_limits<float>::infinity(), sum = 0.f;
    for (int64_t e = 0; e < experts; ++e) top = std::max(top, static_cast<float>(logits[e]));
    for (int64_t e = 0; e < experts; ++e) sum += std::exp(static_cast<float>(logits[e]) - top);
    for (int64_t e = 0; e < experts; ++e) score[e] = std::exp(static_cast<float>(logits[e]) - top) / sum;
  }
  float chosen_sum = 0.f;
  for (int64_t j = 0; j < top_k; ++j) {
    float best = 0.f;
    int best_index = -1;
    for (int64_t e = 0; e < experts; ++e) {
      bool taken = false;
      for (int64_t i = 0; i < j; ++i) taken = taken || topk_idx[i] == e;
      const float value = score[e] + (bias != nullptr ? bias[e] : 0.f);
      if (!taken && kernels::ranks_before(value, static_cast<int>(e), best, best_index)) {
        best = value, best_index = static_cast<int>(e);
      }
    }
    topk_idx[j] = best_index;
    chosen_sum += score[best_index];
  }
  chosen_sum += kernels::kRenormaliseEpsilon;
  for (int64_t j = 0; j < top_k; ++j) {
    const float s = score[topk_idx[j]];
    topk_weight[j] = (o.renormalise ? s / chosen_sum : s) * static_cast<float>(o.scale);
  }
}

template <typename T>
void route_token_backward_cpu(const float* grad_scores, const float* grad_weight, const float* score,
                              const int64_t* topk_idx, T* grad_logits, int64_t experts, int64_t top_k,
                              const RouteOptions& o) {
  float chosen_score[kMaxRouteTopK], grad_w[kMaxRouteTopK], grad_chosen[kMaxRouteTopK];
  for (int64_t j = 0; j < top_k; ++j) {
    chosen_score[j] = score[topk_idx[j]];
    grad_w[j] = grad_weight != nullptr ? grad_weight[j] : 0.f;
  }
  kernels::chosen_score_gradients(chosen_score, grad_w, static_cast<int>(top_k), o.renormalise,
                                  static_cast<float>(o.scale), grad_chosen);
  auto grad_of = [&](int64_t e) {
    float g = grad_scores != nullptr ? grad_scores[e] : 0.f;
    for (int64_t j = 0; j < top_k; ++j) g += topk_idx[j] == e ? grad_chosen[j] : 0.f;
    return g;
  };
  float dot = 0.f;
  if (!o.sigmoid) {
    for (int64_t e = 0; e < experts; ++e) dot += grad_of(e) * score[e];
  }
  for (int64_t e = 0; e < experts; ++e) {
    grad_logits[e] = static_cast<T>(kernels::logit_gradient(grad_of(e), score[e], dot, o.sigmoid));
  }
}

constexpr int64_t kTokensPerTask = 256;

std::tuple<at::Tensor, at::Tensor, at::Tensor> route_cpu(const at::Tensor& logits,
                                                         const std::optional<at::Tensor>& bias, int64_t top_k,
                                                         bool sigmoid, bool renormalise, double scale) {
  const auto o = forward_operands(logits, bias, top_k);
  const RouteOptions options{top_k, sigmoid, renormalise, scale};
  const auto [tokens, experts, k] = o.shape;
  for_cpu_element_type(o.logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = o.logits.const_data_ptr<T>();
    const float* b = data_or_null<float>(o.bias);
    float* scores = o.scores.mutable_data_ptr<float>();
    int64_t* idx = o.topk_idx.mutable_data_ptr<int64_t>();
    float* weight = o.topk_weight.mutable_data_ptr<float>();
    at::parallel_for(0, tokens, kTokensPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        route_token_cpu(in + n * experts, b, scores + n * experts, idx + n * k, weight + n * k, experts, k, options);
      }
    });
  });
  return {o.scores, o.topk_idx, o.topk_weight};
}

at::Tensor route_backward_cpu(const std::optional<at::Tensor>& grad_scores,
                              const std::optional<at::Tensor>& grad_weight, const at::Tensor& scores,
                              const at::Tensor& topk_idx, bool sigmoid, bool renormalise, double scale,
                              c10::ScalarType logits_dtype) {
  const auto o = backward_operands(grad_scores, grad_weight, scores, topk_idx, logits_dtype);
  const auto [tokens, experts, k] = o.shape;
  const RouteOptions options{k, sigmoid, renormalise, scale};
  for_cpu_element_type(logits_dtype, [&](auto tag) {
    using T = decltype(tag);
    const float* gs = data_or_null<float>(o.grad_scores);
    const float* gw = data_or_null<float>(o.grad_weight);
    const float* s = o.scores.const_data_ptr<float>();
    const int64_t* idx = o.topk_idx.const_data_ptr<int64_t>();
    T* out = o.grad_logits.mutable_data_ptr<T>();
    at::parallel_for(0, tokens, kTokensPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        route_token_backward_cpu(gs != nullptr ? gs + n * experts : nullptr, gw != nullptr ? gw + n * k : nullptr,
                                 s + n * experts, idx + n * k, out + n * experts, experts, k, options);
      }
    });
  });
  return o.grad_logits;
}

// ---- CUDA: model/kernels/route_kernels.cu on the current stream. ----
#ifdef MOE_TORCH_CUDA
kernels::RouteShape kernel_shape(const Shape& s, bool sigmoid, bool renormalise, double scale) {
  return {s.tokens,    static_cast<int>(s.experts), static_cast<int>(s.top_k), sigmoid,
          renormalise, static_cast<float>(scale)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> route_cuda(const at::Tensor& logits,
                                                          const std::optional<at::Tensor>& bias, int64_t top_k,
                                                          bool sigmoid, bool renormalise, double scale) {
  const auto o = forward_operands(logits, bias, top_k);
  const c10::cuda::CUDAGuard device(o.logits.device());
  check_launch(
      kernels::launch_route(element_type(o.logits.scalar_type()), o.logits.const_data_ptr(),
                            data_or_null<float>(o.bias), o.scores.mutable_data_ptr<float>(),
                            o.topk_idx.mutable_data_ptr<int64_t>(), o.topk_weight.mutable_data_ptr<float>(),
                            kernel_shape(o.shape, sigmoid, renormalise, scale), c10::cuda::getCurrentCUDAStream()),
      "route_kernel");
  return {o.scores, o.topk_idx, o.topk_weight};
}

at::Tensor route_backward_cuda(const std::optional<at::Tensor>& grad_scores,
                               const std::optional<at::Tensor>& grad_weight, const at::Tensor& scores,
                               const at::Tensor& topk_idx, bool sigmoid, bool renormalise, double scale,
                               c10::ScalarType logits_dtype) {
  const auto o = backward_operands(grad_scores, grad_weight, scores, topk_idx, logits_dtype);
  const c10::cuda::CUDAGuard device(o.scores.device());
  check_launch(kernels::launch_route_backward(element_type(logits_dtype), data_or_null<float>(o.grad_scores),
                                              data_or_null<float>(o.grad_weight), o.scores.const_data_ptr<float>(),
                                              o.topk_idx.const_data_ptr<int64_t>(), o.grad_logits.mutable_data_ptr(),
                                              kernel_shape(o.shape, sigmoid, renormalise, scale),
                                              c10::cuda::getCurrentCUDAStream()),
               "route_backward_kernel");
  return o.grad_logits;
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_route(const at::Tensor& logits,
                                                          const std::optional<at::Tensor>& bias,
                                                          const RouteOptions& o) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::route", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const std::optional<at::Tensor>&, int64_t, bool, bool, double)>();
  return op.call(logits, bias, o.top_k, o.sigmoid, o.renormalise, o.scale);
}

at::Tensor call_route_backward(const std::optional<at::Tensor>& grad_scores,
                               const std::optional<at::Tensor>& grad_weight, const at::Tensor& scores,
                               const at::Tensor& topk_idx, const RouteOptions& o, c10::ScalarType logits_dtype) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("moe::route_backward", "")
          .typed<at::Tensor(const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
                            const at::Tensor&, bool, bool, double, c10::ScalarType)>();
  return op.call(grad_scores, grad_weight, scores, topk_idx, o.sigmoid, o.renormalise, o.scale, logits_dtype);
}

// bias travels as a tensor input (autograd functions take defined tensors only): an empty one is none.
struct Route : torch::autograd::Function<Route> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits,
                                                const at::Tensor& bias, int64_t top_k, bool sigmoid, bool renormalise,
                                                double scale) {
    const RouteOptions o{top_k, sigmoid, renormalise, scale};
    auto [scores, topk_idx, topk_weight] = call_route(logits, bias.numel() > 0 ? optional_operand(bias) : std::nullopt, o);
    ctx->mark_non_differentiable({topk_idx});
    ctx->set_materialize_grads(false);  // the aux loss may not read the scores: no zeros written for them
    ctx->save_for_backward({scores, topk_idx});
    ctx->saved_data["sigmoid"] = sigmoid;
    ctx->saved_data["renormalise"] = renormalise;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    return {scores, topk_idx, topk_weight};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(6);
    if (!grads[0].defined() && !grads[2].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    const RouteOptions o{saved[1].size(1), ctx->saved_data["sigmoid"].toBool(), ctx->saved_data["renormalise"].toBool(),
                         ctx->saved_data["scale"].toDouble()};
    out[0] = call_route_backward(optional_operand(grads[0]), optional_operand(grads[2]), saved[0], saved[1], o,
                                 static_cast<c10::ScalarType>(ctx->saved_data["dtype"].toInt()));
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(moe, m) {
  m.def(
      "route(Tensor logits, Tensor? bias, int top_k, bool sigmoid, bool renormalise, float scale) -> "
      "(Tensor, Tensor, Tensor)");
  m.def(
      "route_backward(Tensor? grad_scores, Tensor? grad_weight, Tensor scores, Tensor topk_idx, bool sigmoid, "
      "bool renormalise, float scale, ScalarType logits_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(moe, CPU, m) {
  m.impl("route", TORCH_FN(route_cpu));
  m.impl("route_backward", TORCH_FN(route_backward_cpu));
}

#ifdef MOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(moe, CUDA, m) {
  m.impl("route", TORCH_FN(route_cuda));
  m.impl("route_backward", TORCH_FN(route_backward_cuda));
}
#endif

bool fused_route_serves(const at::Tensor& logits, int64_t top_k) {
  if (!fused_kernels_enabled() || logits.dim() != 2 || top_k < 1 || top_k > logits.size(1) || top_k > kMaxRouteTopK) {
    return false;
  }
  return fused_kernels_take(logits);
}

FusedRouting fused_route(const at::Tensor& logits, const at::Tensor& bias, const RouteOptions& options) {
  const auto none = at::empty({0}, logits.options().dtype(at::kFloat));
  const auto out = Route::apply(logits, bias.defined() ? bias : none, options.top_k, options.sigmoid,
                                options.renormalise, options.scale);
  return {out[0], out[1], out[2]};
}

}  // namespace moe::model
