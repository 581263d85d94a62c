#include "model/generate.h"

#include <cmath>

#include <torch/torch.h>

#include <algorithm>

#include "common/check.h"

namespace moe::model {

at::Tensor apply_repetition_penalty(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& seen,
                                    double penalty) {
  if (penalty == 1.0) return logits;
  MOE_CHECK(penalty > 0, "repetition_penalty must be positive, got ", penalty);
  auto out = logits.clone();
  for (size_t b = 0; b < seen.size(); ++b) {
    if (seen[b].empty()) continue;
    auto unique_ids = seen[b];
    std::sort(unique_ids.begin(), unique_ids.end());
    unique_ids.erase(std::unique(unique_ids.begin(), unique_ids.end()), unique_ids.end());
    const auto ids = torch::tensor(unique_ids, torch::kInt64).to(logits.device());
    auto row = out[b];
    const auto picked = row.index_select(0, ids);
    row.index_copy_(0, ids, torch::where(picked > 0, picked / penalty, picked * penalty));
  }
  return out;
}

at::Tensor filter_top_k(const at::Tensor& logits, int64_t k) {
  if (k <= 0 || k >= logits.size(-1)) return logits;
  const auto kth = std::get<0>(logits.topk(k, -1)).narrow(-1, k - 1, 1);
  return logits.masked_fill(logits < kth, -INFINITY);
}

void SamplingConfig::validate() const {
  MOE_CHECK(max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", max_new_tokens);
  MOE_CHECK(std::isfinite(temperature) && temperature >= 0, "temperature must be finite and >= 0 (0 = greedy), got ",
            temperature);
  MOE_CHECK(top_k >= 0, "top_k must be >= 0 (0 = off), got ", top_k);
  MOE_CHECK(top_p > 0 && top_p <= 1, "top_p must be in (0, 1] (1 = off), got ", top_p);
  MOE_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0,
            "repetition_penalty must be a finite positive number (1 = off), got ", repetition_penalty);
}

at::Tensor filter_top_p(const at::Tensor& logits, double p) {
  if (p >= 1.0) return logits;
  MOE_CHECK(p > 0, "top_p must be in (0, 1], got ", p);
  auto [sorted, order] = logits.sort(-1, /*descending=*/true);
  const auto cumulative = sorted.softmax(-1).cumsum(-1);
  // Drop a token when the tokens before it already reach p; the first token always stays.
  auto drop_sorted = (cumulative - sorted.softmax(-1)) >= p;
  const auto drop = torch::zeros_like(drop_sorted).scatter(-1, order, drop_sorted);
  return logits.masked_fill(drop, -INFINITY);
}

namespace {

struct RestoreTraining {
  CausalLM& lm;
  bool was_training;
  ~RestoreTraining() { lm->train(was_training); }
};

// Left-pads the prompts: ids [B, T_max] and mask [B, T_max] (1 = real).
std::pair<torch::Tensor, torch::Tensor> left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t pad) {
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  const auto b = static_cast<int64_t>(prompts.size()), t = static_cast<int64_t>(longest);
  auto ids = torch::full({b, t}, pad, torch::kInt64);
  auto mask = torch::zeros({b, t}, torch::kInt64);
  for (int64_t i = 0; i < b; ++i) {
    const auto n = static_cast<int64_t>(prompts[i].size());
    ids[i].narrow(0, t - n, n).copy_(torch::tensor(prompts[i], torch::kInt64));
    mask[i].narrow(0, t - n, n).fill_(1);
  }
  return {ids, mask};
}

}  // namespace

std::vector<std::vector<int64_t>> generate(CausalLM& lm, const std::vector<std::vector<int64_t>>& prompts,
                                           const SamplingConfig& s, const TokenCallback& on_token) {
  MOE_CHECK(!prompts.empty(), "generate needs at least one prompt");
  for (size_t i = 0; i < prompts.size(); ++i) MOE_CHECK(!prompts[i].empty(), "prompt ", i, " is empty");
  s.validate();
  const auto& cfg = lm->config();
  for (const auto& p : prompts) {
    for (auto id : p) MOE_CHECK(id >= 0 && id < cfg.vocab_size, "token id ", id, " outside vocabulary ", cfg.vocab_size);
  }

  RestoreTraining restore{lm, lm->is_training()};
  lm->eval();
  torch::NoGradGuard no_grad;
  const auto device = lm->model->embed_tokens->weight.device();
  auto generator = at::make_generator<at::CPUGeneratorImpl>(s.seed);

  const auto b = static_cast<int64_t>(prompts.size());
  auto [ids, mask] = left_pad(prompts, cfg.eos_token_id);
  std::vector<std::vector<int64_t>> seen = prompts, generated(b);
  std::vector<bool> done(b, false);
  KVCache cache;
  auto input = ids.to(device);
  auto input_mask = mask.to(device);
  for (int64_t step = 0; step < s.max_new_tokens; ++step) {
    auto logits = lm->forward(input, torch::Tensor(), input_mask, &cache).logits.select(1, -1).to(torch::kFloat32).to(torch::kCPU);
    logits = apply_repetition_penalty(logits, seen, s.repetition_penalty);
    torch::Tensor next;
    if (s.temperature == 0.0) {
      next = logits.argmax(-1);
    } else {
      logits = filter_top_p(filter_top_k(logits / s.temperature, s.top_k), s.top_p);
      next = torch::multinomial(logits.softmax(-1), 1, /*replacement=*/false, generator).squeeze(1);
    }
    const auto* n = next.data_ptr<int64_t>();
    bool all_done = true;
    for (int64_t i = 0; i < b; ++i) {
      if (done[i]) continue;
      if (n[i] == s.eos_token_id) {
        done[i] = true;
        continue;
      }
      generated[i].push_back(n[i]);
      seen[i].push_back(n[i]);
      if (on_token) on_token(i, n[i]);
      all_done = false;
    }
    if (all_done) break;
    input = next.unsqueeze(1).to(device);
    input_mask = torch::ones({b, 1}, torch::kInt64).to(device);
  }
  return generated;
}

}  // namespace moe::model
