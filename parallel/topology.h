// How ranks are arranged: world = ep_size x edp_size. EP groups are consecutive ranks (inside a
// node when ranks are placed by node); each holds all routed experts, n_routed_experts / ep_size
// per rank. Ranks with the same position in their EP group form an expert-data-parallel (edp)
// group and hold replicas of the same experts. Dense parameters are replicated everywhere.
#pragma once
#include <cstdint>
#include <memory>

#include "model/expert_executor.h"
#include "parallel/communicator.h"

namespace moe::parallel {

struct Topology {
  int world_size = 1, rank = 0;
  int ep_size = 1, edp_size = 1;
  int ep_rank = 0, edp_rank = 0;
  int64_t n_routed_experts = 0, experts_per_rank = 0;

  /// Refuses (moe::InvalidArgument) an ep_size that does not divide the world or the experts.
  static Topology make(int world_size, int rank, int ep_size, int64_t n_routed_experts);
  /// The routed experts held by this rank.
  model::ExpertRange local_experts() const { return {ep_rank * experts_per_rank, experts_per_rank}; }
};

/// The communicators training needs, all derived from the world one.
struct ParallelGroups {
  Topology topology;
  std::shared_ptr<Communicator> world, ep, edp;
};

/// Splits `world` into EP and edp groups (collective over the world).
ParallelGroups make_groups(std::shared_ptr<Communicator> world, int ep_size, int64_t n_routed_experts);

}  // namespace moe::parallel
