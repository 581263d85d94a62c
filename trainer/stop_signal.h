// Graceful stop on SIGTERM, SIGINT or SIGUSR1 (what schedulers and mpirun send before they kill a
// job): the first signal asks the training loop to finish its step, save a checkpoint and exit 0;
// a second one exits at once.
#pragma once

namespace moe::trainer {

/// Installs the handlers while alive (the previous ones come back after).
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  /// A signal arrived since the guard was created (in this process).
  static bool requested();
};

}  // namespace moe::trainer
