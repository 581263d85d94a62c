// Communicator over MPI: CPU tensors directly, GPU tensors staged through host memory (so several
// ranks can share one GPU, which NCCL refuses). Also the bootstrap of the job.
#pragma once
#include <mpi.h>

#include "parallel/communicator.h"

namespace moe::parallel {

/// Initialises MPI once per process (thread level SERIALIZED) with errors returned to the caller.
void ensure_mpi_initialized();
/// Finalises MPI if this process initialised it; call at the end of main.
void finalize_mpi();
/// This rank's index among the ranks of its node (for the rank-to-GPU binding). The first call of
/// either function is a collective of MPI_COMM_WORLD (every rank makes it); later calls read a cache.
int node_local_rank();
/// How many ranks run on this rank's node.
int node_local_size();

class MpiCommunicator : public Communicator {
 public:
  /// Wraps `comm` (not freed unless owned). timeout_s: longest wait of one collective.
  MpiCommunicator(MPI_Comm comm, double timeout_s, bool owned = false);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  void all_reduce(at::Tensor& tensor, ReduceOp op) override;
  std::unique_ptr<PendingCollective> all_reduce_async(at::Tensor& tensor, ReduceOp op) override;
  void reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) override;
  std::unique_ptr<PendingCollective> reduce_scatter_async(at::Tensor& output, const at::Tensor& input,
                                                          ReduceOp op) override;
  void all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                  const std::vector<int64_t>& in_splits) override;
  std::unique_ptr<PendingCollective> all_to_all_async(at::Tensor& output, const at::Tensor& input,
                                                      const std::vector<int64_t>& out_splits,
                                                      const std::vector<int64_t>& in_splits) override;
  void all_gather(at::Tensor& output, const at::Tensor& input) override;
  void broadcast(at::Tensor& tensor, int root) override;
  void barrier() override;
  std::shared_ptr<Communicator> split(int color, int key) override;
  [[noreturn]] void abort(const std::string& reason) override;

 private:
  friend class MpiPendingAllReduce;
  friend class MpiPendingReduceScatter;
  friend class MpiPendingAllToAll;
  // Waits for `request`, polling; past the timeout, aborts every rank naming `op`.
  void wait(MPI_Request& request, const char* op);

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  double timeout_s_;
  int64_t sequence_ = 0;
};

}  // namespace moe::parallel
