// Gradient synchronisation so that N ranks step like one process on the concatenated global
// batch (each rank's loss being the mean over its own equal-sized batch):
//   dense gradients:  averaged over the world;
//   expert gradients: summed over the edp group (the replicas of the same experts), divided by the
//                     world size (each expert already summed its EP group's tokens through the
//                     all-to-all).
// Gradients travel in flat buckets of at most bucket_bytes, one all-reduce per bucket. With
// overlap, a bucket's all-reduce starts during backward as soon as its last gradient is
// accumulated (buckets hold parameters in reverse order, roughly the order backward produces
// them, and start strictly in bucket order so that every rank issues the same sequence).
//
// Sharded (optim.shard_state, the distributed optimiser of trainer/optim/sharded_adamw.h): each
// bucket is reduce-scattered over its group instead: rank r of the group receives the reduced
// (and scaled) block r of the bucket's flat gradient, padded to a multiple of the group size, and
// updates exactly that block. The full gradients are not written back; with free_full_gradients
// each parameter's .grad is released as soon as its bucket is packed (ZeRO-2).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "parallel/communicator.h"
#include "parallel/topology.h"

namespace torch::autograd {
struct Node;
}

namespace moe::parallel {

/// True for parameters of routed experts (sharded over EP): "...mlp.experts.<id>...".
bool is_expert_parameter(const std::string& name);

/// How gradients leave a GradientSync.
enum class GradientReduction {
  kAllReduce,            // every rank gets every reduced gradient in .grad
  kReduceScatter,        // each rank gets its block of each bucket (GradientBucket::shard_grad); the
                         // parameters' .grad are views of one flat buffer per bucket, which the
                         // backward accumulates into and the reduce-scatter reads: no copies
  kReduceScatterAndFree  // the same, and each .grad is released once its bucket is packed
};

/// A flat bucket of gradients and, when sharded, the block of it this rank owns.
struct GradientBucket {
  std::vector<std::string> names;    // the parameters, in flat order
  std::vector<torch::Tensor> params;
  std::vector<int64_t> offsets;      // of each parameter in the flat bucket
  int64_t numel = 0;                 // the parameters' elements
  int64_t padded_numel = 0;          // numel rounded up to a multiple of the group size (sharded)
  Communicator* comm = nullptr;      // the group that holds these parameters (world or edp)
  // Sharded: this rank's block [shard_begin, shard_begin + shard_numel) of the flat bucket, and its
  // reduced, scaled gradient from sync() until its user releases it (the padding's elements are zero).
  int64_t shard_begin = 0, shard_numel = 0;
  torch::Tensor shard_grad;
  torch::Tensor grad_buffer;  // kReduceScatter: [padded_numel], each parameter's .grad a view of it
  // The collective in flight.
  ReduceOp op = ReduceOp::kSum;
  double scale = 1.0;
  int64_t ready = 0;  // gradients accumulated in this backward
  torch::Tensor flat;
  std::unique_ptr<PendingCollective> pending;
};

class GradientSync {
 public:
  GradientSync(model::CausalLM lm, ParallelGroups groups, int64_t bucket_bytes = 32 << 20, bool overlap = false,
               GradientReduction reduction = GradientReduction::kAllReduce);
  ~GradientSync();
  /// With overlap: call before each backward; `last` = this backward ends the step's accumulation
  /// (only then do buckets start during backward). Without overlap it does nothing.
  void begin_backward(bool last);
  /// Call after the step's last backward on every rank. Missing gradients count as zeros.
  void sync();
  /// Before a step's first backward: zeroes the gradient buffers (kReduceScatter, re-attaching each
  /// .grad to its view), else releases every .grad.
  void zero_grad();

  size_t bucket_count() const { return buckets_.size(); }
  /// Dense buckets first, then expert ones; the same layout on every rank of a group.
  const std::vector<std::unique_ptr<GradientBucket>>& buckets() const { return buckets_; }
  GradientReduction reduction() const { return reduction_; }
  const ParallelGroups& groups() const { return groups_; }
  /// Buckets whose all-reduce has started since the last sync() (with overlap, during backward).
  size_t buckets_started() const { return next_to_start_; }

 private:
  using Bucket = GradientBucket;
  void start(Bucket& bucket);
  void on_gradient_ready(size_t bucket);
  void finish(Bucket& bucket);
  /// kReduceScatter: makes each .grad the view of the bucket's buffer (copying in one made elsewhere).
  void attach_gradient_views(Bucket& bucket);
  bool sharded() const { return reduction_ != GradientReduction::kAllReduce; }

  model::CausalLM lm_;
  ParallelGroups groups_;
  std::vector<std::unique_ptr<Bucket>> buckets_;  // dense ones first, then expert ones
  bool overlap_, armed_ = false;
  GradientReduction reduction_;
  size_t next_to_start_ = 0;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // kept alive for their hooks
};

}  // namespace moe::parallel
