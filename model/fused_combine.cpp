#include "model/fused_combine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "common/check.h"
#include "model/fused_kernels.h"
#include "model/kernels/combine_math.h"

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/kernels/combine_kernels.h"
#endif

namespace moe::model {

namespace {

// position_of_copy: [N*k] int64 on the copies' device, one place per row of copies.
void check_position(const char* op, const at::Tensor& position, const at::Tensor& copies) {
  MOE_CHECK(
      position.scalar_type() == at::kLong && position.numel() == copies.size(0) && position.device() == copies.device(),
      op, ": position_of_copy ", position.sizes(), " ", position.scalar_type(), " does not index the ", copies.size(0),
      " copies");
}

void check_combine(const at::Tensor& expert_out, const at::Tensor& position, const at::Tensor& weights,
                   c10::ScalarType out_dtype) {
  MOE_CHECK(expert_out.dim() == 2 && fused_kernel_dtype(expert_out.scalar_type()), "moe::combine: expert_out ",
            expert_out.sizes(), " ", expert_out.scalar_type(), " is not [N*k, H] of Float, BFloat16 or Half");
  MOE_CHECK(weights.dim() == 2 && weights.scalar_type() == at::kFloat && weights.numel() == expert_out.size(0) &&
                weights.device() == expert_out.device(),
            "moe::combine: weights ", weights.sizes(), " ", weights.scalar_type(), " are not float32 [N, k] for ",
            expert_out.size(0), " copies on ", expert_out.device());
  check_position("moe::combine", position, expert_out);
  MOE_CHECK(out_dtype == expert_out.scalar_type() || out_dtype == at::kFloat, "moe::combine: output ", out_dtype,
            " is neither the experts' ", expert_out.scalar_type(), " nor Float");
}

// The operands both devices' implementations take: checked, contiguous, the outputs allocated.
struct ForwardOperands {
  at::Tensor expert_out, position, weights, shared, out;
  int64_t tokens, slots, hidden;
};

// shared: [N, H] in the experts' dtype, added to the output, or undefined.
void check_shared(const at::Tensor& shared, const at::Tensor& expert_out, int64_t tokens) {
  MOE_CHECK(shared.dim() == 2 && shared.size(0) == tokens && shared.size(1) == expert_out.size(1) &&
                shared.scalar_type() == expert_out.scalar_type() && shared.device() == expert_out.device(),
            "moe::combine: shared ", shared.sizes(), " ", shared.scalar_type(), " is not [", tokens, ", ",
            expert_out.size(1), "] ", expert_out.scalar_type(), " on ", expert_out.device());
}

ForwardOperands forward_operands(const at::Tensor& expert_out, const at::Tensor& position, const at::Tensor& weights,
                                 const std::optional<at::Tensor>& shared, c10::ScalarType out_dtype) {
  check_combine(expert_out, position, weights, out_dtype);
  ForwardOperands o{expert_out.contiguous(), position.contiguous(), weights.contiguous(), at::Tensor(), at::Tensor(),
                    weights.size(0),         weights.size(1),       expert_out.size(1)};
  if (shared.has_value() && shared->defined()) {
    check_shared(*shared, expert_out, o.tokens);
    o.shared = shared->contiguous();
  }
  o.out = at::empty({o.tokens, o.hidden}, o.expert_out.options().dtype(out_dtype));
  return o;
}

struct BackwardOperands {
  at::Tensor grad, expert_out, position, weights, grad_expert_out, grad_weights, grad_shared;
  int64_t tokens, slots, hidden;
};

BackwardOperands backward_operands(const at::Tensor& grad, const at::Tensor& expert_out, const at::Tensor& position,
                                   const at::Tensor& weights, bool with_shared) {
  check_combine(expert_out, position, weights, grad.scalar_type());
  BackwardOperands o{grad.contiguous(),     expert_out.contiguous(),
                     position.contiguous(), weights.contiguous(),
                     at::Tensor(),          at::Tensor(),
                     at::Tensor(),          weights.size(0),
                     weights.size(1),       expert_out.size(1)};
  MOE_CHECK(o.grad.dim() == 2 && o.grad.size(0) == o.tokens && o.grad.size(1) == o.hidden,
            "moe::combine_backward: gradient ", o.grad.sizes(), " is not [", o.tokens, ", ", o.hidden, "]");
  o.grad_expert_out = at::empty_like(o.expert_out, at::MemoryFormat::Contiguous);
  o.grad_weights = at::empty_like(o.weights, at::MemoryFormat::Contiguous);
  // Without the shared term: an empty tensor (the schema returns a Tensor either way).
  o.grad_shared = at::empty({with_shared ? o.tokens : 0, o.hidden}, o.expert_out.options());
  return o;
}

// ---- CPU: the element math token by token (the reference; what the proxies count). ----

template <typename T, typename O>
void combine_rows_cpu(const T* expert_out, const int64_t* position, const float* weights, const T* shared, O* out,
                      int64_t tokens, int64_t slots, int64_t hidden) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hidden));  // ~16384 elements a task
  at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t h = 0; h < hidden; ++h) {
        float sum = 0.f;
        for (int64_t j = 0; j < slots; ++j) {
          const int64_t copy = n * slots + j;
          const float weight = weights != nullptr ? weights[copy] : 1.f;
          sum += kernels::combine_term(float(expert_out[position[copy] * hidden + h]), weight, StoredAs<T>{});
        }
        const float routed = StoredAs<T>{}(sum);
        out[n * hidden + h] = static_cast<O>(shared != nullptr ? routed + float(shared[n * hidden + h]) : routed);
      }
    }
  });
}

template <typename T, typename O>
void combine_backward_rows_cpu(const O* grad, const T* expert_out, const int64_t* position, const float* weights,
                               T* grad_expert_out, float* grad_weights, T* grad_shared, int64_t tokens, int64_t slots,
                               int64_t hidden) {
  const StoredAs<T> round;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hidden));  // ~16384 elements a task
  at::parallel_for(0, tokens * slots, grain, [&](int64_t begin, int64_t end) {
    for (int64_t copy = begin; copy < end; ++copy) {
      const int64_t n = copy / slots, row = position[copy];
      T* grad_shared_row = grad_shared != nullptr && copy % slots == 0 ? grad_shared + n * hidden : nullptr;
      float dot = 0.f;
      for (int64_t h = 0; h < hidden; ++h) {
        const float g = round(float(grad[n * hidden + h]));
        grad_expert_out[row * hidden + h] = static_cast<T>(kernels::combine_term(g, weights[copy], round));
        if (grad_shared_row != nullptr) grad_shared_row[h] = static_cast<T>(g);
        dot += round(g * float(expert_out[row * hidden + h]));
      }
      grad_weights[copy] = round(dot);
    }
  });
}

// Calls f(T{}, O{}) for the experts' and the output's element types.
template <typename F>
void for_types(c10::ScalarType type, c10::ScalarType out_type, F f) {
  const bool same = type == out_type;
  if (type == at::kBFloat16) return same ? f(c10::BFloat16(), c10::BFloat16()) : f(c10::BFloat16(), float());
  if (type == at::kHalf) return same ? f(c10::Half(), c10::Half()) : f(c10::Half(), float());
  return f(float(), float());
}

at::Tensor combine_cpu(const at::Tensor& expert_out, const at::Tensor& position, const at::Tensor& weights,
                       const std::optional<at::Tensor>& shared, c10::ScalarType out_dtype) {
  const auto o = forward_operands(expert_out, position, weights, shared, out_dtype);
  for_types(o.expert_out.scalar_type(), out_dtype, [&](auto t, auto out_tag) {
    using T = decltype(t);
    using O = decltype(out_tag);
    combine_rows_cpu<T, O>(o.expert_out.const_data_ptr<T>(), o.position.const_data_ptr<int64_t>(),
                           o.weights.const_data_ptr<float>(), data_or_null<T>(o.shared), o.out.mutable_data_ptr<O>(),
                           o.tokens, o.slots, o.hidden);
  });
  return o.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> combine_backward_cpu(const at::Tensor& grad,
                                                                    const at::Tensor& expert_out,
                                                                    const at::Tensor& position,
                                                                    const at::Tensor& weights, bool with_shared) {
  const auto o = backward_operands(grad, expert_out, position, weights, with_shared);
  for_types(o.expert_out.scalar_type(), o.grad.scalar_type(), [&](auto t, auto out_tag) {
    using T = decltype(t);
    using O = decltype(out_tag);
    combine_backward_rows_cpu<T, O>(o.grad.const_data_ptr<O>(), o.expert_out.const_data_ptr<T>(),
                                    o.position.const_data_ptr<int64_t>(), o.weights.const_data_ptr<float>(),
                                    o.grad_expert_out.mutable_data_ptr<T>(), o.grad_weights.mutable_data_ptr<float>(),
                                    with_shared ? o.grad_shared.mutable_data_ptr<T>() : nullptr, o.tokens, o.slots,
                                    o.hidden);
  });
  return {o.grad_expert_out, o.grad_weights, o.grad_shared};
}

// The sum of each token's copies (the combine with every weight 1): checked, the output allocated.
ForwardOperands sum_operands(const at::Tensor& copies, const at::Tensor& position, int64_t slots) {
  MOE_CHECK(copies.dim() == 2 && fused_kernel_dtype(copies.scalar_type()) && slots >= 1 && copies.size(0) % slots == 0,
            "moe::sum_copies: copies ", copies.sizes(), " ", copies.scalar_type(),
            " are not [N*k, H] of Float, BFloat16 or Half for k = ", slots);
  check_position("moe::sum_copies", position, copies);
  ForwardOperands o{copies.contiguous(), position.contiguous(),  at::Tensor(), at::Tensor(),
                    at::Tensor(),        copies.size(0) / slots, slots,        copies.size(1)};
  o.out = at::empty({o.tokens, o.hidden}, o.expert_out.options());
  return o;
}

at::Tensor sum_copies_cpu(const at::Tensor& copies, const at::Tensor& position, int64_t slots) {
  const auto o = sum_operands(copies, position, slots);
  for_cpu_element_type(o.expert_out.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    combine_rows_cpu<T, T>(o.expert_out.const_data_ptr<T>(), o.position.const_data_ptr<int64_t>(), nullptr, nullptr,
                           o.out.mutable_data_ptr<T>(), o.tokens, o.slots, o.hidden);
  });
  return o.out;
}

// ---- CUDA: model/kernels/combine_kernels.cu on the current stream. ----
#ifdef MOE_TORCH_CUDA
at::Tensor sum_copies_cuda(const at::Tensor& copies, const at::Tensor& position, int64_t slots) {
  const auto o = sum_operands(copies, position, slots);
  const c10::cuda::CUDAGuard device(o.expert_out.device());
  const auto type = element_type(o.expert_out.scalar_type());
  check_launch(kernels::launch_combine(type, type, o.expert_out.const_data_ptr(), o.position.const_data_ptr<int64_t>(),
                                       nullptr, nullptr, o.out.mutable_data_ptr(), {o.tokens, o.slots, o.hidden},
                                       c10::cuda::getCurrentCUDAStream()),
               "combine_kernel (sum of copies)");
  return o.out;
}

at::Tensor combine_cuda(const at::Tensor& expert_out, const at::Tensor& position, const at::Tensor& weights,
                        const std::optional<at::Tensor>& shared, c10::ScalarType out_dtype) {
  const auto o = forward_operands(expert_out, position, weights, shared, out_dtype);
  const c10::cuda::CUDAGuard device(o.expert_out.device());
  check_launch(kernels::launch_combine(
                   element_type(o.expert_out.scalar_type()), element_type(out_dtype), o.expert_out.const_data_ptr(),
                   o.position.const_data_ptr<int64_t>(), o.weights.const_data_ptr<float>(),
                   o.shared.defined() ? o.shared.const_data_ptr() : nullptr, o.out.mutable_data_ptr(),
                   {o.tokens, o.slots, o.hidden}, c10::cuda::getCurrentCUDAStream()),
               "combine_kernel");
  return o.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> combine_backward_cuda(const at::Tensor& grad,
                                                                     const at::Tensor& expert_out,
                                                                     const at::Tensor& position,
                                                                     const at::Tensor& weights, bool with_shared) {
  const auto o = backward_operands(grad, expert_out, position, weights, with_shared);
  const c10::cuda::CUDAGuard device(o.expert_out.device());
  check_launch(kernels::launch_combine_backward(
                   element_type(o.expert_out.scalar_type()), element_type(o.grad.scalar_type()),
                   o.grad.const_data_ptr(), o.expert_out.const_data_ptr(), o.position.const_data_ptr<int64_t>(),
                   o.weights.const_data_ptr<float>(), o.grad_expert_out.mutable_data_ptr(),
                   o.grad_weights.mutable_data_ptr<float>(), with_shared ? o.grad_shared.mutable_data_ptr() : nullptr,
                   {o.tokens, o.slots, o.hidden}, c10::cuda::getCurrentCUDAStream()),
               "combine_backward_kernel");
  return {o.grad_expert_out, o.grad_weights, o.grad_shared};
}
#endif

at::Tensor call_combine(const at::Tensor& expert_out, const at::Tensor& position, const at::Tensor& weights,
                        const std::optional<at::Tensor>& shared, c10::ScalarType out_dtype) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::combine", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&, c10::ScalarType)>();
  return op.call(expert_out, position, weights, shared, out_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_combine_backward(const at::Tensor& grad,
                                                                     const at::Tensor& expert_out,
                                                                     const at::Tensor& position,
                                                                     const at::Tensor& weights, bool with_shared) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::combine_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grad, expert_out, position, weights, with_shared);
}

// shared travels as a tensor input (autograd functions take defined tensors only): an empty one is none.
struct Combine : torch::autograd::Function<Combine> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& expert_out,
                            const at::Tensor& position, const at::Tensor& weights, const at::Tensor& shared,
                            c10::ScalarType out_dtype) {
    const bool with_shared = shared.numel() > 0;
    ctx->save_for_backward({expert_out, position, weights});
    ctx->saved_data["with_shared"] = with_shared;
    return call_combine(expert_out, position, weights, with_shared ? optional_operand(shared) : std::nullopt,
                        out_dtype);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool with_shared = ctx->saved_data["with_shared"].toBool();
    auto [grad_expert_out, grad_weights, grad_shared] =
        call_combine_backward(grads[0], saved[0], saved[1], saved[2], with_shared);
    return {grad_expert_out, at::Tensor(), grad_weights, with_shared ? grad_shared : at::Tensor(), at::Tensor()};
  }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(moe, m) {
  m.def(
      "combine(Tensor expert_out, Tensor position_of_copy, Tensor weights, Tensor? shared, ScalarType out_dtype) -> "
      "Tensor",
      {at::Tag::pointwise});
  m.def(
      "combine_backward(Tensor grad, Tensor expert_out, Tensor position_of_copy, Tensor weights, bool with_shared) -> "
      "(Tensor, Tensor, Tensor)",
      {at::Tag::pointwise});
  m.def("sum_copies(Tensor copies, Tensor position_of_copy, int slots) -> Tensor", {at::Tag::pointwise});
}

TORCH_LIBRARY_IMPL(moe, CPU, m) {
  m.impl("combine", TORCH_FN(combine_cpu));
  m.impl("combine_backward", TORCH_FN(combine_backward_cpu));
  m.impl("sum_copies", TORCH_FN(sum_copies_cpu));
}

#ifdef MOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(moe, CUDA, m) {
  m.impl("combine", TORCH_FN(combine_cuda));
  m.impl("combine_backward", TORCH_FN(combine_backward_cuda));
  m.impl("sum_copies", TORCH_FN(sum_copies_cuda));
}
#endif

bool fused_combine_serves(const at::Tensor& expert_out, const at::Tensor& weights, c10::ScalarType out_dtype,
                          const at::Tensor& shared) {
  const auto t = expert_out.scalar_type();
  if (!fused_kernels_enabled() || expert_out.dim() != 2 || weights.dim() != 2 ||
      !fused_kernel_dtype(weights.scalar_type()) || weights.numel() != expert_out.size(0) ||
      weights.device() != expert_out.device() || (out_dtype != t && out_dtype != at::kFloat) ||
      (shared.defined() && shared.scalar_type() != t)) {
    return false;
  }
  return fused_kernels_take(expert_out);
}

at::Tensor fused_combine(const at::Tensor& expert_out, const at::Tensor& position_of_copy, const at::Tensor& weights,
                         c10::ScalarType out_dtype, const at::Tensor& shared) {
  // The kernels read float32 weights; bf16 ones (the CPU's autocast keeps the router's softmax in
  // bf16, CUDA's in float32) convert exactly, and their gradient converts back.
  const auto none = at::empty({0}, expert_out.options());
  return Combine::apply(expert_out, position_of_copy, weights.to(at::kFloat), shared.defined() ? shared : none,
                        out_dtype);
}

}  // namespace moe::model

namespace moe::model {

bool fused_sum_copies_serves(const at::Tensor& copies, int64_t slots) {
  if (!fused_kernels_enabled() || copies.dim() != 2 || slots < 1 || copies.size(0) % slots != 0) return false;
  return fused_kernels_take(copies);
}

at::Tensor fused_sum_copies(const at::Tensor& copies, const at::Tensor& position_of_copy, int64_t slots) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("moe::sum_copies", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(copies, position_of_copy, slots);
}

}  // namespace moe::model
