// The Trainer's set-up and its saves: building this rank's model, data and optimiser, then a fresh
// start, a start from a checkpoint's weights (--checkpoint.init_from) or a resume; and save().
// The loop itself is in trainer/trainer.cpp.
#include "trainer/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/check.h"
#include "common/log.h"
#include "parallel/expert_dispatch.h"
#include "parallel/global_aux_loss.h"
#include "model/feed_forward.h"
#include "model/fused_kernels.h"
#include "parallel/collective_text.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/checkpoint/resume.h"
#include "trainer/checkpoint/rng_state.h"
#include "trainer/config_cli.h"
#include "trainer/data/tokenizer.h"
#include "trainer/device.h"
#include "trainer/mfu.h"
#include "trainer/optim/optimizer.h"

namespace fs = std::filesystem;

namespace moe::trainer {

Trainer::Trainer(TrainConfig config, parallel::ParallelGroups groups)
    : config_(std::move(config)), groups_(std::move(groups)), device_(choose_device(config_.train.device)) {
  const auto& t = config_.train;
  const auto& topo = groups_.topology;
  autocast_bf16_ = device_.is_cuda() && t.dtype != "fp32";
  if (config_.optim.shard_state && topo.world_size == 1) {
    // Nothing to split over, and the bucket copies the sharded path makes would only cost memory.
    log_rank0("train", "--optim.shard_state: one rank holds the only replica of every parameter; the optimizer "
                       "stays replicated (fp32 moments)");
    config_.optim.shard_state = config_.optim.shard_grads = false;
    config_.optim.state_dtype = "fp32";
  }
  MOE_CHECK(!(t.dtype == "bf16" && !device_.is_cuda()), "--train.dtype bf16 needs a GPU; on the CPU training is fp32");
  if (t.cuda_graph) {
    MOE_CHECK(topo.world_size == 1, "--train.cuda_graph runs one rank only (the collectives of ", topo.world_size,
              " ranks are outside the graph); this job has ", topo.world_size);
    MOE_CHECK(device_.is_cuda(), "--train.cuda_graph needs a GPU (the device is ", device_.str(), ")");
    MOE_CHECK(t.grad_accum == 1, "--train.cuda_graph needs --train.grad_accum 1 (each replay overwrites the "
              "gradients), got ", t.grad_accum);
    MOE_CHECK(!config_.model.use_moe ||
                  model::runs_grouped(model::parse_expert_compute(config_.model.expert_compute), device_.is_cuda(),
                                      autocast_bf16_ ? torch::kBFloat16 : torch::kFloat32),
              "--train.cuda_graph needs grouped experts (--model.expert_compute grouped, or auto with bf16): the "
              "loop reads the split sizes on the host, which a graph cannot");
  }

  train_data_ = std::make_shared<TokenDataset>(config_.data.dir, "train");
  if (config_.model.vocab_size == 0) config_.model.vocab_size = int64_t(train_data_->vocab_size());
  MOE_CHECK(int64_t(train_data_->vocab_size()) <= config_.model.vocab_size, "the tokenizer of '", config_.data.dir,
            "' has ", train_data_->vocab_size(), " tokens but model.vocab_size is ", config_.model.vocab_size);
  MOE_CHECK(int64_t(train_data_->eos_id()) == config_.model.eos_token_id, "the data's EOS id is ",
            train_data_->eos_id(), " but model.eos_token_id is ", config_.model.eos_token_id);
  if (!list_shards(config_.data.dir, "val").empty()) val_data_ = std::make_shared<TokenDataset>(config_.data.dir, "val");
  train_loader_ = std::make_unique<PackedLoader>(train_data_, config_.data.seq_len, config_.data.seed, topo.rank,
                                                 topo.world_size);
  tokenizer_files_ = tokenizer_files(config_.data.dir);

  lm_ = parallel::make_expert_parallel_model(config_.model, groups_, t.seed, config_.parallel.pad_to_capacity);
  if (config_.parallel.global_batch_aux) parallel::use_global_batch_aux_loss(lm_, groups_.world);
  model::set_recompute(*lm_, model::parse_recompute(t.recompute));
  model::set_fused_kernels_enabled(t.fused_kernels);  // process-wide: one model per process
  lm_->to(device_);
  lm_->train();
  sync_ = std::make_unique<parallel::GradientSync>(lm_, groups_, int64_t(config_.parallel.bucket_mb * (1 << 20)),
                                                   config_.parallel.overlap_grad_sync,
                                                   gradient_reduction(config_.optim));
  optimizer_ = make_training_optimizer(lm_, *sync_, config_.optim);
  peak_flops_ = t.peak_tflops > 0 ? t.peak_tflops * 1e12 : known_peak_flops(device_);
  if (t.cuda_graph) {
    graphed_ = std::make_unique<GraphedStep>(lm_, t.micro_batch, config_.data.seq_len, autocast_bf16_);
  }

  int64_t params = 0, expert_params = 0;
  for (const auto& p : lm_->named_parameters()) {
    params += p.value().numel();
    if (parallel::is_expert_parameter(p.key())) expert_params += p.value().numel();
  }
  std::ostringstream os;
  os << "model: " << params << " parameters on this rank (" << expert_params << " in its "
     << topo.experts_per_rank << " experts per MoE layer); device " << device_.str()
     << (autocast_bf16_ ? ", bf16 autocast" : ", fp32") << "; ep " << topo.ep_size << " x edp " << topo.edp_size;
  log_rank0("train", os.str());
  if (config_.optim.shard_state) log_rank0("train", describe_sharded_state());
  std::ostringstream data;
  data << "data: " << train_data_->tokens() << " training tokens in " << train_data_->shard_count() << " shards, "
       << train_loader_->windows() << " windows of " << config_.data.seq_len + 1 << "; "
       << (val_data_ ? std::to_string(val_data_->tokens()) + " validation tokens" : std::string("no validation split"))
       << "; global batch " << t.micro_batch * t.grad_accum * topo.world_size << " sequences = "
       << t.micro_batch * t.grad_accum * topo.world_size * config_.data.seq_len << " tokens";
  log_rank0("train", data.str());

  if (const auto dir = checkpoint_to_resume()) {
    resume_from(*dir);
  } else {
    start_fresh();
  }
}

Trainer::~Trainer() = default;

std::optional<std::string> Trainer::checkpoint_to_resume() {
  const auto& resume = config_.checkpoint.resume;
  if (resume == "none") return std::nullopt;
  // Rank 0 looks; every rank uses its answer (a shared file system is assumed for the run directory).
  std::string found, error;
  if (groups_.topology.rank == 0) {
    try {
      if (resume == "auto") {
        found = latest_checkpoint(config_.train.out_dir).value_or("");
      } else {
        found = resolve_checkpoint_dir(resume);
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  parallel::agree_or_throw(*groups_.world, error, "--checkpoint.resume " + resume);
  found = parallel::all_gather_strings(*groups_.world, found).front();
  if (found.empty()) return std::nullopt;
  return found;
}

void Trainer::start_fresh() {
  state_ = TrainingState{};
  std::string error;
  if (groups_.topology.rank == 0) {
    const auto& t = config_.train;
    try {
      // Never mix two runs' checkpoints (pruning would delete the older run's).
      const auto existing = step_dirs(t.out_dir);
      MOE_CHECK(existing.empty(), "'", t.out_dir, "' already holds checkpoints of a run (", existing.back(),
                "): continue it with --checkpoint.resume auto (or a step directory), or train into another "
                "--train.out_dir");
      open_run_outputs(std::ios::trunc);  // a fresh run
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  parallel::agree_or_throw(*groups_.world, error, "starting a new run");
  if (!config_.checkpoint.init_from.empty()) init_from(config_.checkpoint.init_from);
}

void Trainer::init_from(const std::string& path) {
  std::string error, step_dir;
  std::vector<std::string> changed;
  try {
    step_dir = resolve_checkpoint_dir(path);
    const CheckpointReader reader(step_dir);
    auto saved_config = reader.config(), now_config = config_;
    const auto mismatches = parameter_shape_mismatches(saved_config.model, now_config.model);
    if (!mismatches.empty()) {
      std::ostringstream os;
      os << "checkpoint '" << step_dir << "' holds a model of another shape; these differ:";
      for (const auto& m : mismatches) os << "\n  " << m;
      throw InvalidArgument(os.str());
    }
    for (auto* c : {&saved_config, &now_config}) c->model.intermediate_size = c->model.resolved_intermediate_size();
    for (const auto& change : changed_settings(saved_config, now_config)) {
      if (change.rfind("model.", 0) == 0) changed.push_back(change);
    }
    restore_parameters(reader, lm_);
  } catch (const std::exception& e) {
    error = e.what();
  }
  parallel::agree_or_throw(*groups_.world, error, "--checkpoint.init_from " + path);
  log_rank0("init", "parameters from " + step_dir + "; a fresh optimizer, schedule and data position");
  for (const auto& note : changed) log_rank0("init", "model setting differs from the checkpoint's: " + note);
}

void Trainer::resume_from(const std::string& step_dir) {
  const auto& topo = groups_.topology;
  std::string error;
  std::vector<std::string> notes;
  int saved_world = 1;
  try {
    const auto own = fs::weakly_canonical(fs::path(config_.train.out_dir) / "checkpoints");
    const auto existing = step_dirs(config_.train.out_dir);
    MOE_CHECK(existing.empty() || fs::weakly_canonical(step_dir).parent_path() == own, "'",
              config_.train.out_dir, "' already holds checkpoints of another run (", existing.back(),
              "): continue from '", step_dir, "' into another --train.out_dir");
    const CheckpointReader reader(step_dir);
    const auto& m = reader.manifest();
    notes = check_resumable(m, reader.config(), config_, train_data_->tokens(), topo.world_size, "checkpoint '" +
                            step_dir + "'");
    restore_parameters(reader, lm_);
    restore_optimizer(reader, lm_, *optimizer_);
    state_ = m.state;
    saved_world = m.world;
    // Same layout: each rank its own generators; another one: dropout draws cannot repeat anyway.
    restore_rng(m.rng[size_t(topo.rank % m.world)], device_, reader.dir() + "/manifest.json");
    train_loader_->seek(state_.data);
  } catch (const std::exception& e) {
    error = e.what();
  }
  parallel::agree_or_throw(*groups_.world, error, "resuming");
  if (topo.rank == 0) {
    truncate_metrics((fs::path(config_.train.out_dir) / "metrics.jsonl").string(), state_.step);
    open_run_outputs(std::ios::app);
  }
  std::ostringstream os;
  os << "resumed from " << step_dir << ": step " << state_.step << ", " << state_.tokens << " tokens, data epoch "
     << state_.data.epoch << " window " << state_.data.window << "; saved by a world of " << saved_world;
  log_rank0("resume", os.str());
  for (const auto& note : notes) log_rank0("resume", "changed: " + note);
}

std::string Trainer::describe_sharded_state() const {
  int64_t replicated = 0;
  for (const auto& p : lm_->parameters()) {
    if (p.requires_grad()) replicated += 8 * p.numel();  // fp32 exp_avg + exp_avg_sq
  }
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << "optimizer: AdamW moments and update sharded over each parameter's "
     << "replicas (dense over " << groups_.world->size() << " ranks, experts over edp " << groups_.edp->size()
     << (config_.optim.shard_grads ? "; full gradients freed once reduce-scattered" : "") << "): "
     << optimizer_->state_bytes().moments / 1e6 << " MB of moments on this rank instead of " << replicated / 1e6;
  return os.str();
}

void Trainer::open_run_outputs(std::ios::openmode metrics_mode) {
  const fs::path out = config_.train.out_dir;
  fs::create_directories(out);
  std::ofstream(out / "config.ini") << dump_config(config_);
  metrics_.open(out / "metrics.jsonl", metrics_mode);
  MOE_CHECK(metrics_.good(), "cannot write '", (out / "metrics.jsonl").string(), "'");
}

std::string Trainer::save() {
  {
    // Never replace a good checkpoint by a diverged model.
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> params;
    for (const auto& p : lm_->parameters()) params.push_back(p);
    const bool finite = torch::stack(torch::_foreach_norm(params)).isfinite().all().item<bool>();
    parallel::agree_or_throw(*groups_.world,
                             finite ? "" : "the weights hold non-finite values (the run diverged): the last good "
                                           "checkpoint is kept; lower --optim.lr and resume from it",
                             "checkpoint at step " + std::to_string(state_.step));
  }
  CheckpointInputs in;
  in.lm = lm_;
  in.optimizer = optimizer_.get();
  in.groups = &groups_;
  in.config = &config_;
  in.state = state_;
  in.state.rng = capture_rng(device_);
  in.train_tokens = train_data_->tokens();
  in.tokenizer_files = tokenizer_files_;
  const auto saved = save_checkpoint(in);
  const auto [lo, hi] = std::minmax_element(saved.bytes_per_rank.begin(), saved.bytes_per_rank.end());
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << "saved " << saved.dir << ": " << saved.bytes_total / 1e6 << " MB in "
     << std::setprecision(2) << saved.seconds << " s (" << saved.bytes_total / 1e9 / std::max(saved.seconds, 1e-9)
     << " GB/s); per rank " << std::setprecision(1) << *lo / 1e6 << "-" << *hi / 1e6 << " MB";
  log_rank0("checkpoint", os.str());
  write_metrics(nlohmann::ordered_json({{"type", "checkpoint"},
                                        {"step", state_.step},
                                        {"dir", saved.dir},
                                        {"bytes", saved.bytes_total},
                                        {"bytes_per_rank", saved.bytes_per_rank},
                                        {"seconds", saved.seconds}})
                    .dump());
  return saved.dir;
}

}  // namespace moe::trainer
