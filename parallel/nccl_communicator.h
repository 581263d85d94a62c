// Communicator over NCCL for CUDA tensors, bootstrapped over MPI. Compiled whenever the CUDA
// toolkit is found (CI proves it builds); runs on GPU machines, one rank per GPU.
#pragma once
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>

#include "parallel/communicator.h"

namespace moe::parallel {

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, double timeout_s);
  ~NcclCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  /// Collectives run on the current CUDA stream; each call waits (bounded by the timeout) until
  /// that stream has finished it, polling ncclCommGetAsyncError.
  void all_reduce(at::Tensor& tensor, ReduceOp op) override;
  /// On a side stream that first waits for the current one, so that backward kernels keep running
  /// meanwhile; wait() polls it to completion (bounded by the timeout).
  std::unique_ptr<PendingCollective> all_reduce_async(at::Tensor& tensor, ReduceOp op) override;
  void reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) override;
  /// On a side stream, as all_reduce_async.
  std::unique_ptr<PendingCollective> reduce_scatter_async(at::Tensor& output, const at::Tensor& input,
                                                          ReduceOp op) override;
  void all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                  const std::vector<int64_t>& in_splits) override;
  /// On a side stream, as all_reduce_async.
  std::unique_ptr<PendingCollective> all_to_all_async(at::Tensor& output, const at::Tensor& input,
                                                      const std::vector<int64_t>& out_splits,
                                                      const std::vector<int64_t>& in_splits) override;
  void all_gather(at::Tensor& output, const at::Tensor& input) override;
  void broadcast(at::Tensor& tensor, int root) override;
  void barrier() override;
  std::shared_ptr<Communicator> split(int color, int key) override;
  [[noreturn]] void abort(const std::string& reason) override;

 private:
  friend class NcclPendingOnSideStream;
  // Waits until `stream` has finished the last collective, polling ncclCommGetAsyncError.
  void wait(const char* op, cudaStream_t stream);
  // The all_to_all's sizes, dtypes and devices; throws naming them.
  void check_all_to_all(const at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                        const std::vector<int64_t>& in_splits) const;
  // The all_to_all's grouped sends and receives on `stream` (checked before).
  void enqueue_all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                          const std::vector<int64_t>& in_splits, cudaStream_t stream);
  void wait(const char* op);
  void check_cuda(const at::Tensor& t, const char* op) const;

  ncclComm_t comm_;
  int rank_ = 0, size_ = 1;
  double timeout_s_;
  int64_t sequence_ = 0;
};

/// Binds this rank to GPU (node-local rank % device count), then creates the world communicator.
std::shared_ptr<Communicator> make_nccl_world(double timeout_s);

}  // namespace moe::parallel
