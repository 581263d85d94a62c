// What the backward recomputes instead of keeping from the forward (train.recompute,
// moe-bench-model --recompute): each feed-forward's act(gate) * up (model/recomputed_activation.h),
// the routed experts' bf16 weight stacks (model/expert_stack.h), both, or neither; or every block
// whole from its input (model/recomputed_block.h), which keeps the least.
#pragma once
#include <string>

namespace moe::model {

struct RecomputeChoice {
  bool activation = false, weights = false, block = false;
};

/// "none", "act", "weights", "act,weights" or "block"; throws moe::InvalidArgument naming any other
/// value.
RecomputeChoice parse_recompute(const std::string& value);

}  // namespace moe::model
