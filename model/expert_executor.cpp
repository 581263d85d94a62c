#include "model/expert_executor.h"

#include <torch/torch.h>

#include <numeric>

#include "common/check.h"
#include "model/feed_forward.h"
#include "model/functional.h"
#include "model/grouped_experts.h"

namespace moe::model {

ExpertCompute parse_expert_compute(const std::string& name) {
  if (name == "loop") return ExpertCompute::kLoop;
  if (name == "grouped") return ExpertCompute::kGrouped;
  MOE_CHECK(name == "auto", "expert_compute '", name, "' is not one of auto, loop, grouped");
  return ExpertCompute::kAuto;
}

LocalExpertExecutor::LocalExpertExecutor(torch::nn::ModuleDict experts, ExpertCompute compute)
    : experts_(std::move(experts)), compute_(compute) {}

bool LocalExpertExecutor::uses_grouped(const torch::Tensor& grouped) const {
  if (compute_ != ExpertCompute::kAuto) return compute_ == ExpertCompute::kGrouped;
  return grouped.is_cuda() && matmul_dtype(grouped) == torch::kBFloat16;
}

torch::Tensor LocalExpertExecutor::run(const torch::Tensor& grouped, const torch::Tensor& counts) {
  std::vector<FeedForward> experts;
  for (const auto& module : experts_->values()) {
    auto expert = std::dynamic_pointer_cast<FeedForwardImpl>(module);
    MOE_CHECK(expert != nullptr, "LocalExpertExecutor: '", module->name(), "' is not a FeedForward expert");
    experts.emplace_back(std::move(expert));
  }
  MOE_CHECK(counts.numel() == static_cast<int64_t>(experts.size()), "executor of ", experts.size(),
            " experts got ", counts.numel(), " counts");
  if (uses_grouped(grouped)) {
    return grouped_swiglu(grouped, counts, experts, matmul_dtype(grouped), experts_->is_training());
  }
  const auto host = counts.to(torch::kCPU);  // the loop's only host synchronisation
  const std::vector<int64_t> sizes(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
  const int64_t kept = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  const auto slices = grouped.narrow(0, 0, kept).split_with_sizes(sizes);
  std::vector<torch::Tensor> outputs;
  outputs.reserve(slices.size() + 1);
  for (size_t e = 0; e < slices.size(); ++e) {
    // NOTE: an expert with no token still runs on its empty slice, so the graph (and a later
    // gradient all-reduce) sees the same parameters used on every step.
    outputs.push_back(experts[e]->forward(slices[e]));
  }
  if (kept < grouped.size(0)) {
    auto shape = grouped.sizes().vec();
    shape[0] = grouped.size(0) - kept;
    outputs.push_back(torch::zeros(shape, outputs.empty() ? grouped.options() : outputs.front().options()));
  }
  return outputs.empty() ? grouped.narrow(0, 0, 0) : torch::cat(outputs, 0);
}

}  // namespace moe::model
