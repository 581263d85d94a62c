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

namespace {

// ExpertExecutor::start's default: the experts have already run.
class AlreadyRun : public ExpertsInFlight {
 public:
  explicit AlreadyRun(torch::Tensor out) : out_(std::move(out)) {}
  torch::Tensor finish() override { return out_; }

 private:
  torch::Tensor out_;
};

}  // namespace

std::unique_ptr<ExpertsInFlight> ExpertExecutor::start(const torch::Tensor& grouped, const torch::Tensor& counts,
                                                       int64_t capacity) {
  return std::make_unique<AlreadyRun>(run(grouped, counts, capacity));
}

bool runs_grouped(ExpertCompute compute, bool on_cuda, c10::ScalarType matmul_dtype) {
  if (compute != ExpertCompute::kAuto) return compute == ExpertCompute::kGrouped;
  return on_cuda && matmul_dtype == torch::kBFloat16;
}

LocalExpertExecutor::LocalExpertExecutor(torch::nn::ModuleDict experts, ExpertCompute compute) : compute_(compute) {
  for (const auto& module : experts->values()) {
    auto expert = std::dynamic_pointer_cast<FeedForwardImpl>(module);
    MOE_CHECK(expert != nullptr, "LocalExpertExecutor: '", module->name(), "' is not a FeedForward expert");
    experts_.emplace_back(std::move(expert));
  }
}

torch::Tensor LocalExpertExecutor::run(const torch::Tensor& grouped, const torch::Tensor& counts, int64_t capacity) {
  MOE_CHECK(counts.numel() == static_cast<int64_t>(experts_.size()), "executor of ", experts_.size(),
            " experts got ", counts.numel(), " counts");
  const auto dtype = matmul_dtype(grouped);
  if (runs_grouped(compute_, grouped.is_cuda(), dtype)) {
    // Without a capacity every row is counted: no masks for rows past the groups.
    return grouped_swiglu(grouped, counts, experts_, dtype, !experts_.empty() && experts_.front()->is_training(),
                          /*all_rows_counted=*/capacity == 0);
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
    outputs.push_back(experts_[e]->forward(slices[e]));
  }
  if (kept < grouped.size(0)) {
    auto shape = grouped.sizes().vec();
    shape[0] = grouped.size(0) - kept;
    outputs.push_back(torch::zeros(shape, outputs.empty() ? grouped.options() : outputs.front().options()));
  }
  return outputs.empty() ? grouped.narrow(0, 0, 0) : torch::cat(outputs, 0);
}

}  // namespace moe::model
