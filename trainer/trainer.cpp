#include "trainer/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/check.h"
#include "common/log.h"
#include "parallel/expert_dispatch.h"
#include "parallel/global_aux_loss.h"
#include "parallel/mpi_communicator.h"
#include "parallel/collective_text.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/config_cli.h"
#include "trainer/device.h"
#include "trainer/mfu.h"
#include "trainer/optim/optimizer.h"
#include "trainer/checkpoint/resume.h"
#include "trainer/checkpoint/rng_state.h"
#include "trainer/stop_signal.h"
#include "trainer/data/tokenizer.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace moe::trainer {

namespace {

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  std::ostringstream os;
  if (s >= 3600) os << s / 3600 << "h";
  if (s >= 60) os << std::setw(s >= 3600 ? 2 : 1) << std::setfill('0') << (s / 60) % 60 << "m";
  os << std::setw(s >= 60 ? 2 : 1) << std::setfill('0') << s % 60 << "s";
  return os.str();
}

}  // namespace

struct Trainer::StepStats {
  torch::Tensor losses;  // [loss, ce, aux] summed over micro-batches / grad_accum (device)
  double grad_norm = 0, lr = 0;
  bool skipped = false;
};

Trainer::Trainer(TrainConfig config, parallel::ParallelGroups groups)
    : config_(std::move(config)), groups_(std::move(groups)), device_(choose_device(config_.train.device)) {
  const auto& t = config_.train;
  const auto& topo = groups_.topology;
  autocast_bf16_ = device_.is_cuda() && t.dtype != "fp32";
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

  lm_ = parallel::make_expert_parallel_model(config_.model, groups_, t.seed);
  if (config_.parallel.global_batch_aux) parallel::use_global_batch_aux_loss(lm_, groups_.world);
  lm_->to(device_);
  lm_->train();
  sync_ = std::make_unique<parallel::GradientSync>(lm_, groups_, int64_t(config_.parallel.bucket_mb * (1 << 20)),
                                                   config_.parallel.overlap_grad_sync);
  optimizer_ = make_adamw(lm_, config_.optim);
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

void Trainer::write_metrics(const std::string& json_line) {
  if (!metrics_.is_open()) return;
  metrics_ << json_line << "\n";
  metrics_.flush();
}

Trainer::StepStats Trainer::train_step(int64_t step) {
  const auto& t = config_.train;
  StepStats stats;
  stats.losses = torch::zeros({3}, torch::TensorOptions(torch::kFloat32).device(device_));
  if (!graphed_) optimizer_->zero_grad();  // a graph overwrites its gradients on every run
  for (int64_t m = 0; m < t.grad_accum; ++m) {
    const auto batch = train_loader_->next(t.micro_batch);
    const auto x = batch.inputs.to(device_), y = batch.targets.to(device_);
    model::CausalLMOutput out;
    if (graphed_) {
      out = graphed_->run(x, y);
    } else {
      {
        AutocastScope autocast(autocast_bf16_);
        out = lm_(x, y);
      }
      sync_->begin_backward(m + 1 == t.grad_accum);
      (out.loss / double(t.grad_accum)).backward();
    }
    stats.losses += torch::stack({out.loss.detach(), out.ce_loss.detach(), out.aux_loss.detach()}).to(torch::kFloat32) /
                    double(t.grad_accum);
    for (size_t l = 0; l < out.expert_load.size(); ++l) {
      if (load_routed_.size() <= l) {
        load_routed_.push_back(torch::zeros_like(out.expert_load[l].routed));
        load_dropped_.push_back(torch::zeros_like(out.expert_load[l].dropped));
      }
      load_routed_[l] += out.expert_load[l].routed;
      load_dropped_[l] += out.expert_load[l].dropped;
    }
  }
  sync_->sync();
  stats.lr = lr_at(config_.optim, step, t.steps);
  const auto update = apply_update(lm_, groups_, *optimizer_, config_.optim, stats.lr);
  stats.grad_norm = update.grad_norm;
  stats.skipped = update.skipped;
  return stats;
}

void Trainer::log_progress(int64_t step, const StepStats& stats) {
  auto losses = stats.losses.clone();
  groups_.world->all_reduce(losses, parallel::ReduceOp::kAverage);
  const auto l = losses.cpu();
  const auto now = Clock::now();
  const double window = std::chrono::duration<double>(now - last_log_).count();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double tok_s = tokens_since_log_ / std::max(window, 1e-9);
  const double step_time = window / std::max<int64_t>(1, steps_since_log_);
  const double eta = step_time * double(config_.train.steps - step - 1);
  const double flops_per_token = training_flops_per_token(config_.model, config_.data.seq_len);
  const double mfu = peak_flops_ > 0 ? tok_s * flops_per_token / (peak_flops_ * groups_.world->size()) : -1;
  std::ostringstream os;
  os << std::fixed << "step " << step + 1 << "/" << config_.train.steps << " | loss " << std::setprecision(4)
     << l[0].item<float>() << " | ce " << l[1].item<float>() << " | aux " << l[2].item<float>() << " | lr "
     << std::scientific << std::setprecision(2) << stats.lr << std::fixed << " | gnorm " << std::setprecision(3)
     << stats.grad_norm << " | " << std::setprecision(0) << tok_s << " tok/s";
  if (mfu >= 0) os << " | MFU " << std::setprecision(1) << 100 * mfu << "%";
  os << " | ETA " << format_duration(eta);
  log_rank0("train", os.str());
  nlohmann::ordered_json j = {{"type", "train"},          {"step", step + 1},       {"loss", l[0].item<float>()},
                      {"ce", l[1].item<float>()}, {"aux", l[2].item<float>()}, {"lr", stats.lr},
                      {"grad_norm", stats.grad_norm}, {"tokens_per_s", tok_s}, {"elapsed_s", elapsed},
                      {"tokens", state_.tokens}};
  if (mfu >= 0) j["mfu"] = mfu;
  write_metrics(j.dump());
  log_expert_load(step);
  last_log_ = now;
  tokens_since_log_ = 0;
  steps_since_log_ = 0;
}

void Trainer::log_expert_load(int64_t step) {
  if (load_routed_.empty()) return;
  auto all = torch::stack({torch::stack(load_routed_), torch::stack(load_dropped_)});  // [2, L, E]
  groups_.world->all_reduce(all, parallel::ReduceOp::kSum);
  const auto host = all.cpu().to(torch::kFloat64);
  std::ostringstream worst;
  double worst_imbalance = 0;
  for (int64_t l = 0; l < host.size(1); ++l) {
    const auto routed = host[0][l], dropped = host[1][l];
    const double total = routed.sum().item<double>();
    const auto fraction = routed / std::max(total, 1.0);
    const double imbalance = routed.max().item<double>() / std::max(routed.mean().item<double>(), 1e-9);
    worst_imbalance = std::max(worst_imbalance, imbalance);
    const auto f = fraction.contiguous();
    nlohmann::ordered_json j = {{"type", "expert_load"},
                        {"step", step + 1},
                        {"layer", l},
                        {"fraction", std::vector<double>(f.data_ptr<double>(), f.data_ptr<double>() + f.numel())},
                        {"imbalance", imbalance},
                        {"dropped", dropped.sum().item<double>()},
                        {"routed", total}};
    write_metrics(j.dump());
  }
  for (auto& t : load_routed_) t.zero_();
  for (auto& t : load_dropped_) t.zero_();
}

double Trainer::evaluate() {
  const auto& t = config_.train;
  if (!val_data_ || t.eval_batches == 0) return -1;
  PackedLoader loader(val_data_, config_.data.seq_len, config_.data.seed, groups_.topology.rank,
                      groups_.topology.world_size, /*shuffle=*/false);
  const int64_t per_batch = t.micro_batch * groups_.world->size();
  const int64_t batches = std::min<int64_t>(t.eval_batches, int64_t(loader.windows()) / per_batch);
  if (batches == 0) return -1;
  lm_->eval();
  auto sum = torch::zeros({1}, torch::TensorOptions(torch::kFloat64).device(device_));
  {
    torch::NoGradGuard no_grad;
    for (int64_t b = 0; b < batches; ++b) {
      const auto batch = loader.next(t.micro_batch);
      AutocastScope autocast(autocast_bf16_);
      sum += lm_(batch.inputs.to(device_), batch.targets.to(device_)).ce_loss.detach().to(torch::kFloat64);
    }
  }
  lm_->train();
  groups_.world->all_reduce(sum, parallel::ReduceOp::kAverage);
  return sum.item<double>() / double(batches);
}

TrainSummary Trainer::run() {
  const auto& t = config_.train;
  TrainSummary summary;
  summary.first_step = state_.step;
  start_ = last_log_ = Clock::now();
  const int64_t tokens_per_step = t.micro_batch * t.grad_accum * groups_.world->size() * config_.data.seq_len;
  auto eval_and_log = [&](int64_t step) {
    const double val = evaluate();
    if (val < 0) {
      if (step == 0) log_rank0("eval", "validation split too small for one batch (or none): no evaluation");
      return;
    }
    if (summary.first_val_ce < 0) summary.first_val_ce = val;
    summary.last_val_ce = val;
    std::ostringstream os;
    os << std::fixed << std::setprecision(4) << "step " << step << " | val ce " << val << " | val ppl "
       << std::setprecision(2) << std::exp(val);
    log_rank0("eval", os.str());
    write_metrics(nlohmann::ordered_json({{"type", "eval"}, {"step", step}, {"val_ce", val}, {"val_ppl", std::exp(val)}}).dump());
  };
  if (state_.step >= t.steps) {
    log_rank0("train", "the run is already at step " + std::to_string(state_.step) + " of --train.steps " +
                           std::to_string(t.steps) + ": nothing to train");
    return summary;
  }
  if (state_.step == 0) eval_and_log(0);
  StopSignals signals;
  auto stop_flag = torch::zeros({1}, torch::TensorOptions(torch::kFloat32).device(device_));
  while (state_.step < t.steps) {
    const int64_t step = state_.step;
    const auto stats = train_step(step);
    state_.step = step + 1;
    state_.tokens += tokens_per_step;
    state_.data = train_loader_->position();
    state_.last_lr = stats.lr;
    tokens_since_log_ += tokens_per_step;
    ++steps_since_log_;
    ++summary.steps;
    if (stats.skipped) {
      ++summary.skipped_steps;
      ++state_.bad_steps_in_a_row;
      std::ostringstream os;
      os << "step " << step + 1 << ": gradient norm " << stats.grad_norm << " is not finite; step skipped ("
         << state_.bad_steps_in_a_row << " in a row, limit --train.max_bad_steps " << t.max_bad_steps << ")";
      log_rank0("warn", os.str());
      write_metrics(nlohmann::ordered_json(
                        {{"type", "skipped"}, {"step", step + 1}, {"in_a_row", state_.bad_steps_in_a_row}})
                        .dump());
      MOE_CHECK(state_.bad_steps_in_a_row < t.max_bad_steps, state_.bad_steps_in_a_row,
                " consecutive steps with non-finite gradients: stopping (lower --optim.lr, or raise "
                "--train.max_bad_steps)");
    } else {
      state_.bad_steps_in_a_row = 0;
    }
    // A signal may reach some ranks only: they agree, so that all stop after the same step.
    stop_flag.fill_(StopSignals::requested() ? 1.0 : 0.0);
    groups_.world->all_reduce(stop_flag, parallel::ReduceOp::kSum);
    summary.stopped_by_signal = stop_flag.item<float>() > 0;
    const bool last = state_.step == t.steps, end = last || summary.stopped_by_signal;
    if (step == summary.first_step || end) {
      auto ce = stats.losses.narrow(0, 1, 1).clone();
      groups_.world->all_reduce(ce, parallel::ReduceOp::kAverage);
      if (step == summary.first_step) summary.first_loss = ce.item<double>();
      if (end) summary.last_loss = ce.item<double>();
    }
    if (state_.step % t.log_every == 0 || step == summary.first_step || end) log_progress(step, stats);
    if ((t.eval_every > 0 && state_.step % t.eval_every == 0) || last) eval_and_log(state_.step);
    const bool periodic = config_.checkpoint.every > 0 && state_.step % config_.checkpoint.every == 0;
    if (periodic || (last && config_.checkpoint.save_final) || summary.stopped_by_signal) summary.checkpoint = save();
    if (summary.stopped_by_signal && !last) {
      log_rank0("train", "stopped by a signal after step " + std::to_string(state_.step) +
                             "; continue with the same command (--checkpoint.resume auto)");
      break;
    }
  }
  summary.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  return summary;
}

}  // namespace moe::trainer
