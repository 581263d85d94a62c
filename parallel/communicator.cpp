#include "parallel/communicator.h"

#include <torch/torch.h>

#include <cstdlib>

#include "common/check.h"
#include "common/log.h"
#include "parallel/mpi_communicator.h"
#ifdef MOE_WITH_CUDA
#include "parallel/nccl_communicator.h"
#endif

namespace moe::parallel {

void check_all_to_all_args(const Communicator& comm, const at::Tensor& output, const at::Tensor& input,
                           const std::vector<int64_t>& out_splits, const std::vector<int64_t>& in_splits) {
  const auto n = static_cast<size_t>(comm.size());
  MOE_CHECK(out_splits.size() == n && in_splits.size() == n, "all_to_all: ", in_splits.size(), " in_splits and ",
            out_splits.size(), " out_splits for a group of ", n, " on rank ", comm.rank());
  int64_t in_rows = 0, out_rows = 0;
  for (size_t r = 0; r < n; ++r) {
    MOE_CHECK(in_splits[r] >= 0 && out_splits[r] >= 0, "all_to_all: negative split for rank ", r, " on rank ",
              comm.rank());
    in_rows += in_splits[r];
    out_rows += out_splits[r];
  }
  MOE_CHECK(input.dim() >= 1 && in_rows == input.size(0), "all_to_all: in_splits sum ", in_rows, " != input rows ",
            input.dim() ? input.size(0) : 0, " on rank ", comm.rank());
  MOE_CHECK(output.dim() >= 1 && out_rows == output.size(0), "all_to_all: out_splits sum ", out_rows,
            " != output rows ", output.dim() ? output.size(0) : 0, " on rank ", comm.rank());
  MOE_CHECK(input.scalar_type() == output.scalar_type() && input.sizes().slice(1) == output.sizes().slice(1),
            "all_to_all: input ", input.sizes(), " ", input.scalar_type(), " and output ", output.sizes(), " ",
            output.scalar_type(), " differ in dtype or row shape on rank ", comm.rank());
}

void check_reduce_scatter_args(const Communicator& comm, const at::Tensor& output, const at::Tensor& input) {
  MOE_CHECK(input.numel() == output.numel() * comm.size() && input.scalar_type() == output.scalar_type(),
            "reduce_scatter: input of ", input.numel(), " elements (", input.scalar_type(), ") must be ", comm.size(),
            " x the output's ", output.numel(), " (", output.scalar_type(), ") on rank ", comm.rank());
  MOE_CHECK(at::isFloatingType(input.scalar_type()), "reduce_scatter: unsupported dtype ", input.scalar_type(),
            " on rank ", comm.rank());
}

namespace {

struct CompletedCollective : PendingCollective {
  void wait() override {}
};

}  // namespace

std::unique_ptr<PendingCollective> Communicator::all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  all_reduce(tensor, op);
  return std::make_unique<CompletedCollective>();
}

std::unique_ptr<PendingCollective> Communicator::reduce_scatter_async(at::Tensor& output, const at::Tensor& input,
                                                                   ReduceOp op) {
  reduce_scatter(output, input, op);
  return std::make_unique<CompletedCollective>();
}

std::unique_ptr<PendingCollective> Communicator::all_to_all_async(at::Tensor& output, const at::Tensor& input,
                                                                  const std::vector<int64_t>& out_splits,
                                                                  const std::vector<int64_t>& in_splits) {
  all_to_all(output, input, out_splits, in_splits);
  return std::make_unique<CompletedCollective>();
}

namespace {

class SingleCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void all_reduce(at::Tensor&, ReduceOp) override {}
  void reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp) override {
    check_reduce_scatter_args(*this, output, input);
    output.copy_(input.view(output.sizes()));
  }
  void all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                  const std::vector<int64_t>& in_splits) override {
    check_all_to_all_args(*this, output, input, out_splits, in_splits);
    output.copy_(input);
  }
  void all_gather(at::Tensor& output, const at::Tensor& input) override { output.copy_(input.view(output.sizes())); }
  void broadcast(at::Tensor&, int root) override { MOE_CHECK(root == 0, "broadcast: root ", root, " in a group of 1"); }
  void barrier() override {}
  std::shared_ptr<Communicator> split(int, int) override { return std::make_shared<SingleCommunicator>(); }
  [[noreturn]] void abort(const std::string& reason) override {
    log("comm", "aborting: " + reason);
    std::abort();
  }
};

}  // namespace

std::shared_ptr<Communicator> make_single_communicator() { return std::make_shared<SingleCommunicator>(); }

std::shared_ptr<Communicator> make_communicator(const std::string& backend, double timeout_s) {
  MOE_CHECK(backend == "auto" || backend == "mpi" || backend == "nccl" || backend == "single",
            "--parallel.backend '", backend, "' is not one of auto, mpi, nccl, single");
  MOE_CHECK(timeout_s > 0, "--parallel.comm_timeout must be positive, got ", timeout_s);
  if (backend == "single") return make_single_communicator();
  ensure_mpi_initialized();
  std::string chosen = backend;
  if (backend == "auto") {
#ifdef MOE_WITH_CUDA
    // NCCL needs a GPU of its own per rank ("Duplicate GPU detected" otherwise): with more ranks
    // on a node than GPUs, the ranks share them through MPI.
    const bool gpu_each = torch::cuda::is_available() && node_local_size() <= int(torch::cuda::device_count());
    chosen = gpu_each ? "nccl" : "mpi";
#else
    chosen = "mpi";
#endif
  }
  std::shared_ptr<Communicator> comm;
  if (chosen == "nccl") {
#ifdef MOE_WITH_CUDA
    comm = make_nccl_world(timeout_s);
#else
    MOE_CHECK(false, "--parallel.backend nccl: this build has no CUDA/NCCL (CUDA toolkit not found at configure time)");
#endif
  } else {
    comm = std::make_shared<MpiCommunicator>(MPI_COMM_WORLD, timeout_s);
  }
  set_log_rank(comm->rank(), comm->size());
  log_rank0("comm", "backend " + chosen + (backend == "auto" ? " (auto; override with --parallel.backend)" : "") +
                        ", world size " + std::to_string(comm->size()));
  return comm;
}

}  // namespace moe::parallel
