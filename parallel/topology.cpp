#include "parallel/topology.h"

#include "common/check.h"

namespace moe::parallel {

Topology Topology::make(int world_size, int rank, int ep_size, int64_t n_routed_experts) {
  MOE_CHECK(ep_size >= 1, "--parallel.ep_size must be >= 1, got ", ep_size);
  MOE_CHECK(world_size % ep_size == 0, "--parallel.ep_size ", ep_size, " does not divide the world size ", world_size);
  MOE_CHECK(n_routed_experts % ep_size == 0, "n_routed_experts ", n_routed_experts,
            " is not divisible by --parallel.ep_size ", ep_size);
  Topology t;
  t.world_size = world_size;
  t.rank = rank;
  t.ep_size = ep_size;
  t.edp_size = world_size / ep_size;
  t.ep_rank = rank % ep_size;
  t.edp_rank = rank / ep_size;
  t.n_routed_experts = n_routed_experts;
  t.experts_per_rank = n_routed_experts / ep_size;
  return t;
}

ParallelGroups make_groups(std::shared_ptr<Communicator> world, int ep_size, int64_t n_routed_experts) {
  ParallelGroups g;
  g.topology = Topology::make(world->size(), world->rank(), ep_size, n_routed_experts);
  g.ep = world->split(/*color=*/g.topology.edp_rank, /*key=*/g.topology.ep_rank);
  g.edp = world->split(/*color=*/g.topology.ep_rank, /*key=*/g.topology.edp_rank);
  g.world = std::move(world);
  return g;
}

}  // namespace moe::parallel
