// MoE feed-forward (MiniMind2's MOEFeedForward): routed experts chosen by the gate plus shared
// experts. One sort-based, dropless, differentiable path for training and inference:
//   route -> group token copies by expert (a permutation) -> run each expert on its slice
//   (ExpertExecutor) -> weight the outputs and add them back to their tokens by index.
// The shared experts run between the executor's start and finish: while expert parallelism's
// copies travel to their ranks.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <vector>

#include "model/expert_executor.h"
#include "model/moe_gate.h"

namespace moe::model {

/// Token copies (token, slot) grouped by expert: the permutation the layer applies and undoes.
/// The kept copies come first, expert 0's then expert 1's ...; copies dropped by the capacity
/// limit follow them. Everything stays on the device: no host synchronisation here.
struct ExpertGrouping {
  torch::Tensor copy_order;     // [N*k] int64: flat (token*k + slot) index of each grouped copy
  torch::Tensor token_of_copy;  // [N*k] int64: source token of each grouped copy
  torch::Tensor position_of_copy;  // [N*k] int64: where flat copy token*k + slot sits (inverse of copy_order)
  torch::Tensor routed;         // [E] int64: copies the gate sent to each expert
  torch::Tensor kept;           // [E] int64: of those, the ones within capacity (the slice lengths)
};

/// Copies an expert may take: ceil(capacity_factor * tokens * k / E); <= 0 = unlimited (dropless).
int64_t expert_capacity(double capacity_factor, int64_t tokens, int64_t top_k, int64_t num_experts);

/// Groups the copies of topk_idx [N, k] by expert id, stably, so ties keep token order. With a
/// capacity, each expert keeps its first `capacity` copies in token order (deterministic) and the
/// rest are dropped: they contribute nothing to their token's output.
ExpertGrouping group_by_expert(const torch::Tensor& topk_idx, int64_t num_experts, int64_t capacity = 0);

/// The experts' outputs [N*k, H] (grouped order, dropped copies zero) back to tokens:
/// y[n] = sum_j weights[n, j] * expert_out[position_of_copy[n*k + j]], in expert_out's dtype, returned
/// [N, H] in out_dtype, plus shared [N, H] (the shared experts' output) where defined. The fused
/// operator where it serves (model/fused_combine.h), else the gather back to slot order, the
/// product, the sum over the slots, the cast and the add.
torch::Tensor combine_copies(const torch::Tensor& expert_out, const ExpertGrouping& grouping, const torch::Tensor& weights,
                             c10::ScalarType out_dtype, const torch::Tensor& shared = {});

/// Load of one MoE layer, for statistics (device tensors; read them when logging).
struct ExpertLoad {
  torch::Tensor routed;   // [E] int64: copies routed to each expert
  torch::Tensor dropped;  // [E] int64: of those, dropped by the capacity limit
};

struct MoEOutput {
  torch::Tensor hidden;    // [B, T, hidden]
  torch::Tensor aux_loss;  // scalar
  torch::Tensor z_loss;    // scalar, the router z-loss
  ExpertLoad load;
};

class MoEFeedForwardImpl : public torch::nn::Module {
 public:
  /// local: the routed experts built here (default all). With a subset, an executor that reaches
  /// the other experts (parallel/) must be set before forward.
  explicit MoEFeedForwardImpl(const ModelConfig& config, ExpertRange local = {});
  /// x: [B, T, hidden].
  MoEOutput forward(const torch::Tensor& x);
  /// Replaces where the routed experts run (default: LocalExpertExecutor over `experts`).
  void set_executor(std::shared_ptr<ExpertExecutor> executor);

  MoEGate gate = nullptr;
  torch::nn::ModuleDict experts = nullptr;         // FeedForward per global expert id ("0".."E-1", or the local range)
  torch::nn::ModuleList shared_experts = nullptr;  // n_shared_experts FeedForward, run on every token

 private:
  int64_t num_experts_;
  double capacity_factor_;
  std::shared_ptr<ExpertExecutor> executor_;
};
TORCH_MODULE(MoEFeedForward);

}  // namespace moe::model
