// Where routed experts run. The MoE layer hands over token copies grouped by expert; an executor
// runs each expert on its contiguous slice. The default runs them in this process; parallel/
// implements one that sends each slice to the rank that holds the expert.
#pragma once
#include <torch/nn/modules/container/moduledict.h>
#include <torch/types.h>

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
  /// grouped: token copies, the first counts[0] rows for expert 0, the next counts[1] for expert 1,
  /// ...; rows past sum(counts) (dropped copies) are ignored. counts: [n_routed_experts] int64 on
  /// grouped's device. Returns the expert outputs in the same order, [sum(counts), hidden].
  /// Differentiable. An executor copies the counts to the host once (the layer's only sync).
  virtual torch::Tensor run(const torch::Tensor& grouped, const torch::Tensor& counts) = 0;
};

/// Runs every expert in this process. experts: keyed by global expert id ("0", "1", ...).
class LocalExpertExecutor : public ExpertExecutor {
 public:
  explicit LocalExpertExecutor(torch::nn::ModuleDict experts) : experts_(std::move(experts)) {}
  torch::Tensor run(const torch::Tensor& grouped, const torch::Tensor& counts) override;

 private:
  torch::nn::ModuleDict experts_;
};

}  // namespace moe::model
