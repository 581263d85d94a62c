// Expert parallelism for one MoE layer. The layer groups its token copies by global expert id;
// since each rank of the EP group holds a contiguous range of experts, that order is also by
// destination rank. The executor then:
//   exchanges per-expert counts -> all-to-all the copies (dispatch; the layer's shared experts run
//   while it is in flight) -> regroups received rows by local expert on the device -> runs the
//   local experts (a model::LocalExpertExecutor: a loop or grouped matrix products) -> restores
//   the received order -> all-to-all back (combine).
// Dispatch and combine are one differentiable all-to-all each; each one's backward is the other's
// communication, so gradients reach the experts, the gate and the input.
#pragma once
#include <memory>
#include <vector>

#include "model/causal_lm.h"
#include "model/expert_executor.h"
#include "parallel/communicator.h"
#include "parallel/topology.h"

namespace moe::parallel {

/// Differentiable all-to-all of rows: send_splits[r] rows of x to rank r; returns the
/// sum(recv_splits) rows received, in rank order. Backward sends the gradients back the same way.
/// NOTE: the communicator must outlive the backward pass.
torch::Tensor all_to_all_rows(const torch::Tensor& x, const std::vector<int64_t>& send_splits,
                              const std::vector<int64_t>& recv_splits, Communicator& comm);

class ExpertParallelExecutor : public model::ExpertExecutor {
 public:
  /// local_experts: this rank's experts (keys = global ids of topology.local_experts()).
  /// pad_to_capacity: where the layer gives a capacity, send that many rows per expert (start()).
  ExpertParallelExecutor(std::shared_ptr<Communicator> ep, Topology topology, torch::nn::ModuleDict local_experts,
                         model::ExpertCompute compute = model::ExpertCompute::kAuto, bool pad_to_capacity = false);
  torch::Tensor run(const torch::Tensor& grouped, const torch::Tensor& counts, int64_t capacity) override;
  /// Starts the dispatch; finish() waits for it, runs the local experts and sends their outputs
  /// back (the combine). The ranks first exchange their counts, which the host reads for the split
  /// sizes; with pad_to_capacity and a capacity (> 0, the same on every rank of the group: the
  /// trainer's fixed micro-batch) every rank sends `capacity` rows per expert instead, the kept
  /// copies padded with zero rows: no count exchange, no host synchronisation, the same shapes
  /// every step, for (capacity - kept) rows more of all-to-all and expert products.
  std::unique_ptr<model::ExpertsInFlight> start(const torch::Tensor& grouped, const torch::Tensor& counts,
                                                int64_t capacity) override;

  /// Rows received from other ranks in the last run, padding included (for statistics and tests).
  int64_t last_received_rows() const { return last_received_rows_; }

 private:
  // Split sizes of one run's all-to-alls, from the exchanged counts.
  struct Exchange {
    std::vector<int64_t> send_splits, recv_splits;  // rows to / from each rank
    torch::Tensor theirs;                           // [source rank x local expert] rows received, on the device
    int64_t sent_rows = 0, received_rows = 0;
  };
  Exchange exchange_counts(const torch::Tensor& counts, const torch::Device& device);
  std::unique_ptr<model::ExpertsInFlight> start_counted(const torch::Tensor& grouped, const torch::Tensor& counts);
  torch::Tensor finish_counted(const Exchange& exchange, const torch::Tensor& received, int64_t grouped_rows);
  std::unique_ptr<model::ExpertsInFlight> start_fixed(const torch::Tensor& grouped, const torch::Tensor& counts,
                                                      int64_t capacity);
  torch::Tensor finish_fixed(const torch::Tensor& received, const std::vector<int64_t>& splits,
                             const torch::Tensor& slot_of_row, int64_t capacity);

  std::shared_ptr<Communicator> ep_;
  Topology topology_;
  model::LocalExpertExecutor local_;
  bool pad_to_capacity_;
  int64_t last_received_rows_ = 0;
};

/// The model for this rank: dense parameters and this rank's experts, initialised exactly like a
/// single-process CausalLM built after torch::manual_seed(seed), with every MoE layer dispatching
/// through `groups.ep`. Builds only this rank's experts (model/causal_lm.h: each expert's
/// initialisation depends on (seed, layer, expert id) alone).
model::CausalLM make_expert_parallel_model(const model::ModelConfig& config, const ParallelGroups& groups,
                                           uint64_t seed, bool pad_to_capacity = false);

/// Installs ExpertParallelExecutors on a model built with groups.topology.local_experts() (none
/// with ep_size 1: the layers' own local executors then run every expert).
void attach_expert_parallel(model::CausalLM& lm, const ParallelGroups& groups, bool pad_to_capacity = false);

}  // namespace moe::parallel
