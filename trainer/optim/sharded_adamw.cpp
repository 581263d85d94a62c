#include "trainer/optim/sharded_adamw.h"

#include <ATen/ops/_fused_adamw.h>
#include <torch/torch.h>

#include <cmath>

#include "common/check.h"

namespace moe::trainer {

ShardedAdamW::ShardedAdamW(model::CausalLM lm, parallel::GradientSync& sync, const OptimOptions& options)
    : lm_(std::move(lm)), sync_(sync), options_(options) {
  MOE_CHECK(sync.reduction() != parallel::GradientReduction::kAllReduce,
            "ShardedAdamW needs a GradientSync that reduce-scatters");
  torch::NoGradGuard no_grad;
  const auto& buckets = sync_.buckets();
  for (size_t b = 0; b < buckets.size(); ++b) {
    auto& bucket = *buckets[b];
    const int64_t lo = bucket.shard_begin, hi = lo + bucket.shard_numel;
    const auto options = bucket.params.front().options();
    // The bucket's parameters move into one flat buffer (padding zero), keeping their values.
    weights_.push_back(torch::zeros({bucket.padded_numel}, options));
    for (size_t i = 0; i < bucket.params.size(); ++i) {
      auto& p = bucket.params[i];
      auto view = weights_.back().narrow(0, bucket.offsets[i], p.numel()).view_as(p);
      view.copy_(p);
      p.set_data(view);
    }
    const auto state = options.dtype(options_.state_dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32);
    exp_avg_.push_back(torch::zeros({bucket.shard_numel}, state));
    exp_avg_sq_.push_back(torch::zeros({bucket.shard_numel}, state));
    for (size_t i = 0; i < bucket.params.size(); ++i) {
      where_[bucket.names[i]] = {b, i};
      const int64_t begin = std::max(lo, bucket.offsets[i]);
      const int64_t end = std::min(hi, bucket.offsets[i] + bucket.params[i].numel());
      if (begin >= end) continue;
      pieces_.push_back({b, i, begin, end - begin});
      steps_.push_back(torch::zeros({}, options.dtype(torch::kFloat32)));
    }
  }
}

int64_t ShardedAdamW::block_numel(size_t bucket) const { return sync_.buckets()[bucket]->shard_numel; }

void ShardedAdamW::release_gradient_blocks() {
  for (const auto& bucket : sync_.buckets()) bucket->shard_grad = torch::Tensor();
}

void ShardedAdamW::zero_grad() { sync_.zero_grad(); }

double ShardedAdamW::global_grad_norm() const {
  torch::NoGradGuard no_grad;
  // Every element of every gradient lies in exactly one rank's block (dense over the world, each
  // expert over its edp group, the EP groups holding different experts): the blocks' squares
  // summed over the world are the whole model's, each parameter counted once.
  std::vector<torch::Tensor> blocks;
  for (const auto& bucket : sync_.buckets()) {
    MOE_CHECK(bucket->shard_grad.defined(), "ShardedAdamW::update before GradientSync::sync");
    blocks.push_back(bucket->shard_grad);
  }
  auto squares = blocks.empty() ? torch::zeros({1}, torch::kFloat64)
                                : torch::stack(torch::_foreach_norm(blocks, 2)).to(torch::kFloat64).square().sum().reshape({1});
  auto& world = *sync_.groups().world;
  if (world.size() > 1) world.all_reduce(squares, parallel::ReduceOp::kSum);
  return std::sqrt(squares.item<double>());
}

UpdateResult ShardedAdamW::update(double lr) {
  torch::NoGradGuard no_grad;
  UpdateResult result;
  result.grad_norm = global_grad_norm();
  result.skipped = !std::isfinite(result.grad_norm);
  if (result.skipped) {
    release_gradient_blocks();
    return result;  // the weights stay as they are on every rank
  }
  ++step_;
  if (!steps_.empty()) torch::_foreach_add_(steps_, 1);
  // Matrices decay, vectors (norms, biases) do not (as make_adamw's groups): two kernel calls, or
  // two per bucket with bf16 moments, which are widened to fp32 a bucket at a time around them.
  const bool widen = !exp_avg_.empty() && exp_avg_.front().scalar_type() != torch::kFloat32;
  const double factor = clip_factor(result.grad_norm, options_.grad_clip);
  struct Lists {
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
  } decay, plain;
  auto run = [&] {
    for (auto* lists : {&decay, &plain}) {
      if (lists->params.empty()) continue;
      std::optional<torch::Tensor> divisor;  // the kernel divides each gradient by it as it reads it
      if (factor != 1.0) divisor = torch::full({}, 1.0 / factor, lists->steps.front().options());
      at::_fused_adamw_(lists->params, lists->grads, lists->exp_avgs, lists->exp_avg_sqs, /*max_exp_avg_sqs=*/{},
                        lists->steps, lr, options_.beta1, options_.beta2,
                        lists == &decay ? options_.weight_decay : 0.0, options_.eps, /*amsgrad=*/false,
                        /*maximize=*/false, divisor);
      *lists = Lists{};
    }
  };
  const auto& buckets = sync_.buckets();
  size_t current = buckets.size();
  torch::Tensor m, v;  // the current bucket's moments, as the kernel updates them (fp32)
  auto close_bucket = [&] {
    if (!widen || current == buckets.size()) return;
    run();
    exp_avg_[current].copy_(m);
    exp_avg_sq_[current].copy_(v);
  };
  for (size_t k = 0; k < pieces_.size(); ++k) {
    const auto& piece = pieces_[k];
    if (piece.bucket != current) {
      close_bucket();
      current = piece.bucket;
      m = widen ? exp_avg_[current].to(torch::kFloat32) : exp_avg_[current];
      v = widen ? exp_avg_sq_[current].to(torch::kFloat32) : exp_avg_sq_[current];
    }
    const auto& bucket = *buckets[piece.bucket];
    const auto& param = bucket.params[piece.param];
    const int64_t in_block = piece.begin - bucket.shard_begin;
    auto& lists = has_weight_decay(param) ? decay : plain;
    lists.params.push_back(param.view({-1}).narrow(0, piece.begin - bucket.offsets[piece.param], piece.length));
    lists.grads.push_back(bucket.shard_grad.narrow(0, in_block, piece.length));
    lists.exp_avgs.push_back(m.narrow(0, in_block, piece.length));
    lists.exp_avg_sqs.push_back(v.narrow(0, in_block, piece.length));
    lists.steps.push_back(steps_[k]);
  }
  close_bucket();
  run();
  release_gradient_blocks();  // used: between steps only the moments are this rank's own state
  all_gather_weights();
  return result;
}

void ShardedAdamW::all_gather_weights() {
  // The update wrote this rank's block of each flat buffer; the all-gather fills the rest in place.
  const auto& buckets = sync_.buckets();
  for (size_t b = 0; b < buckets.size(); ++b) {
    auto& bucket = *buckets[b];
    if (bucket.comm->size() == 1) continue;  // this rank updated the whole bucket
    const auto block = weights_[b].narrow(0, bucket.shard_begin, bucket.shard_numel);
    bucket.comm->all_gather(weights_[b], block);
  }
}

std::map<std::string, AdamMoments> ShardedAdamW::gather_moments(
    const std::function<bool(const std::string&)>& wanted) {
  std::map<std::string, AdamMoments> out;
  if (step_ == 0) return out;  // no update yet: no state (as the replicated optimiser)
  torch::NoGradGuard no_grad;
  const auto& buckets = sync_.buckets();
  for (size_t b = 0; b < buckets.size(); ++b) {
    const auto& bucket = *buckets[b];
    auto gather = [&](const torch::Tensor& block) {
      if (bucket.comm->size() == 1) return block;
      auto full = torch::empty({bucket.padded_numel}, block.options());
      bucket.comm->all_gather(full, block);
      return full;
    };
    const auto m = gather(exp_avg_[b]), v = gather(exp_avg_sq_[b]);
    for (size_t i = 0; i < bucket.params.size(); ++i) {
      if (!wanted(bucket.names[i])) continue;
      const auto& p = bucket.params[i];
      out[bucket.names[i]] = AdamMoments{m.narrow(0, bucket.offsets[i], p.numel()).view_as(p).clone(),
                                         v.narrow(0, bucket.offsets[i], p.numel()).view_as(p).clone(), step_};
    }
  }
  return out;
}

void ShardedAdamW::set_moments(const std::string& name, const AdamMoments& moments) {
  const auto it = where_.find(name);
  MOE_CHECK(it != where_.end(), "optimizer state for ", name, ", which this optimizer does not update");
  const auto [b, i] = it->second;
  const auto& bucket = *sync_.buckets()[b];
  const auto& p = bucket.params[i];
  MOE_CHECK(moments.exp_avg.sizes() == p.sizes() && moments.exp_avg_sq.sizes() == p.sizes(), "optimizer state of shape ",
            moments.exp_avg.sizes(), " for a parameter of shape ", p.sizes());
  MOE_CHECK(moments.step >= 0, "optimizer step count ", moments.step, " is negative");
  // One step count for all: every parameter is updated on every step (GradientSync gives unused
  // ones a zero gradient), so a checkpoint's counts agree.
  MOE_CHECK(step_ == 0 || moments.step == step_, "optimizer step count ", moments.step, " of ", name,
            " differs from the other parameters' ", step_);
  step_ = moments.step;
  for (auto& s : steps_) s.fill_(double(step_));
  torch::NoGradGuard no_grad;
  const int64_t lo = std::max(bucket.shard_begin, bucket.offsets[i]);
  const int64_t hi = std::min(bucket.shard_begin + block_numel(b), bucket.offsets[i] + p.numel());
  if (lo >= hi) return;  // no part of it is this rank's
  const auto from = moments.exp_avg.reshape({-1}), from_sq = moments.exp_avg_sq.reshape({-1});
  exp_avg_[b].narrow(0, lo - bucket.shard_begin, hi - lo).copy_(from.narrow(0, lo - bucket.offsets[i], hi - lo));
  exp_avg_sq_[b].narrow(0, lo - bucket.shard_begin, hi - lo).copy_(from_sq.narrow(0, lo - bucket.offsets[i], hi - lo));
}

StateBytes ShardedAdamW::state_bytes() const {
  StateBytes bytes;
  for (const auto& p : lm_->parameters()) {
    bytes.weights += int64_t(p.nbytes());
    if (p.grad().defined()) bytes.gradients += int64_t(p.grad().nbytes());
  }
  for (size_t b = 0; b < exp_avg_.size(); ++b) {
    if (const auto& g = sync_.buckets()[b]->shard_grad; g.defined()) bytes.gradients += int64_t(g.nbytes());
    bytes.moments += int64_t(exp_avg_[b].nbytes() + exp_avg_sq_[b].nbytes());
  }
  return bytes;
}

}  // namespace moe::trainer
