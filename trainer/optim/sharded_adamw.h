// The distributed optimiser (optim.shard_state; Megatron-Core's distributed optimizer, ZeRO-1/2):
// each parameter's AdamW moments and update are split over the ranks that hold a replica of it:
// dense parameters over the world, each expert over its edp group. GradientSync reduce-scatters
// every bucket, so rank r of a bucket's group receives the summed gradient of block r of the
// bucket's flat layout; the rank updates the weights of that block with the fused AdamW kernel,
// holding moments for that block only, then each bucket's updated blocks are all-gathered back
// into every replica. The parameters of a bucket live in one flat buffer in the bucket's layout
// (each parameter's data a view of it), so that the update writes the block in place and the
// all-gather fills the buffer in place: no copies of the weights. The bytes on the wire are an all-reduce's (a reduce-scatter plus an
// all-gather); the gradient norm for clipping and the non-finite check come from the blocks (one
// all-reduce of a scalar), exact whatever the sharding.
// State a rank holds between steps: weights 4 B and gradients 4 B per parameter (none with
// shard_grads, ZeRO-2: each is freed once packed into its bucket), moments 8/d B, d being the
// parameter's replica count (+ each bucket's padding to a multiple of d). During the step the
// reduced gradient blocks (4/d B) exist from the sync to the update.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "trainer/optim/training_optimizer.h"

namespace moe::trainer {

class ShardedAdamW : public TrainingOptimizer {
 public:
  /// sync must reduce-scatter (GradientReduction::kReduceScatter or kReduceScatterAndFree) and
  /// outlive this optimiser.
  ShardedAdamW(model::CausalLM lm, parallel::GradientSync& sync, const OptimOptions& options);

  void zero_grad() override;
  UpdateResult update(double lr) override;
  std::map<std::string, AdamMoments> gather_moments(const std::function<bool(const std::string&)>& wanted) override;
  void set_moments(const std::string& name, const AdamMoments& moments) override;
  StateBytes state_bytes() const override;
  std::string kind() const override { return "sharded"; }

 private:
  // The part of one parameter that falls into this rank's block of its bucket.
  struct Piece {
    size_t bucket = 0, param = 0;  // index into sync.buckets(), and into the bucket's params
    int64_t begin = 0, length = 0;  // in the bucket's flat layout
  };
  double global_grad_norm() const;
  void all_gather_weights();
  // Frees the reduced gradient blocks GradientSync::sync() left (the next sync allocates them anew).
  void release_gradient_blocks();
  int64_t block_numel(size_t bucket) const;

  model::CausalLM lm_;
  parallel::GradientSync& sync_;
  OptimOptions options_;
  std::vector<torch::Tensor> weights_;  // per bucket: the flat buffer its parameters are views of
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;  // per bucket: this rank's block
  std::vector<Piece> pieces_;
  std::vector<torch::Tensor> steps_;  // per piece: the step count the kernel reads (float32 scalar)
  int64_t step_ = 0;                  // updates taken
  std::map<std::string, std::pair<size_t, size_t>> where_;  // parameter name -> (bucket, param)
};

}  // namespace moe::trainer
