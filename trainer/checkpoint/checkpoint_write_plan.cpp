#include "trainer/checkpoint/checkpoint_write_plan.h"

#include <algorithm>
#include <vector>

namespace moe::trainer {

std::map<std::string, int> plan_writers(const model::CausalLM& lm, const parallel::Topology& topo) {
  std::map<std::string, int> writer;
  std::vector<std::pair<int64_t, std::string>> dense;
  int64_t expert_bytes = 0;  // of this rank's experts, all layers
  for (const auto& p : lm->named_parameters()) {
    const auto id = model::routed_expert_of(p.key());
    if (!id) {
      dense.emplace_back(int64_t(p.value().nbytes()), p.key());
      continue;
    }
    expert_bytes += int64_t(p.value().nbytes());
    const int64_t expert = id->second;
    const int ep_rank = int(expert / topo.experts_per_rank), edp_rank = int(expert % topo.edp_size);
    writer[p.key()] = edp_rank * topo.ep_size + ep_rank;
  }
  std::vector<int64_t> load(topo.world_size, 0);
  const int64_t per_expert = topo.experts_per_rank > 0 ? expert_bytes / topo.experts_per_rank : 0;
  for (int r = 0; r < topo.world_size; ++r) {
    const int ep_rank = r % topo.ep_size, edp_rank = r / topo.ep_size;
    for (int64_t e = ep_rank * topo.experts_per_rank; e < (ep_rank + 1) * topo.experts_per_rank; ++e) {
      if (e % topo.edp_size == edp_rank) load[r] += per_expert;
    }
  }
  std::sort(dense.begin(), dense.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (const auto& [bytes, name] : dense) {
    const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
    writer[name] = r;
    load[r] += bytes;
  }
  return writer;
}

}  // namespace moe::trainer
