#include "parallel/gradient_sync.h"

#include <torch/torch.h>

namespace moe::parallel {

bool is_expert_parameter(const std::string& name) { return name.find(".mlp.experts.") != std::string::npos; }

namespace {

// Consecutive parameters of one dtype, up to `bytes` per bucket (a larger parameter gets its own).
template <typename Bucket>
void add_to_buckets(std::vector<Bucket>& buckets, const torch::Tensor& p, int64_t bytes) {
  if (!buckets.empty()) {
    auto& last = buckets.back();
    int64_t used = 0;
    for (const auto& q : last.params) used += q.nbytes();
    if (last.params.front().scalar_type() == p.scalar_type() && used + int64_t(p.nbytes()) <= bytes) {
      last.params.push_back(p);
      return;
    }
  }
  buckets.push_back({{p}});
}

}  // namespace

GradientSync::GradientSync(model::CausalLM lm, ParallelGroups groups, int64_t bucket_bytes)
    : lm_(std::move(lm)), groups_(std::move(groups)) {
  // named_parameters() is ordered the same on every rank, so buckets line up across ranks.
  for (const auto& p : lm_->named_parameters()) {
    add_to_buckets(is_expert_parameter(p.key()) ? expert_ : dense_, p.value(), bucket_bytes);
  }
}

void GradientSync::reduce(std::vector<Bucket>& buckets, Communicator& comm, ReduceOp op, double scale) {
  for (auto& bucket : buckets) {
    std::vector<torch::Tensor> grads;
    for (auto& p : bucket.params) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad().reshape({-1}));
    }
    auto flat = torch::cat(grads);
    comm.all_reduce(flat, op);
    if (scale != 1.0) flat.mul_(scale);
    int64_t offset = 0;
    for (auto& p : bucket.params) {
      p.mutable_grad().copy_(flat.narrow(0, offset, p.numel()).view_as(p));
      offset += p.numel();
    }
  }
}

void GradientSync::sync() {
  torch::NoGradGuard no_grad;
  if (groups_.world->size() > 1) reduce(dense_, *groups_.world, ReduceOp::kAverage, 1.0);
  reduce(expert_, *groups_.edp, ReduceOp::kSum, 1.0 / groups_.world->size());
}

}  // namespace moe::parallel
