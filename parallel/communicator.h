// The one interface for collectives across ranks; the backend (MPI, NCCL, single process) is
// chosen at run time by make_communicator().
//
// Contract: every rank of the group calls the same collectives in the same order with matching
// shapes. Calls block until the result is ready on the host (MPI, single) or is enqueued on the
// current CUDA stream (NCCL: later work on that stream sees the result). A collective that does
// not finish within the communicator's timeout aborts every rank with a message naming the
// operation, its sequence number and the rank: nothing hangs silently.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe::parallel {

enum class ReduceOp { kSum, kAverage };

/// A collective in flight. wait() completes it (bounded by the communicator's timeout).
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// "mpi", "nccl" or "single".
  virtual std::string backend() const = 0;

  /// In place over the group. dtypes: float32, float64, bfloat16, float16, int32, int64.
  virtual void all_reduce(at::Tensor& tensor, ReduceOp op) = 0;
  /// Starts an all_reduce that wait() finishes; `tensor` must stay untouched until then. MPI runs
  /// it in the background, NCCL on a side stream; the default (single) completes it at once. Same
  /// ordering contract as every collective.
  virtual std::unique_ptr<PendingCollective> all_reduce_async(at::Tensor& tensor, ReduceOp op);
  /// output [n] = this rank's n-element block of the reduction of every rank's input [size * n]
  /// (rank r gets elements [r * n, (r + 1) * n)). Both contiguous, same dtype; float types.
  virtual void reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) = 0;
  /// Starts a reduce_scatter that wait() finishes; neither tensor may be touched until then. Same
  /// backgrounds as all_reduce_async.
  virtual std::unique_ptr<PendingCollective> reduce_scatter_async(at::Tensor& output, const at::Tensor& input,
                                                                  ReduceOp op);
  /// Rows of `input` (dim 0) go out in chunks of in_splits[r] rows to rank r; `output` receives
  /// out_splits[r] rows from rank r, in rank order. Both contiguous, same dtype and row shape.
  virtual void all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                          const std::vector<int64_t>& in_splits) = 0;
  /// Starts an all_to_all that wait() finishes; neither tensor may be touched until then (output is
  /// written by wait() at the latest). MPI posts it non-blocking (the library moves what it can while
  /// this rank computes), NCCL enqueues it on a side stream; the default completes it at once. Same
  /// ordering contract as every collective.
  virtual std::unique_ptr<PendingCollective> all_to_all_async(at::Tensor& output, const at::Tensor& input,
                                                              const std::vector<int64_t>& out_splits,
                                                              const std::vector<int64_t>& in_splits);
  /// output: [size * n, ...] = the inputs [n, ...] of every rank, in rank order. In place when
  /// input is output's own block (output.narrow(0, rank * n, n), contiguous).
  virtual void all_gather(at::Tensor& output, const at::Tensor& input) = 0;
  /// Root's tensor to every rank, in place.
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;
  /// A communicator over the ranks with the same color, ordered by key (collective over this group).
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;
  /// Stops every rank of the job with this reason (never returns).
  [[noreturn]] virtual void abort(const std::string& reason) = 0;
};

/// Checks a reduce_scatter's sizes (input = size x output) and dtypes; throws with the values.
void check_reduce_scatter_args(const Communicator& comm, const at::Tensor& output, const at::Tensor& input);

/// Checks split sizes against the tensors and the group size; throws with the values on mismatch.
void check_all_to_all_args(const Communicator& comm, const at::Tensor& output, const at::Tensor& input,
                           const std::vector<int64_t>& out_splits, const std::vector<int64_t>& in_splits);

}  // namespace moe::parallel

namespace moe::parallel {

/// Longest wait of one collective before every rank is aborted (override: --parallel.comm_timeout).
constexpr double kDefaultCommTimeoutSeconds = 300.0;

/// The world communicator for `backend`: "mpi", "nccl" (GPU tensors; one GPU per rank, chosen from
/// the node-local rank), "single" (one process, no MPI) or "auto" (nccl when built with CUDA and a
/// GPU is present, else mpi). Logs its choice and how to override it.
std::shared_ptr<Communicator> make_communicator(const std::string& backend,
                                                double timeout_s = kDefaultCommTimeoutSeconds);

/// A group of one: every collective is a copy (or nothing).
std::shared_ptr<Communicator> make_single_communicator();

}  // namespace moe::parallel
