// The Trainer's loop: micro-batches, the update, progress lines and metrics, evaluation, periodic
// saves and stops. Its set-up (fresh start, init_from, resume) and save(): trainer/trainer_setup.cpp.
#include "trainer/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/check.h"
#include "common/log.h"
#include "trainer/device.h"
#include "trainer/mfu.h"
#include "trainer/optim/optimizer.h"
#include "trainer/stop_signal.h"

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
  torch::Tensor losses;  // [loss, ce, aux, z] summed over micro-batches / grad_accum (device)
  double grad_norm = 0, lr = 0;
  bool skipped = false;
};


void Trainer::write_metrics(const std::string& json_line) {
  if (!metrics_.is_open()) return;
  metrics_ << json_line << "\n";
  metrics_.flush();
}

Trainer::StepStats Trainer::train_step(int64_t step) {
  const auto& t = config_.train;
  StepStats stats;
  stats.losses = torch::zeros({4}, torch::TensorOptions(torch::kFloat32).device(device_));
  step_counts_.reset();
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
    stats.losses += torch::stack({out.loss.detach(), out.ce_loss.detach(), out.aux_loss.detach(), out.z_loss.detach()})
                        .to(torch::kFloat32) /
                    double(t.grad_accum);
    step_counts_.add(out.expert_load);
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
  const auto update = optimizer_->update(stats.lr);
  stats.grad_norm = update.grad_norm;
  stats.skipped = update.skipped;
  if (config_.model.has_score_bias() && !update.skipped) {
    update_routing_biases(lm_, step_counts_.global(*groups_.world), config_.model.bias_update_rate);
  }
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
  // MaxVio of this step's global batch, per MoE layer (the interval's sums would smooth it).
  const auto& counts = step_counts_.global(*groups_.world);
  const auto max_vio = counts.defined() ? max_violation(counts).cpu() : torch::Tensor();
  const double worst_vio = max_vio.defined() ? max_vio.max().item<double>() : -1;
  const bool z_on = config_.model.use_moe && config_.model.router_z_loss_coef > 0;
  std::ostringstream os;
  os << std::fixed << "step " << step + 1 << "/" << config_.train.steps << " | loss " << std::setprecision(4)
     << l[0].item<float>() << " | ce " << l[1].item<float>() << " | aux " << l[2].item<float>();
  if (z_on) os << " | z " << l[3].item<float>();
  if (worst_vio >= 0) os << " | maxvio " << std::setprecision(3) << worst_vio;
  os << " | lr " << std::scientific << std::setprecision(2) << stats.lr << std::fixed << " | gnorm "
     << std::setprecision(3) << stats.grad_norm << " | " << std::setprecision(0) << tok_s << " tok/s";
  if (mfu >= 0) os << " | MFU " << std::setprecision(1) << 100 * mfu << "%";
  os << " | ETA " << format_duration(eta);
  log_rank0("train", os.str());
  nlohmann::ordered_json j = {{"type", "train"},          {"step", step + 1},       {"loss", l[0].item<float>()},
                      {"ce", l[1].item<float>()}, {"aux", l[2].item<float>()}, {"lr", stats.lr},
                      {"grad_norm", stats.grad_norm}, {"tokens_per_s", tok_s}, {"elapsed_s", elapsed},
                      {"tokens", state_.tokens}};
  if (z_on) j["z"] = l[3].item<float>();
  if (worst_vio >= 0) j["max_vio"] = worst_vio;
  if (mfu >= 0) j["mfu"] = mfu;
  write_metrics(j.dump());
  log_expert_load(step, max_vio);
  last_log_ = now;
  tokens_since_log_ = 0;
  steps_since_log_ = 0;
}

void Trainer::log_expert_load(int64_t step, const torch::Tensor& max_vio) {
  if (load_routed_.empty()) return;
  const auto layers = lm_->moe_layers();
  auto all = torch::stack({torch::stack(load_routed_), torch::stack(load_dropped_)});  // [2, L, E]
  groups_.world->all_reduce(all, parallel::ReduceOp::kSum);
  const auto host = all.cpu().to(torch::kFloat64);
  for (int64_t l = 0; l < host.size(1); ++l) {
    const auto routed = host[0][l], dropped = host[1][l];
    const double total = routed.sum().item<double>();
    const auto fraction = routed / std::max(total, 1.0);
    const double imbalance = routed.max().item<double>() / std::max(routed.mean().item<double>(), 1e-9);
    const auto f = fraction.contiguous();
    nlohmann::ordered_json j = {{"type", "expert_load"},
                        {"step", step + 1},
                        {"layer", l},
                        {"fraction", std::vector<double>(f.data_ptr<double>(), f.data_ptr<double>() + f.numel())},
                        {"imbalance", imbalance},
                        {"dropped", dropped.sum().item<double>()},
                        {"routed", total},
                        {"min_share", fraction.min().item<double>()},
                        {"max_share", fraction.max().item<double>()}};
    if (max_vio.defined()) j["max_vio"] = max_vio[l].item<double>();
    if (const auto& bias = layers[size_t(l)]->gate->e_score_correction_bias; bias.defined()) {
      j["bias_min"] = bias.min().item<double>();
      j["bias_max"] = bias.max().item<double>();
    }
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
