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
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "parallel/topology.h"

namespace torch::autograd {
struct Node;
}

namespace moe::parallel {

/// True for parameters of routed experts (sharded over EP): "...mlp.experts.<id>...".
bool is_expert_parameter(const std::string& name);

class GradientSync {
 public:
  GradientSync(model::CausalLM lm, ParallelGroups groups, int64_t bucket_bytes = 32 << 20, bool overlap = false);
  ~GradientSync();
  /// With overlap: call before each backward; `last` = this backward ends the step's accumulation
  /// (only then do buckets start during backward). Without overlap it does nothing.
  void begin_backward(bool last);
  /// Call after the step's last backward on every rank. Missing gradients count as zeros.
  void sync();

  size_t bucket_count() const { return buckets_.size(); }
  /// Buckets whose all-reduce has started since the last sync() (with overlap, during backward).
  size_t buckets_started() const { return next_to_start_; }

 private:
  struct Bucket;
  void start(Bucket& bucket);
  void on_gradient_ready(size_t bucket);
  void finish(Bucket& bucket);

  model::CausalLM lm_;
  ParallelGroups groups_;
  std::vector<std::unique_ptr<Bucket>> buckets_;  // dense ones first, then expert ones
  bool overlap_, armed_ = false;
  size_t next_to_start_ = 0;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // kept alive for their hooks
};

}  // namespace moe::parallel
