// Who writes what in a checkpoint: every parameter is written once, by one of the ranks that hold
// it. Every rank computes the same plan from the same parameter names, without communicating.
#pragma once
#include <map>
#include <string>

#include "model/causal_lm.h"
#include "parallel/topology.h"

namespace moe::trainer {

/// The world rank that writes each parameter of this rank's model: an expert by the replica
/// (expert id % edp) of the EP rank that holds it; dense parameters spread over all ranks, largest
/// first to the least loaded (balanced by bytes, the experts' share counted).
std::map<std::string, int> plan_writers(const model::CausalLM& lm, const parallel::Topology& topo);

}  // namespace moe::trainer
