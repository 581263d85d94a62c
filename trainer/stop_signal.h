// Graceful stop on SIGTERM, SIGINT or SIGUSR1 (what schedulers and mpirun send before they kill a
// job): the first signal asks the training loop to finish its step, save a checkpoint and exit 0;
// a second one exits at once. One stop often arrives twice within a moment (Slurm signals every
// process of the job, and srun or mpirun forwards the same signal to the ranks): a repeat within
// kRepeatWindowSeconds of the first counts as the same stop.
#pragma once

namespace moe::trainer {

/// Installs the handlers while alive (the previous ones come back after). Guards nest: moe-train
/// installs one before building the run, so that a signal during set-up is kept for the loop's.
class StopSignals {
 public:
  static constexpr int kRepeatWindowSeconds = 5;
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  /// A signal arrived since the guard was created (in this process).
  static bool requested();
};

}  // namespace moe::trainer
