// What may change when a run continues from a checkpoint. Settings that change the parameters or
// what the saved data position means must match; the rest (learning rate, steps, evaluation,
// logging, the parallel layout, the batch) may change and are reported.
#pragma once
#include <string>
#include <vector>

#include "trainer/checkpoint/checkpoint_manifest.h"
#include "trainer/train_config.h"

namespace moe::trainer {

/// Refuses (moe::InvalidArgument naming `what` and every mismatching field with both values) a
/// checkpoint this run cannot continue; returns one line per setting that changed.
/// train_tokens: the size of this run's training stream; world: this run's ranks.
std::vector<std::string> check_resumable(const CheckpointManifest& saved, const TrainConfig& saved_config,
                                         const TrainConfig& now, uint64_t train_tokens, int world,
                                         const std::string& what);

/// One line per setting that differs: "optim.lr 0.001 -> 0.0005" ("(unset)" for a new key).
std::vector<std::string> changed_settings(const TrainConfig& before, const TrainConfig& after);

/// One line per field that shapes the parameters and differs: "model.hidden_size 64 (saved) vs 128 (now)".
std::vector<std::string> parameter_shape_mismatches(const model::ModelConfig& saved, const model::ModelConfig& now);

/// Keeps the records of <run>/metrics.jsonl up to `step` (a crashed run may have logged further;
/// a torn last line is dropped) so that the continued run appends without duplicates.
void truncate_metrics(const std::string& path, int64_t step);

}  // namespace moe::trainer
