// The optimiser of a training run as the trainer and its checkpoints see it: AdamW over every
// parameter this rank holds (replicated state, the default), or with its moments and update split
// over each parameter's replicas (optim.shard_state: trainer/optim/sharded_adamw.h). Either way a
// checkpoint holds the full moments under each parameter's name, so that any layout resumes any other.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "model/causal_lm.h"
#include "parallel/gradient_sync.h"
#include "trainer/optim/fused_adamw.h"
#include "trainer/optim/optimizer.h"
#include "trainer/train_config.h"

namespace moe::trainer {

/// Bytes of training state one rank holds (what optim.shard_state divides).
struct StateBytes {
  int64_t weights = 0;    // the parameters (fp32)
  int64_t gradients = 0;  // full .grad tensors allocated now, plus the sharded gradient blocks
  int64_t moments = 0;    // AdamW's exp_avg and exp_avg_sq
  int64_t total() const { return weights + gradients + moments; }
};

class TrainingOptimizer {
 public:
  virtual ~TrainingOptimizer() = default;
  /// Releases every gradient before a step's first backward.
  virtual void zero_grad() = 0;
  /// After GradientSync::sync(): the global gradient norm, skip if it is not finite, else clip to
  /// grad_clip and take an AdamW step at `lr`. Collective over the world.
  virtual UpdateResult update(double lr) = 0;
  /// The full AdamW state of the parameters `wanted` selects by name (for a checkpoint); empty
  /// before the first update. Collective over the world: every rank calls it, in the same order.
  virtual std::map<std::string, AdamMoments> gather_moments(const std::function<bool(const std::string&)>& wanted) = 0;
  /// Restores one parameter's state from its full moments (a checkpoint's); this rank keeps its
  /// share. Refuses a shape that does not fit.
  virtual void set_moments(const std::string& name, const AdamMoments& moments) = 0;
  virtual StateBytes state_bytes() const = 0;
  /// "replicated" or "sharded".
  virtual std::string kind() const = 0;
};

/// The optimiser options.shard_state asks for, over the parameters `sync` buckets (the sharded one
/// needs a GradientSync built with a reduce-scatter GradientReduction).
std::unique_ptr<TrainingOptimizer> make_training_optimizer(model::CausalLM lm, parallel::GradientSync& sync,
                                                           const OptimOptions& options);

/// The GradientReduction that options ask for.
parallel::GradientReduction gradient_reduction(const OptimOptions& options);

}  // namespace moe::trainer
