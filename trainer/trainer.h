// The pretraining loop. Per step: grad_accum micro-batches (forward under bf16 autocast on GPU,
// loss = cross entropy + aux loss + router z-loss, backward of loss / grad_accum) -> gradient sync
// over the ranks -> global gradient norm -> skip the step if it is not finite (abort after
// max_bad_steps in a row), else clip -> AdamW at the scheduled learning rate -> with
// model.bias_update_rate, the routing biases move from the step's global expert counts. Every log_every steps a progress line
// (rank 0) and records in <out_dir>/metrics.jsonl (see README); evaluation on the validation split
// every eval_every steps and at the end; training checkpoints (trainer/checkpoint/checkpoint.h) every
// checkpoint.every steps, at the end and when a stop signal arrives (trainer/stop_signal.h).
// Set-up is a fresh start or a resume from a checkpoint (trainer/checkpoint/resume.h); either way the loop
// then only advances the TrainingState.
#pragma once
#include <chrono>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "parallel/gradient_sync.h"
#include "parallel/topology.h"
#include "trainer/data/data_loader.h"
#include "trainer/expert_balance.h"
#include "trainer/optim/training_optimizer.h"
#include "trainer/graphed_step.h"
#include "trainer/train_config.h"
#include "trainer/training_state.h"

namespace moe::trainer {

struct TrainSummary {
  int64_t steps = 0, skipped_steps = 0;
  double first_loss = 0, last_loss = 0;  // cross entropy, averaged over ranks, of the first and last step
  double first_val_ce = -1, last_val_ce = -1;  // -1: no evaluation ran
  double seconds = 0;
  std::string checkpoint;  // the last checkpoint's directory, if one was saved
  int64_t first_step = 0;  // steps already taken when this run started (> 0 after a resume)
  bool stopped_by_signal = false;
};

class Trainer {
 public:
  /// Builds this rank's model (dense part + its experts), the loaders and the optimiser, then
  /// starts fresh or resumes (config.checkpoint.resume). Collective over groups.world.
  Trainer(TrainConfig config, parallel::ParallelGroups groups);
  ~Trainer();

  TrainSummary run();
  /// Mean validation cross entropy over the ranks; -1 if the split is too small for one batch.
  double evaluate();

  model::CausalLM& model() { return lm_; }
  const torch::Device& device() const { return device_; }
  const TrainingState& state() const { return state_; }
  TrainingOptimizer& optimizer() { return *optimizer_; }

 private:
  struct StepStats;
  /// The checkpoint to resume from per config.checkpoint.resume (rank 0 decides), if any.
  std::optional<std::string> checkpoint_to_resume();
  void start_fresh();
  void resume_from(const std::string& step_dir);
  void init_from(const std::string& checkpoint);  // a fresh run's parameters from a checkpoint
  /// Rank 0: out_dir, its config.ini and metrics.jsonl (truncated for a fresh run, appended to on a resume).
  void open_run_outputs(std::ios::openmode metrics_mode);
  /// "optimizer: ... sharded over ...: X MB of moments on this rank instead of Y".
  std::string describe_sharded_state() const;
  std::string save();
  StepStats train_step(int64_t step);
  void log_progress(int64_t step, const StepStats& stats);
  /// Writes the expert_load records of every MoE layer: the interval's shares and drops, this step's
  /// MaxVio (max_vio: [L], per layer) and the routing bias's range. Collective.
  void log_expert_load(int64_t step, const torch::Tensor& max_vio);
  void write_metrics(const std::string& json_line);

  TrainConfig config_;
  parallel::ParallelGroups groups_;
  torch::Device device_;
  bool autocast_bf16_ = false;
  model::CausalLM lm_ = nullptr;
  std::unique_ptr<parallel::GradientSync> sync_;
  std::unique_ptr<TrainingOptimizer> optimizer_;
  TrainingState state_;
  std::unique_ptr<GraphedStep> graphed_;  // with train.cuda_graph
  std::shared_ptr<const TokenDataset> train_data_, val_data_;
  std::unique_ptr<PackedLoader> train_loader_;
  std::vector<std::string> tokenizer_files_;  // the data's, copied into every checkpoint
  std::ofstream metrics_;
  std::vector<torch::Tensor> load_routed_, load_dropped_;  // per MoE layer, summed since the last log
  StepExpertCounts step_counts_;  // this step's, for MaxVio and the routing bias
  double peak_flops_ = 0;  // per device; 0 = unknown (no MFU)
  std::chrono::steady_clock::time_point start_, last_log_;
  int64_t tokens_since_log_ = 0, steps_since_log_ = 0;
};

}  // namespace moe::trainer
