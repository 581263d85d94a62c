// Where routed experts run. The MoE layer hands over token copies grouped by expert; an executor
// runs each expert on its contiguous slice. The default runs them in this process (one expert at a
// time, or all at once as grouped matrix products); parallel/ implements one that sends each slice
// to the rank that holds the expert and runs the received rows with a local executor.
#pragma once
#include <torch/nn/modules/container/moduledict.h>

#include "model/feed_forward.h"
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe::model {

/// The routed experts a process holds: global ids [first, first + count). count < 0 = all.
struct ExpertRange {
  int64_t first = 0;
  int64_t count = -1;
};

/// Routed experts' work begun by ExpertExecutor::start; finish() ends it.
class ExpertsInFlight {
 public:
  virtual ~ExpertsInFlight() = default;
  /// The experts' outputs, as ExpertExecutor::run returns them. Call once.
  virtual torch::Tensor finish() = 0;
};

class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  /// run() in two halves, so that the layer's other work (its shared experts) runs between them:
  /// expert parallelism sends the copies to their ranks in start() and they travel meanwhile. The
  /// default runs everything in start() (in one process the routed experts run first, as they
  /// did: their transients then do not meet the shared experts' saved tensors at the peak).
  virtual std::unique_ptr<ExpertsInFlight> start(const torch::Tensor& grouped, const torch::Tensor& counts,
                                                 int64_t capacity);
  /// grouped: [M, hidden] token copies, the first counts[0] rows for the first expert, the next
  /// counts[1] for the second, ...; rows past sum(counts) (dropped copies) are ignored. counts:
  /// int64, one entry per expert the executor serves (the layer passes all n_routed_experts, on
  /// grouped's device). capacity: the most copies an expert was given (counts[e] <= capacity), or
  /// 0 for no limit, where the caller knows without reading counts that sum(counts) == M. Returns
  /// [M, hidden], the expert outputs in the same order, with zero rows past sum(counts).
  /// Differentiable.
  virtual torch::Tensor run(const torch::Tensor& grouped, const torch::Tensor& counts, int64_t capacity) = 0;
};

/// How a LocalExpertExecutor runs its experts (ModelConfig::expert_compute).
enum class ExpertCompute {
  kLoop,     // one SwiGLU per expert on its slice; copies the counts to the host once
  kGrouped,  // two grouped matrix products for all experts; no host synchronisation
  kAuto,     // grouped where it pays (bfloat16 matrix products on CUDA), else loop
};
/// "auto", "loop" or "grouped"; throws naming any other value.
ExpertCompute parse_expert_compute(const std::string& name);
/// Whether experts run grouped for matrix products in `matmul_dtype` on a CUDA device or not
/// (resolves kAuto: grouped for bfloat16 on CUDA).
bool runs_grouped(ExpertCompute compute, bool on_cuda, c10::ScalarType matmul_dtype);

/// Runs the given experts in this process. experts: FeedForward modules keyed by global expert
/// id, in id order; counts[j] belongs to the j-th of them.
class LocalExpertExecutor : public ExpertExecutor {
 public:
  explicit LocalExpertExecutor(torch::nn::ModuleDict experts, ExpertCompute compute = ExpertCompute::kAuto);
  torch::Tensor run(const torch::Tensor& grouped, const torch::Tensor& counts, int64_t capacity) override;

 private:
  std::vector<FeedForward> experts_;  // the dict's modules, in id order
  ExpertCompute compute_;
};

}  // namespace moe::model
