// The batch-level aux loss (seq_aux = false) over the global batch: each MoE gate sums its
// per-expert choice counts over the data-parallel ranks before computing the expert shares, so
// the balance it rewards is the whole step's, not one rank's slice of it.
#pragma once
#include <memory>

#include "model/causal_lm.h"
#include "parallel/communicator.h"

namespace moe::parallel {

/// Installs a count all-reduce over `data_parallel` (every rank holding distinct data, usually
/// the world) in every MoE gate of lm. Every rank must run the same forward passes.
void use_global_batch_aux_loss(model::CausalLM& lm, std::shared_ptr<Communicator> data_parallel);

}  // namespace moe::parallel
