// Where the training data stream stands: the epoch and the next window of that epoch's order
// (trainer/data/data_loader.h). Global, not per rank: any number of ranks continues from it.
#pragma once
#include <cstdint>

namespace moe::trainer {

struct LoaderPosition {
  uint64_t epoch = 0;
  uint64_t window = 0;  // next window of the epoch's order
  bool operator==(const LoaderPosition& o) const { return epoch == o.epoch && window == o.window; }
};

}  // namespace moe::trainer
