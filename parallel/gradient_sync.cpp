#include "parallel/gradient_sync.h"

#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/torch.h>

namespace moe::parallel {

bool is_expert_parameter(const std::string& name) { return name.find(".mlp.experts.") != std::string::npos; }

namespace {

int64_t bytes_of(const std::vector<torch::Tensor>& params) {
  int64_t n = 0;
  for (const auto& p : params) n += p.nbytes();
  return n;
}

}  // namespace

GradientSync::GradientSync(model::CausalLM lm, ParallelGroups groups, int64_t bucket_bytes, bool overlap,
                           GradientReduction reduction)
    : lm_(std::move(lm)), groups_(std::move(groups)), overlap_(overlap), reduction_(reduction) {
  // named_parameters() is ordered the same on every rank, so buckets line up across ranks.
  std::vector<std::pair<std::string, torch::Tensor>> params;
  for (const auto& p : lm_->named_parameters()) {
    if (p.value().requires_grad()) params.emplace_back(p.key(), p.value());  // not the routing bias
  }
  std::reverse(params.begin(), params.end());  // backward meets the last layers first
  for (const bool experts : {false, true}) {
    std::unique_ptr<Bucket> current;
    auto close = [&] {
      if (!current) return;
      // Sharded: rank r of the group owns block r of the flat bucket, padded to a multiple of the
      // group size. Unsharded, the "block" is the whole bucket.
      const int64_t d = current->comm->size();
      current->padded_numel = sharded() ? (current->numel + d - 1) / d * d : current->numel;
      if (sharded()) {
        current->shard_numel = current->padded_numel / d;
        current->shard_begin = current->shard_numel * current->comm->rank();
      }
      if (reduction_ == GradientReduction::kReduceScatter) {
        current->grad_buffer = torch::zeros({current->padded_numel}, current->params.front().options());
        attach_gradient_views(*current);
      }
      buckets_.push_back(std::move(current));
    };
    for (const auto& [name, p] : params) {
      if (is_expert_parameter(name) != experts) continue;
      const bool fits = current && current->params.front().scalar_type() == p.scalar_type() &&
                        bytes_of(current->params) + int64_t(p.nbytes()) <= bucket_bytes;
      if (!fits) {
        close();
        current = std::make_unique<Bucket>();
        // Dense: average over the world. Experts: sum over their replicas, / world size.
        current->comm = experts ? groups_.edp.get() : groups_.world.get();
        current->op = experts ? ReduceOp::kSum : ReduceOp::kAverage;
        current->scale = experts ? 1.0 / groups_.world->size() : 1.0;
      }
      current->names.push_back(name);
      current->params.push_back(p);
      current->offsets.push_back(current->numel);
      current->numel += p.numel();
    }
    close();
  }
  if (groups_.world->size() == 1 && !sharded()) overlap_ = false;  // nothing to exchange, nothing to overlap
  if (!overlap_) return;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    for (auto& p : buckets_[b]->params) {
      auto accumulator = torch::autograd::impl::grad_accumulator(p);
      accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [this, b](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
            on_gradient_ready(b);
            return outputs;
          }));
      accumulators_.push_back(std::move(accumulator));
    }
  }
}

GradientSync::~GradientSync() = default;

void GradientSync::begin_backward(bool last) { armed_ = overlap_ && last; }

void GradientSync::attach_gradient_views(Bucket& bucket) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < bucket.params.size(); ++i) {
    auto& p = bucket.params[i];
    auto view = bucket.grad_buffer.narrow(0, bucket.offsets[i], p.numel()).view_as(p);
    // A gradient made elsewhere (a .grad someone reset, then a backward) is copied in.
    if (p.grad().defined() && p.grad().data_ptr() != view.data_ptr()) view.copy_(p.grad());
    if (!p.grad().defined() || p.grad().data_ptr() != view.data_ptr()) p.mutable_grad() = view;
  }
}

void GradientSync::zero_grad() {
  torch::NoGradGuard no_grad;
  for (auto& bucket : buckets_) {
    if (!bucket->grad_buffer.defined()) {
      for (auto& p : bucket->params) p.mutable_grad().reset();
      continue;
    }
    bucket->grad_buffer.zero_();
    for (size_t i = 0; i < bucket->params.size(); ++i) {
      auto& p = bucket->params[i];
      p.mutable_grad() = bucket->grad_buffer.narrow(0, bucket->offsets[i], p.numel()).view_as(p);
    }
  }
}

void GradientSync::start(Bucket& bucket) {
  torch::NoGradGuard no_grad;
  if (bucket.grad_buffer.defined()) {
    attach_gradient_views(bucket);  // the backward accumulated into the views: the buffer is the flat bucket
    bucket.flat = bucket.grad_buffer;
  } else {
    std::vector<torch::Tensor> grads;
    for (auto& p : bucket.params) {
      grads.push_back(p.grad().defined() ? p.grad().reshape({-1}) : torch::zeros({p.numel()}, p.options()));
    }
    if (bucket.padded_numel > bucket.numel) {
      grads.push_back(torch::zeros({bucket.padded_numel - bucket.numel}, grads[0].options()));
    }
    bucket.flat = torch::cat(grads);
  }
  if (reduction_ == GradientReduction::kReduceScatterAndFree) {
    for (auto& p : bucket.params) p.mutable_grad().reset();  // packed: the flat copy is all that is needed
  }
  if (sharded() && bucket.comm->size() == 1) {
    bucket.shard_grad = bucket.flat;  // the whole bucket is this rank's block: no second copy
                                      // (with a gradient buffer, the .grad views see the scaling)
    return;
  }
  if (sharded()) {
    bucket.shard_grad = torch::empty({bucket.shard_numel}, bucket.flat.options());
    bucket.pending = bucket.comm->reduce_scatter_async(bucket.shard_grad, bucket.flat, bucket.op);
    return;
  }
  // A single rank still scales (expert gradients / world size = 1 here), but needs no collective.
  if (bucket.comm->size() > 1) bucket.pending = bucket.comm->all_reduce_async(bucket.flat, bucket.op);
}

void GradientSync::on_gradient_ready(size_t b) {
  if (!armed_) return;
  ++buckets_[b]->ready;
  // Start ready buckets strictly in order: every rank issues the same sequence of collectives.
  while (next_to_start_ < buckets_.size() &&
         buckets_[next_to_start_]->ready == int64_t(buckets_[next_to_start_]->params.size())) {
    start(*buckets_[next_to_start_++]);
  }
}

void GradientSync::finish(Bucket& bucket) {
  torch::NoGradGuard no_grad;
  if (bucket.pending) bucket.pending->wait();
  bucket.pending.reset();
  bucket.ready = 0;
  if (sharded()) {
    bucket.flat = torch::Tensor();
    if (bucket.scale != 1.0) bucket.shard_grad.mul_(bucket.scale);
    return;
  }
  if (bucket.scale != 1.0) bucket.flat.mul_(bucket.scale);
  int64_t offset = 0;
  for (auto& p : bucket.params) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    p.mutable_grad().copy_(bucket.flat.narrow(0, offset, p.numel()).view_as(p));
    offset += p.numel();
  }
  bucket.flat = torch::Tensor();
}

void GradientSync::sync() {
  if (groups_.world->size() == 1 && !sharded()) {
    // One rank: the gradients are final. Only unused parameters get the zero gradient the
    // collective path would give them; no copies through the buckets.
    torch::NoGradGuard no_grad;
    for (auto& bucket : buckets_) {
      for (auto& p : bucket->params) {
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      }
    }
    return;
  }
  // Buckets whose gradients did not all arrive (unused parameters), or all without overlap.
  while (next_to_start_ < buckets_.size()) start(*buckets_[next_to_start_++]);
  for (auto& bucket : buckets_) finish(*bucket);
  next_to_start_ = 0;
  armed_ = false;
}

}  // namespace moe::parallel
