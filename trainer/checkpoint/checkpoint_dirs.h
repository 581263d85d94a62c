// Where checkpoints live in a run directory, and the bookkeeping of step directories:
//   <run>/checkpoints/step_00000100/   one complete checkpoint (trainer/checkpoint/checkpoint.h)
//   <run>/checkpoints/latest           the name of the newest complete step directory
//   <run>/checkpoints/step_N.tmp/      a save under way (or interrupted); step_N.old.tmp/, latest.tmp
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace moe::trainer {

/// The step directory name of a step: "step_00000100".
std::string step_dir_name(int64_t step);

/// The step directories in <run_dir>/checkpoints/, in step order.
std::vector<std::string> step_dirs(const std::string& run_dir);

/// The step directory <run_dir>/checkpoints/latest names, if there is one.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

/// The step directory `path` names: a step directory, a run directory or its checkpoints/
/// directory (then the step `latest` names). Refuses, naming the path, one that has none.
std::string resolve_checkpoint_dir(const std::string& path);

/// Removes the leftovers of interrupted saves in a checkpoints/ directory: step_N.tmp and
/// step_N.old.tmp directories, latest.tmp.
void remove_interrupted_saves(const std::filesystem::path& checkpoints_dir);

/// Of the step directories up to step_saved, keeps the newest `keep` (and the one `latest` names
/// among them). Later steps, left by a run that was resumed from an earlier checkpoint, are not
/// touched.
void prune_step_dirs(const std::filesystem::path& checkpoints_dir, int64_t keep, const std::string& latest,
                     int64_t step_saved);

/// A step saved again (a run resumed from an earlier step of its own directory): `fresh` takes
/// `target`'s place in one atomic exchange, so that `latest`, which may name it, never names a
/// missing directory. File systems without RENAME_EXCHANGE get two renames (through `aside`).
void replace_directory(const std::filesystem::path& fresh, const std::filesystem::path& target,
                       const std::filesystem::path& aside);

}  // namespace moe::trainer
