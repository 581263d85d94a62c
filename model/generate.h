// Text generation with the KV cache: greedy or sampled (temperature, top-k, top-p), a repetition
// penalty, EOS stop, a per-token callback, and batches of prompts of different lengths.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "model/causal_lm.h"

namespace moe::model {

struct SamplingConfig {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;         // 0 = greedy (argmax)
  int64_t top_k = 0;                // 0 = off
  double top_p = 1.0;               // 1 = off
  double repetition_penalty = 1.0;  // 1 = off; >1 discourages tokens already in the row
  int64_t eos_token_id = -1;        // stop a row at this token (not emitted); -1 = never
  uint64_t seed = 0;
  /// Throws moe::InvalidArgument naming the first option outside its range: max_new_tokens >= 0,
  /// temperature finite >= 0, top_k >= 0, top_p in (0, 1], repetition_penalty finite > 0.
  void validate() const;
};

/// Called once per generated token, row = index of the prompt.
using TokenCallback = std::function<void(int64_t row, int64_t token)>;

/// Continues each prompt (token ids, non-empty) and returns the new tokens per prompt. Prompts of
/// different lengths are left-padded and masked. Runs in eval mode without gradients, then restores
/// the module's training flag.
std::vector<std::vector<int64_t>> generate(CausalLM& lm, const std::vector<std::vector<int64_t>>& prompts,
                                           const SamplingConfig& sampling, const TokenCallback& on_token = {});

/// Repetition penalty (CTRL / Hugging Face convention): for each token seen in row b, a positive
/// logit is divided by penalty and a negative one multiplied, so both become less likely.
/// logits: [B, V] float; seen: per row the token ids to penalise.
at::Tensor apply_repetition_penalty(const at::Tensor& logits, const std::vector<std::vector<int64_t>>& seen,
                                    double penalty);

/// Sets every logit below the k-th largest of its row to -inf (k <= 0 or k >= V: unchanged).
at::Tensor filter_top_k(const at::Tensor& logits, int64_t k);

/// Nucleus filter: keeps the smallest set of highest-probability tokens whose probability reaches p
/// (always at least one); the rest become -inf. p >= 1: unchanged.
at::Tensor filter_top_p(const at::Tensor& logits, double p);

}  // namespace moe::model
