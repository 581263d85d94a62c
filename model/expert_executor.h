// Where routed experts run. The MoE layer hands over token copies grouped by expert; an executor
// runs each expert on its contiguous slice. The default runs them in this process; parallel/
// implements one that sends each slice to the rank that holds the expert.
#pragma once
#include <torch/nn/modules/container/moduledict.h>

#include <cstdint>
#include <vector>

namespace moe::model {

/// The routed experts a process holds: global ids [first, first + count). count < 0 = all.
struct ExpertRange {
  int64_t first = 0;
  int64_t count = -1;
};

class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  /// grouped: [sum(tokens_per_expert), hidden], the copies routed to expert 0 first, then expert 1, ...
  /// tokens_per_expert: [n_routed_experts] slice lengths (host). Returns the expert outputs in the
  /// same order, [sum(tokens_per_expert), hidden]. Differentiable.
  virtual torch::Tensor run(const torch::Tensor& grouped, const std::vector<int64_t>& tokens_per_expert) = 0;
};

/// Runs every expert in this process. experts: keyed by global expert id ("0", "1", ...).
class LocalExpertExecutor : public ExpertExecutor {
 public:
  explicit LocalExpertExecutor(torch::nn::ModuleDict experts) : experts_(std::move(experts)) {}
  torch::Tensor run(const torch::Tensor& grouped, const std::vector<int64_t>& tokens_per_expert) override;

 private:
  torch::nn::ModuleDict experts_;
};

}  // namespace moe::model
