#include "parallel/mpi_communicator.h"

#include <torch/torch.h>

#include <chrono>
#include <limits>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "common/log.h"
#include "parallel/dist_check.h"

namespace moe::parallel {

namespace {

bool g_we_initialized = false;

int to_int(int64_t v, const char* what) {
  MOE_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), what, " ", v, " does not fit MPI's int counts");
  return static_cast<int>(v);
}

// MPI has no bfloat16/float16 reduction: those are reduced in float32.
MPI_Datatype reduce_type(c10::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kInt64: return MPI_INT64_T;
    default: MOE_CHECK(false, "all_reduce: unsupported dtype ", t);
  }
  return MPI_DATATYPE_NULL;
}

// Host, contiguous copy of `t` for MPI, or `t` itself when it already is one.
at::Tensor host_contiguous(const at::Tensor& t) { return t.is_cpu() ? t.contiguous() : t.to(torch::kCPU).contiguous(); }

// Copies a staged host result back into `dst` if it is a different tensor.
void copy_back(at::Tensor& dst, const at::Tensor& staged) {
  if (staged.data_ptr() != dst.data_ptr()) dst.copy_(staged);
}

}  // namespace

void ensure_mpi_initialized() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  int provided = 0;
  // SERIALIZED: on GPUs, autograd runs backward (and so the dispatch's and the overlapped gradient
  // sync's MPI calls) on its device thread while the main thread waits.
  MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided));
  if (provided < MPI_THREAD_SERIALIZED) log("comm", "warning: this MPI provides thread level " + std::to_string(provided) + " < MPI_THREAD_SERIALIZED; keep GPU runs on NCCL");
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  g_we_initialized = true;
}

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_we_initialized && !finalized) MPI_Finalize();
}

namespace {
// This rank's (index, count) among the ranks of its node: a collective of MPI_COMM_WORLD, so it is
// computed once, on the first call (which every rank makes, choosing its device), and cached: a
// later call on one rank alone (a single-process run inside an MPI job) must not wait for the others.
std::pair<int, int> compute_node_local_rank_and_size() {
  ensure_mpi_initialized();
  int world_rank = 0, local_rank = 0, local_size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  MPI_Comm node;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &local_rank));
  MPI_CHECK(MPI_Comm_size(node, &local_size));
  MPI_CHECK(MPI_Comm_free(&node));
  return {local_rank, local_size};
}

std::pair<int, int> node_local_rank_and_size() {
  static const std::pair<int, int> cached = compute_node_local_rank_and_size();
  return cached;
}
}  // namespace

int node_local_rank() { return node_local_rank_and_size().first; }
int node_local_size() { return node_local_rank_and_size().second; }

MpiCommunicator::MpiCommunicator(MPI_Comm comm, double timeout_s, bool owned)
    : comm_(comm), owned_(owned), timeout_s_(timeout_s) {
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && !finalized) MPI_Comm_free(&comm_);
}

void MpiCommunicator::wait(MPI_Request& request, const char* op) {
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_s_);
  ++sequence_;
  for (int polls = 0;; ++polls) {
    int done = 0;
    MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return;
    if (std::chrono::steady_clock::now() > deadline) {
      std::ostringstream os;
      os << op << " #" << sequence_ << " did not complete within " << timeout_s_ << " s on rank " << rank_ << "/"
         << size_ << " (a rank stopped or called a different collective)";
      abort(os.str());
    }
    // Oversubscribed ranks share cores: stop spinning soon.
    if (polls > 200) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

// An MPI_Iallreduce on a host copy (the tensor itself when it is a contiguous host tensor of a
// type MPI reduces); wait() finishes it and writes the result back.
class MpiPendingAllReduce : public PendingCollective {
 public:
  MpiPendingAllReduce(MpiCommunicator& comm, at::Tensor& tensor, ReduceOp op) : comm_(comm), tensor_(tensor), op_(op) {
    const bool widen = tensor.scalar_type() == torch::kBFloat16 || tensor.scalar_type() == torch::kHalf;
    staged_ = widen ? tensor.to(torch::kCPU, torch::kFloat32).contiguous() : host_contiguous(tensor);
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, staged_.data_ptr(), to_int(staged_.numel(), "all_reduce numel"),
                             reduce_type(staged_.scalar_type()), MPI_SUM, comm_.comm_, &request_));
  }
  void wait() override {
    comm_.wait(request_, "all_reduce");
    if (op_ == ReduceOp::kAverage) staged_.div_(comm_.size_);
    copy_back(tensor_, staged_);
  }

 private:
  MpiCommunicator& comm_;
  at::Tensor tensor_, staged_;
  ReduceOp op_;
  MPI_Request request_;
};

void MpiCommunicator::all_reduce(at::Tensor& tensor, ReduceOp op) { MpiPendingAllReduce(*this, tensor, op).wait(); }

std::unique_ptr<PendingCollective> MpiCommunicator::all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  return std::make_unique<MpiPendingAllReduce>(*this, tensor, op);
}

// An MPI_Ireduce_scatter_block from a host copy of the input (widened to float32 for 16-bit types)
// into a host output; wait() finishes it and writes the result back.
class MpiPendingReduceScatter : public PendingCollective {
 public:
  MpiPendingReduceScatter(MpiCommunicator& comm, at::Tensor& output, const at::Tensor& input, ReduceOp op)
      : comm_(comm), output_(output), op_(op) {
    check_reduce_scatter_args(comm, output, input);
    const bool widen = input.scalar_type() == torch::kBFloat16 || input.scalar_type() == torch::kHalf;
    send_ = widen ? input.to(torch::kCPU, torch::kFloat32).contiguous() : host_contiguous(input);
    recv_ = !widen && output.is_cpu() && output.is_contiguous()
                ? output
                : torch::empty(output.sizes(), output.options().device(torch::kCPU).dtype(send_.scalar_type()));
    MPI_CHECK(MPI_Ireduce_scatter_block(send_.data_ptr(), recv_.data_ptr(),
                                        to_int(recv_.numel(), "reduce_scatter numel"),
                                        reduce_type(send_.scalar_type()), MPI_SUM, comm_.comm_, &request_));
  }
  void wait() override {
    comm_.wait(request_, "reduce_scatter");
    if (op_ == ReduceOp::kAverage) recv_.div_(comm_.size_);
    copy_back(output_, recv_);
  }

 private:
  MpiCommunicator& comm_;
  at::Tensor output_, send_, recv_;
  ReduceOp op_;
  MPI_Request request_;
};

void MpiCommunicator::reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) {
  MpiPendingReduceScatter(*this, output, input, op).wait();
}

std::unique_ptr<PendingCollective> MpiCommunicator::reduce_scatter_async(at::Tensor& output, const at::Tensor& input,
                                                                         ReduceOp op) {
  return std::make_unique<MpiPendingReduceScatter>(*this, output, input, op);
}

// An MPI_Ialltoallv of bytes from a host copy of the input into the output (a host staging tensor
// where the output is not a contiguous host tensor); wait() finishes it and writes the result back.
class MpiPendingAllToAll : public PendingCollective {
 public:
  MpiPendingAllToAll(MpiCommunicator& comm, at::Tensor& output, const at::Tensor& input,
                     const std::vector<int64_t>& out_splits, const std::vector<int64_t>& in_splits)
      : comm_(comm), output_(output) {
    check_all_to_all_args(comm, output, input, out_splits, in_splits);
    const int size = comm.size_;
    const int64_t row_bytes = input.numel() > 0 ? input.nbytes() / input.size(0)
                                                : (output.numel() > 0 ? output.nbytes() / output.size(0) : 0);
    send_counts_.resize(size), send_displs_.resize(size), recv_counts_.resize(size), recv_displs_.resize(size);
    int64_t send_off = 0, recv_off = 0;
    for (int r = 0; r < size; ++r) {
      send_counts_[r] = to_int(in_splits[r] * row_bytes, "all_to_all send bytes");
      recv_counts_[r] = to_int(out_splits[r] * row_bytes, "all_to_all receive bytes");
      send_displs_[r] = to_int(send_off, "all_to_all send offset");
      recv_displs_[r] = to_int(recv_off, "all_to_all receive offset");
      send_off += send_counts_[r];
      recv_off += recv_counts_[r];
    }
    send_ = host_contiguous(input);
    recv_ = output.is_cpu() && output.is_contiguous()
                ? output
                : torch::empty(output.sizes(), output.options().device(torch::kCPU));
    MPI_CHECK(MPI_Ialltoallv(send_.data_ptr(), send_counts_.data(), send_displs_.data(), MPI_BYTE, recv_.data_ptr(),
                             recv_counts_.data(), recv_displs_.data(), MPI_BYTE, comm_.comm_, &request_));
  }
  void wait() override {
    comm_.wait(request_, "all_to_all");
    copy_back(output_, recv_);
  }

 private:
  MpiCommunicator& comm_;
  at::Tensor output_, send_, recv_;
  std::vector<int> send_counts_, send_displs_, recv_counts_, recv_displs_;  // read by MPI until done
  MPI_Request request_;
};

void MpiCommunicator::all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                                 const std::vector<int64_t>& in_splits) {
  MpiPendingAllToAll(*this, output, input, out_splits, in_splits).wait();
}

std::unique_ptr<PendingCollective> MpiCommunicator::all_to_all_async(at::Tensor& output, const at::Tensor& input,
                                                                     const std::vector<int64_t>& out_splits,
                                                                     const std::vector<int64_t>& in_splits) {
  return std::make_unique<MpiPendingAllToAll>(*this, output, input, out_splits, in_splits);
}

void MpiCommunicator::all_gather(at::Tensor& output, const at::Tensor& input) {
  MOE_CHECK(output.numel() == input.numel() * size_ && output.scalar_type() == input.scalar_type(),
            "all_gather: output of ", output.numel(), " elements (", output.scalar_type(), ") must hold ", size_,
            " x ", input.numel(), " (", input.scalar_type(), ") on rank ", rank_);
  auto recv = output.is_cpu() && output.is_contiguous() ? output : torch::empty(output.sizes(), output.options().device(torch::kCPU));
  const int bytes = to_int(input.nbytes(), "all_gather bytes");
  // In place (MPI_IN_PLACE) when the input already is this rank's block of the output.
  const bool in_place = recv.data_ptr() == output.data_ptr() && input.is_contiguous() &&
                        input.data_ptr() == static_cast<char*>(recv.data_ptr()) + int64_t(rank_) * bytes;
  const auto send = in_place ? input : host_contiguous(input);
  MPI_Request request;
  MPI_CHECK(MPI_Iallgather(in_place ? MPI_IN_PLACE : send.data_ptr(), in_place ? 0 : bytes, MPI_BYTE, recv.data_ptr(),
                           bytes, MPI_BYTE, comm_, &request));
  wait(request, "all_gather");
  copy_back(output, recv);
}

void MpiCommunicator::broadcast(at::Tensor& tensor, int root) {
  MOE_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " outside group of ", size_);
  auto staged = host_contiguous(tensor);
  MPI_Request request;
  MPI_CHECK(MPI_Ibcast(staged.data_ptr(), to_int(staged.nbytes(), "broadcast bytes"), MPI_BYTE, root, comm_, &request));
  wait(request, "broadcast");
  copy_back(tensor, staged);
}

void MpiCommunicator::barrier() {
  MPI_Request request;
  MPI_CHECK(MPI_Ibarrier(comm_, &request));
  wait(request, "barrier");
}

std::shared_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm sub;
  MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
  return std::make_shared<MpiCommunicator>(sub, timeout_s_, /*owned=*/true);
}

void MpiCommunicator::abort(const std::string& reason) {
  log("comm", "aborting all ranks: " + reason);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

}  // namespace moe::parallel
