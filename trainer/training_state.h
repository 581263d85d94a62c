// Everything beyond the weights and the optimiser's moments that a run needs to continue exactly
// where it stopped. The trainer advances it every step; a checkpoint saves and restores it.
#pragma once
#include <cstdint>
#include <string>

#include "trainer/data/loader_position.h"

namespace moe::trainer {

/// A rank's random generator states (dropout): torch's CPU generator and, on a GPU, the CUDA
/// generator's, as raw bytes; empty when absent.
struct RankRng {
  std::string cpu, cuda;
};

struct TrainingState {
  int64_t step = 0;    // optimiser steps taken (the next step's 0-based index: the lr schedule's position)
  int64_t tokens = 0;  // training tokens consumed by all ranks together
  LoaderPosition data;  // the next global micro-batch of the training stream
  int64_t bad_steps_in_a_row = 0;  // consecutive skipped (non-finite) steps
  double last_lr = 0;              // learning rate of the last step taken (for the log)
  RankRng rng;  // this rank's, when saved or restored
};

}  // namespace moe::trainer
