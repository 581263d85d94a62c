#include "bench/kernel_bench.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <functional>

#include "bench/bench_stats.h"
#include "model/cross_entropy.h"
#include "model/functional.h"
#include "model/fused_kernels.h"
#include "model/fused_rotary.h"
#include "model/moe_feed_forward.h"
#include "model/moe_gate.h"
#include "model/rms_norm.h"
#include "trainer/device.h"

namespace moe::bench {

namespace {

void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Median microseconds of one call of f, each timed between synchronisations, after warm-up calls.
double time_us(const torch::Device& device, int steps, const std::function<void()>& f) {
  for (int i = 0; i < 3; ++i) f();
  sync(device);
  std::vector<double> us;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    sync(device);
    us.push_back(1e6 * seconds_since(t0));
  }
  return median(us);
}

// f with our kernels on, then off (ATen's operators): both medians.
std::pair<double, double> fused_and_aten(const torch::Device& device, int steps, const std::function<void()>& f) {
  model::set_fused_kernels_enabled(true);
  const double fused = time_us(device, steps, f);
  model::set_fused_kernels_enabled(false);
  const double aten = time_us(device, steps, f);
  model::set_fused_kernels_enabled(true);
  return {fused, aten};
}

void report(const std::string& config, const char* kernel, const std::string& shape, double bytes,
            std::pair<double, double> us) {
  const auto [fused, aten] = us;
  std::printf("%-5s %-18s %-22s %10.1f %10.1f %8.2f %10.1f\n", config.c_str(), kernel, shape.c_str(), fused, aten,
              aten / fused, bytes / (fused * 1e3));
  std::printf(
      "{\"bench\":\"kernel\",\"config\":\"%s\",\"kernel\":\"%s\",\"shape\":\"%s\",\"fused_us\":%.2f,"
      "\"aten_us\":%.2f,\"min_bytes\":%.0f,\"fused_gb_s\":%.1f}\n",
      config.c_str(), kernel, shape.c_str(), fused, aten, bytes, bytes / (fused * 1e3));
}

std::string dims(std::initializer_list<int64_t> sizes) {
  std::string s;
  for (const auto v : sizes) s += (s.empty() ? "" : "x") + std::to_string(v);
  return s;
}

}  // namespace

void run_kernel_bench(const std::string& name, const model::ModelConfig& c, int64_t batch, int64_t seq,
                      const torch::Device& device, int steps) {
  torch::NoGradGuard no_grad;
  const auto bf16 = torch::TensorOptions(torch::kBFloat16).device(device);
  const int64_t tokens = batch * seq, rows = tokens * c.num_experts_per_tok, inter = c.resolved_intermediate_size();
  const double element = 2;  // bytes of bf16

  // The routed experts' SwiGLU: [rows, 2I] -> [rows, I], and its backward.
  const auto hidden = torch::randn({rows, 2 * inter}, bf16);
  const auto grad = torch::randn({rows, inter}, bf16);
  const double w = double(rows * inter) * element;
  report(name, "swiglu forward", dims({rows, inter}), 3 * w,
         fused_and_aten(device, steps, [&] { model::gated_activation(hidden, "silu"); }));
  report(name, "swiglu backward", dims({rows, inter}), 5 * w, fused_and_aten(device, steps, [&] {
           model::gated_activation_backward(grad, hidden, "silu", /*with_product=*/false);
         }));

  // RoPE on q and k as the attention has them: views into the fused q/k/v product.
  const int64_t heads = c.num_attention_heads, kv = c.num_key_value_heads, d = c.head_dim();
  const auto qkv = torch::randn({batch, seq, (heads + 2 * kv) * d}, bf16);
  const auto q = qkv.narrow(2, 0, heads * d).view({batch, seq, heads, d});
  const auto key = qkv.narrow(2, heads * d, kv * d).view({batch, seq, kv, d});
  const auto tables = model::rope_tables(d, seq, c.rope_theta, torch::kFloat32);
  const auto cos = tables.cos.unsqueeze(0).expand({batch, seq, d}).contiguous().to(device);
  const auto sin = tables.signed_sin.unsqueeze(0).expand({batch, seq, d}).contiguous().to(device);
  const double rope_bytes = double(tokens * (heads + kv) * d) * 2 * element + 2.0 * double(cos.nbytes());
  report(name, "rope q+k", dims({batch, seq, heads + kv, d}), rope_bytes, fused_and_aten(device, steps, [&] {
           model::apply_rope(q, cos, sin);
           model::apply_rope(key, cos, sin);
         }));

  // The combine: the experts' rows [N*k, H] weighted back into [N, H] float32, and its backward.
  const int64_t h = c.hidden_size, slots = c.num_experts_per_tok;
  const auto expert_out = torch::randn({rows, h}, bf16);
  model::ExpertGrouping grouping;
  grouping.copy_order = torch::randperm(rows, torch::TensorOptions(torch::kInt64).device(device));
  grouping.position_of_copy = torch::argsort(grouping.copy_order);
  const auto weights = torch::rand({tokens, slots}, torch::TensorOptions(torch::kFloat32).device(device));
  const double combine_bytes = double(rows * h) * element + double(tokens * h) * 4;
  report(name, "combine forward", dims({tokens, slots, h}), combine_bytes,
         fused_and_aten(device, steps, [&] { model::combine_copies(expert_out, grouping, weights, torch::kFloat32); }));
  {
    torch::AutoGradMode grad_mode(true);
    const auto leaf = expert_out.detach().requires_grad_(true);
    const auto w = weights.detach().requires_grad_(true);
    const auto upstream = torch::randn({tokens, h}, torch::TensorOptions(torch::kFloat32).device(device));
    // Forward and backward (the backward moves the forward's bytes and the gradients' again).
    report(name, "combine fwd+bwd", dims({tokens, slots, h}), 2 * combine_bytes + double(rows * h) * element,
           fused_and_aten(device, steps,
                          [&] { model::combine_copies(leaf, grouping, w, torch::kFloat32).backward(upstream); }));
  }
  {
    // The router: the gate's product, then scores, top-k and weights (and the aux loss), forward and
    // backward, under autocast as in training. The fused operator moves the logits, scores and
    // choices once each way; the rest is the product's.
    torch::AutoGradMode grad_mode(true);
    model::MoEGate gate(c);
    gate->to(device);
    const auto x = torch::randn({batch, seq, h}, bf16).requires_grad_(true);
    const int64_t experts = c.n_routed_experts;
    const auto upstream = torch::randn({tokens, slots}, torch::TensorOptions(torch::kFloat32).device(device));
    const double route_bytes = double(tokens * experts) * (2 + 4 + 4 + 4 + 2) + double(tokens * slots) * (8 + 4 + 4);
    report(name, "route fwd+bwd", dims({tokens, experts, slots}), route_bytes, fused_and_aten(device, steps, [&] {
             model::RoutingDecision r;
             {
               trainer::AutocastScope autocast(true, device.type());
               r = gate(x);
             }
             ((r.topk_weight.to(torch::kFloat32) * upstream).sum() + r.aux_loss.to(torch::kFloat32)).backward();
           }));
  }
  {
    // The mean cross entropy of the LM head's bf16 logits [tokens, vocab], forward and backward: the
    // fused rows read the logits twice and write their gradient once (the operators: float32 blocks,
    // log_softmax, the softmax recomputed, the one-hot scattered, a product and a cast).
    torch::AutoGradMode grad_mode(true);
    const int64_t vocab = c.vocab_size;
    const auto logits = torch::randn({tokens, vocab}, bf16).requires_grad_(true);
    const auto targets = torch::randint(vocab, {tokens}, torch::TensorOptions(torch::kInt64).device(device));
    report(name, "ce fwd+bwd", dims({tokens, vocab}), double(tokens * vocab) * element * 3,
           fused_and_aten(device, steps, [&] { model::blockwise_cross_entropy(logits, targets, -100).backward(); }));
  }
  {
    // The copies' grouping by expert: the router's choice [N, k] to the order, tokens, places and
    // counts (a counting sort in one operator; the operators: a sort, a count, a division and an
    // inverse permutation). Moves the ids once and writes three int64 per copy.
    const auto choice =
        torch::randint(c.n_routed_experts, {tokens, slots}, torch::TensorOptions(torch::kInt64).device(device));
    report(name, "group copies", dims({tokens, slots, c.n_routed_experts}), double(tokens * slots) * 8 * 4,
           fused_and_aten(device, steps, [&] { model::group_by_expert(choice, c.n_routed_experts); }));
  }
  {
    // The post-attention norm: the residual's add (a bf16 branch), the norm, the MoE layer's three
    // products reading its output in bf16 (a cast each where ATen's norm writes float32), and the
    // backward of it all. Both sides pay the two adds that stand for autograd's sum of the three.
    torch::AutoGradMode grad_mode(true);
    const auto f32 = torch::TensorOptions(torch::kFloat32).device(device);
    model::RMSNorm norm(h, c.rms_norm_eps);
    norm->to(device);
    const auto x = torch::randn({tokens, h}, f32).requires_grad_(true);
    const auto delta = torch::randn({tokens, h}, bf16).requires_grad_(true);
    const auto upstream = torch::randn({tokens, h}, bf16), upstream_sum = torch::randn({tokens, h}, f32);
    // What the fused kernels must move: forward x, delta in, sum and output out; backward the
    // gradient, the sum's gradient and the sum in, x's and delta's gradients out, and the weight's
    // pass over the gradient and the sum.
    const double norm_bytes = double(tokens * h) * (12 + 22);
    report(name, "add+norm fwd+bwd", dims({tokens, h}), norm_bytes, fused_and_aten(device, steps, [&] {
             at::Tensor sum, read;
             {
               trainer::AutocastScope autocast(true, device.type());
               const auto out = norm->add_then_forward_for_products(x, delta);
               sum = out.sum;
               read = out.normed.to(torch::kBFloat16) + out.normed.to(torch::kBFloat16) +
                      out.normed.to(torch::kBFloat16);
             }
             torch::autograd::backward({read, sum}, {upstream, upstream_sum});
           }));
  }
  std::fflush(stdout);
}

}  // namespace moe::bench
