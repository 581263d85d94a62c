// Forward and backward of one micro-batch captured once as a CUDA graph and then replayed: the
// host launches one graph instead of thousands of small kernels, which is where a small model's
// step time goes. Valid because the single-process step has static shapes and never waits for the
// host (grouped experts: the split sizes stay on the device). Not for several ranks (their
// collectives and host-side split sizes are outside the graph) or gradient accumulation (each
// replay overwrites the gradients). Needs LibTorch with CUDA.
#pragma once
#include <torch/types.h>

#include <memory>

#include "model/causal_lm.h"

namespace moe::trainer {

class GraphedStep {
 public:
  /// Warms up on a side stream, then captures forward (bf16 autocast when `autocast`) and backward
  /// for batches of [batch, seq] int64 tokens on lm's device. Leaves the parameters' gradients
  /// defined: do not set them to none afterwards (optimizer.zero_grad() would), the graph writes
  /// them on every run.
  GraphedStep(model::CausalLM lm, int64_t batch, int64_t seq, bool autocast);
  ~GraphedStep();

  /// Copies the batch into the graph's inputs and replays. Returns the graph's outputs (loss,
  /// ce_loss, aux_loss, expert_load; logits are not kept), overwritten by the next run; the
  /// gradients are in the parameters' .grad.
  const model::CausalLMOutput& run(const torch::Tensor& inputs, const torch::Tensor& targets);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::trainer
