#include "parallel/nccl_communicator.h"

#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "common/log.h"
#include "parallel/dist_check.h"
#include "parallel/mpi_communicator.h"

namespace moe::parallel {

namespace {

ncclDataType_t nccl_type(c10::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kHalf: return ncclFloat16;
    case torch::kInt32: return ncclInt32;
    case torch::kInt64: return ncclInt64;
    case torch::kUInt8: return ncclUint8;
    default: MOE_CHECK(false, "NCCL: unsupported dtype ", t);
  }
  return ncclFloat32;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace

NcclCommunicator::NcclCommunicator(ncclComm_t comm, double timeout_s) : comm_(comm), timeout_s_(timeout_s) {
  NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
  NCCL_CHECK(ncclCommCount(comm_, &size_));
}

NcclCommunicator::~NcclCommunicator() { ncclCommDestroy(comm_); }

void NcclCommunicator::check_cuda(const at::Tensor& t, const char* op) const {
  MOE_CHECK(t.is_cuda() && t.is_contiguous(), op, ": NCCL needs contiguous CUDA tensors, got ", t.device(),
            t.is_contiguous() ? "" : " (non-contiguous)", " on rank ", rank_);
}

void NcclCommunicator::wait(const char* op) { wait(op, current_stream()); }

void NcclCommunicator::wait(const char* op, cudaStream_t stream) {
  ++sequence_;
  cudaEvent_t done;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(done, stream));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
  for (int polls = 0;; ++polls) {
    const cudaError_t state = cudaEventQuery(done);
    if (state == cudaSuccess) break;
    if (state != cudaErrorNotReady) CUDA_CHECK(state);
    ncclResult_t async = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
    std::ostringstream why;
    if (async != ncclSuccess) {
      why << op << " #" << sequence_ << " failed on rank " << rank_ << ": " << ncclGetErrorString(async);
    } else if (std::chrono::steady_clock::now() > deadline) {
      why << op << " #" << sequence_ << " did not complete within " << timeout_s_ << " s on rank " << rank_ << "/"
          << size_;
    }
    if (!why.str().empty()) abort(why.str());
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  CUDA_CHECK(cudaEventDestroy(done));
}

void NcclCommunicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  check_cuda(tensor, "all_reduce");
  NCCL_CHECK(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor.scalar_type()),
                           op == ReduceOp::kAverage ? ncclAvg : ncclSum, comm_, current_stream()));
  wait("all_reduce");
}

// A collective enqueued on a side stream that first waits for the current one (the tensors'
// producers), so that backward kernels keep running meanwhile.
class NcclPendingOnSideStream : public PendingCollective {
 public:
  NcclPendingOnSideStream(NcclCommunicator& comm, const char* op, std::vector<at::Tensor> keep,
                          const std::function<void(cudaStream_t)>& enqueue)
      : comm_(comm), op_(op), keep_(std::move(keep)),
        side_(c10::cuda::getStreamFromPool(false, keep_.front().device().index())) {
    cudaEvent_t ready;
    CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(ready, current_stream()));
    CUDA_CHECK(cudaStreamWaitEvent(side_.stream(), ready, 0));
    CUDA_CHECK(cudaEventDestroy(ready));  // released once the wait is satisfied
    enqueue(side_.stream());
  }
  // Polled to completion, so later work on any stream sees the result.
  void wait() override { comm_.wait(op_, side_.stream()); }

 private:
  NcclCommunicator& comm_;
  const char* op_;
  std::vector<at::Tensor> keep_;  // alive while the side stream uses them
  c10::cuda::CUDAStream side_;
};

std::unique_ptr<PendingCollective> NcclCommunicator::all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  check_cuda(tensor, "all_reduce");
  return std::make_unique<NcclPendingOnSideStream>(*this, "all_reduce", std::vector<at::Tensor>{tensor},
                                                   [&](cudaStream_t stream) {
    NCCL_CHECK(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor.scalar_type()),
                             op == ReduceOp::kAverage ? ncclAvg : ncclSum, comm_, stream));
  });
}

void NcclCommunicator::reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) {
  check_reduce_scatter_args(*this, output, input);
  check_cuda(input, "reduce_scatter");
  check_cuda(output, "reduce_scatter");
  NCCL_CHECK(ncclReduceScatter(input.data_ptr(), output.data_ptr(), output.numel(), nccl_type(input.scalar_type()),
                               op == ReduceOp::kAverage ? ncclAvg : ncclSum, comm_, current_stream()));
  wait("reduce_scatter");
}

std::unique_ptr<PendingCollective> NcclCommunicator::reduce_scatter_async(at::Tensor& output, const at::Tensor& input,
                                                                          ReduceOp op) {
  check_reduce_scatter_args(*this, output, input);
  check_cuda(input, "reduce_scatter");
  check_cuda(output, "reduce_scatter");
  return std::make_unique<NcclPendingOnSideStream>(*this, "reduce_scatter", std::vector<at::Tensor>{output, input},
                                                   [&](cudaStream_t stream) {
    NCCL_CHECK(ncclReduceScatter(input.data_ptr(), output.data_ptr(), output.numel(), nccl_type(input.scalar_type()),
                                 op == ReduceOp::kAverage ? ncclAvg : ncclSum, comm_, stream));
  });
}

void NcclCommunicator::check_all_to_all(const at::Tensor& output, const at::Tensor& input,
                                        const std::vector<int64_t>& out_splits,
                                        const std::vector<int64_t>& in_splits) const {
  check_all_to_all_args(*this, output, input, out_splits, in_splits);
  check_cuda(input, "all_to_all");
  check_cuda(output, "all_to_all");
}

void NcclCommunicator::enqueue_all_to_all(at::Tensor& output, const at::Tensor& input,
                                          const std::vector<int64_t>& out_splits, const std::vector<int64_t>& in_splits,
                                          cudaStream_t stream) {
  const int64_t row_bytes = input.numel() > 0 ? input.nbytes() / input.size(0)
                                              : (output.numel() > 0 ? output.nbytes() / output.size(0) : 0);
  auto* send = static_cast<char*>(input.data_ptr());
  auto* recv = static_cast<char*>(output.data_ptr());
  NCCL_CHECK(ncclGroupStart());
  for (int r = 0; r < size_; ++r) {
    if (in_splits[r] > 0) NCCL_CHECK(ncclSend(send, in_splits[r] * row_bytes, ncclUint8, r, comm_, stream));
    if (out_splits[r] > 0) NCCL_CHECK(ncclRecv(recv, out_splits[r] * row_bytes, ncclUint8, r, comm_, stream));
    send += in_splits[r] * row_bytes;
    recv += out_splits[r] * row_bytes;
  }
  NCCL_CHECK(ncclGroupEnd());
}

void NcclCommunicator::all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                                  const std::vector<int64_t>& in_splits) {
  check_all_to_all(output, input, out_splits, in_splits);
  enqueue_all_to_all(output, input, out_splits, in_splits, current_stream());
  wait("all_to_all");
}

std::unique_ptr<PendingCollective> NcclCommunicator::all_to_all_async(at::Tensor& output, const at::Tensor& input,
                                                                      const std::vector<int64_t>& out_splits,
                                                                      const std::vector<int64_t>& in_splits) {
  check_all_to_all(output, input, out_splits, in_splits);  // before anything is enqueued
  return std::make_unique<NcclPendingOnSideStream>(
      *this, "all_to_all", std::vector<at::Tensor>{output, input},
      [&](cudaStream_t stream) { enqueue_all_to_all(output, input, out_splits, in_splits, stream); });
}

void NcclCommunicator::all_gather(at::Tensor& output, const at::Tensor& input) {
  check_cuda(input, "all_gather");
  check_cuda(output, "all_gather");
  MOE_CHECK(output.numel() == input.numel() * size_, "all_gather: output of ", output.numel(), " elements for ",
            size_, " x ", input.numel(), " on rank ", rank_);
  NCCL_CHECK(ncclAllGather(input.data_ptr(), output.data_ptr(), input.nbytes(), ncclUint8, comm_, current_stream()));
  wait("all_gather");
}

void NcclCommunicator::broadcast(at::Tensor& tensor, int root) {
  check_cuda(tensor, "broadcast");
  NCCL_CHECK(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.nbytes(), ncclUint8, root, comm_,
                           current_stream()));
  wait("broadcast");
}

void NcclCommunicator::barrier() {
  auto one = torch::ones({1}, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA));
  all_reduce(one, ReduceOp::kSum);
}

std::shared_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  ncclComm_t sub;
  NCCL_CHECK(ncclCommSplit(comm_, color, key, &sub, nullptr));
  return std::make_shared<NcclCommunicator>(sub, timeout_s_);
}

void NcclCommunicator::abort(const std::string& reason) {
  log("comm", "aborting all ranks: " + reason);
  ncclCommAbort(comm_);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

std::shared_ptr<Communicator> make_nccl_world(double timeout_s) {
  MOE_CHECK(torch::cuda::is_available(), "--parallel.backend nccl: no CUDA device is visible to this rank");
  int world_rank = 0, world_size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  const int local_rank = node_local_rank();
  const int devices = static_cast<int>(torch::cuda::device_count());
  const int device = local_rank % devices;
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
  log("comm", "node-local rank " + std::to_string(local_rank) + " -> cuda:" + std::to_string(device));
  ncclUniqueId id;
  if (world_rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
  ncclComm_t comm;
  NCCL_CHECK(ncclCommInitRank(&comm, world_size, id, world_rank));
  return std::make_shared<NcclCommunicator>(comm, timeout_s);
}

}  // namespace moe::parallel
