// What the backward recomputes instead of keeping from the forward (train.recompute,
// moe-bench-model --recompute): each feed-forward's act(gate) * up (model/recomputed_activation.h),
// the routed experts' bf16 weight stacks (model/expert_stack.h), both, or neither.
#pragma once
#include <string>

namespace moe::model {

struct RecomputeChoice {
  bool activation = false, weights = false;
};

/// "none", "act", "weights" or "act,weights"; throws moe::InvalidArgument naming any other value.
RecomputeChoice parse_recompute(const std::string& value);

}  // namespace moe::model
