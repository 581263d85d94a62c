// Gradient synchronisation so that N ranks step like one process on the concatenated global
// batch (each rank's loss being the mean over its own equal-sized batch):
//   dense gradients:  averaged over the world;
//   expert gradients: summed over the edp group (the replicas of the same experts), divided by the
//                     world size (each expert already summed its EP group's tokens through the
//                     all-to-all).
// Gradients travel in flat buckets of at most bucket_bytes, one all-reduce per bucket.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "parallel/topology.h"

namespace moe::parallel {

/// True for parameters of routed experts (sharded over EP): "...mlp.experts.<id>...".
bool is_expert_parameter(const std::string& name);

class GradientSync {
 public:
  GradientSync(model::CausalLM lm, ParallelGroups groups, int64_t bucket_bytes = 32 << 20);
  /// Call after backward on every rank. Missing gradients count as zeros.
  void sync();

 private:
  struct Bucket {
    std::vector<torch::Tensor> params;
  };
  void reduce(std::vector<Bucket>& buckets, Communicator& comm, ReduceOp op, double scale);

  model::CausalLM lm_;
  ParallelGroups groups_;
  std::vector<Bucket> dense_, expert_;
};

}  // namespace moe::parallel
