// Test helpers: seeding + default-dtype guard, and tolerance checks that report the worst element.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "common/check.h"
#include "model/model_config.h"

namespace moe::test {

/// Sets the default dtype (float64 for reference checks) and a seed; restores the dtype on exit.
class DtypeAndSeed {
 public:
  explicit DtypeAndSeed(caffe2::TypeMeta dtype = caffe2::TypeMeta::Make<double>(), uint64_t seed = 0)
      : saved_(torch::get_default_dtype()) {
    torch::set_default_dtype(dtype);
    torch::manual_seed(seed);
  }
  ~DtypeAndSeed() { torch::set_default_dtype(saved_); }

 private:
  caffe2::TypeMeta saved_;
};

/// |actual - expected| <= atol + rtol * |expected| everywhere; on failure names the worst element,
/// its values and the share of the tolerance it used.
inline ::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected, double atol,
                                            double rtol) {
  if (!actual.defined() || !expected.defined()) {
    return ::testing::AssertionFailure() << "undefined tensor (actual " << actual.defined() << ", expected "
                                         << expected.defined() << ")";
  }
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != expected " << expected.sizes();
  }
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  const auto a = actual.detach().to(torch::kFloat64).cpu(), e = expected.detach().to(torch::kFloat64).cpu();
  const auto err = (a - e).abs();
  const auto used = torch::where(err == 0, torch::zeros_like(err), err / (atol + rtol * e.abs()));
  const auto worst = used.flatten().argmax().item<int64_t>();
  const double share = used.flatten()[worst].item<double>();
  if (share <= 1.0 && !torch::isnan(a).any().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max error " << err.max().item<double>() << "; worst flat index " << worst
                                       << ": actual " << a.flatten()[worst].item<double>() << " vs expected "
                                       << e.flatten()[worst].item<double>() << " uses " << share
                                       << "x the tolerance (atol " << atol << ", rtol " << rtol << ")";
}

/// A small MiniMind MoE for whole-model tests: hidden 32, 2 layers, 4/2 heads, 4 routed experts
/// top-2 + 1 shared.
inline model::ModelConfig small_moe_config(int64_t vocab_size) {
  model::ModelConfig c;
  c.vocab_size = vocab_size;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.use_moe = true;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  return c;
}

/// One MoE layer's config: the given sizes, softmax top-k gate, norm_topk_prob.
inline model::ModelConfig moe_layer_config(int64_t hidden, int64_t intermediate, int64_t experts, int64_t top_k,
                                           int64_t shared) {
  model::ModelConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.use_moe = true;
  c.n_routed_experts = experts;
  c.num_experts_per_tok = top_k;
  c.n_shared_experts = shared;
  return c;
}

/// Expects f to throw moe::InvalidArgument whose message contains every one of parts.
inline void expect_refusal(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << parts.front() << "'";
  } catch (const InvalidArgument& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

/// The message of the moe::InvalidArgument that f throws, or "(no error)".
inline std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(no error)";
}

/// ||a - b|| / ||b|| in float64.
inline double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const auto a64 = a.detach().to(torch::kCPU, torch::kFloat64), b64 = b.detach().to(torch::kCPU, torch::kFloat64);
  return ((a64 - b64).norm() / b64.norm().clamp_min(1e-30)).item<double>();
}

/// A gradient that was never produced (a parameter not used) counts as zeros.
inline torch::Tensor grad_or_zeros(const torch::Tensor& p) {
  return p.grad().defined() ? p.grad().clone() : torch::zeros_like(p);
}

}  // namespace moe::test
