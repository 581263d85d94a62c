#include "model/recompute_choice.h"

#include "common/check.h"

namespace moe::model {

RecomputeChoice parse_recompute(const std::string& value) {
  if (value == "none") return {};
  if (value == "act") return {true, false};
  if (value == "weights") return {false, true};
  if (value == "block") return {false, false, true};
  MOE_CHECK(value == "act,weights" || value == "weights,act", "recompute '", value,
            "' is not one of none, act, weights, act,weights, block");
  return {true, true};
}

}  // namespace moe::model
