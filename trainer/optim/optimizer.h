// The optimiser side of a step: AdamW with decoupled weight decay (none on norms and biases), the
// warm-up + cosine learning-rate schedule, and the global gradient norm for clipping, which counts
// every parameter once however the experts are sharded.
#pragma once
#include <torch/optim/adamw.h>

#include <memory>

#include "model/causal_lm.h"
#include "parallel/topology.h"
#include "trainer/optim/fused_adamw.h"
#include "trainer/train_config.h"

namespace moe::trainer {

/// Matrices take weight decay; vectors such as norm weights and biases do not.
inline bool has_weight_decay(const torch::Tensor& param) { return param.dim() >= 2; }

/// Two parameter groups: matrices (weight decay) and vectors such as norm weights and biases (none).
/// The update runs as ATen's fused multi-tensor AdamW (trainer/optim/fused_adamw.h).
std::unique_ptr<FusedAdamW> make_adamw(model::CausalLM& lm, const OptimOptions& options);

/// Learning rate of step (0-based): linear warm-up to lr over warmup_steps, then cosine decay to
/// min_lr at total_steps - 1.
double lr_at(const OptimOptions& options, int64_t step, int64_t total_steps);

/// Sets every group's learning rate.
void set_lr(torch::optim::Optimizer& optimizer, double lr);

/// L2 norm of all gradients of the model the ranks hold together, after GradientSync: dense
/// gradients count once (they are equal everywhere), each expert once (summed over its EP group,
/// not over its edp replicas). Equal on every rank. Collective over groups.ep.
double global_grad_norm(model::CausalLM& lm, const parallel::ParallelGroups& groups);

/// The factor that brings a global gradient norm down to max_norm: 1 when it is within (or
/// max_norm <= 0, no clipping).
double clip_factor(double norm, double max_norm);

/// Scales the gradients so that their global norm is at most max_norm; returns the factor applied.
double clip_gradients(model::CausalLM& lm, double norm, double max_norm);

struct UpdateResult {
  double grad_norm = 0;  // before clipping
  bool skipped = false;  // the norm was not finite: no update, gradients cleared
};

/// The optimiser half of a step, after the gradients are synchronised: the global gradient norm
/// (one host synchronisation), skip the step if it is not finite, else clip to options.grad_clip
/// and take an AdamW step at learning rate lr. Collective over groups.ep.
UpdateResult apply_update(model::CausalLM& lm, const parallel::ParallelGroups& groups, torch::optim::Optimizer& optimizer,
                          const OptimOptions& options, double lr);

}  // namespace moe::trainer
