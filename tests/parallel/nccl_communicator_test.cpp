// The NCCL communicator on CUDA tensors, one rank per GPU (NCCL refuses two ranks on one GPU):
// every collective on rank-valued payloads for each dtype the trainer uses, unequal and zero
// all-to-all splits, the side-stream all_reduce_async, a split group, and the expert-parallel
// layer dispatching through NCCL equal to the plain layer. Skips, saying so, without a GPU per rank.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <numeric>

#include "parallel/communicator.h"
#include "parallel/expert_dispatch.h"
#include "parallel/mpi_communicator.h"
#include "parallel/topology.h"
#include "tests/parallel/rank_rows.h"
#include "tests/support.h"

using namespace moe;
using namespace moe::parallel;

namespace {

bool gpu_per_rank() {
  return torch::cuda::is_available() && node_local_size() <= int(torch::cuda::device_count());
}

#define SKIP_WITHOUT_GPU_PER_RANK()                                                                  \
  if (!gpu_per_rank()) GTEST_SKIP() << "NCCL needs one GPU per rank; none (or too few) visible here: " \
                                       "tested on the GPU machine"

std::shared_ptr<Communicator> nccl_world() {
  static auto comm = make_communicator("nccl", 60.0);
  return comm;
}

torch::Device my_gpu() { return {torch::kCUDA, static_cast<c10::DeviceIndex>(node_local_rank() % torch::cuda::device_count())}; }

const std::vector<c10::ScalarType> kDtypes = {torch::kFloat32, torch::kFloat64, torch::kBFloat16, torch::kInt64};

}  // namespace

TEST(NcclCommunicator, AllReduceSyncAndAsync) {
  SKIP_WITHOUT_GPU_PER_RANK();
  auto comm = nccl_world();
  EXPECT_EQ(comm->backend(), "nccl");
  const int w = comm->size(), r = comm->rank();
  for (auto dtype : kDtypes) {
    auto t = (torch::arange(1, 6) * (r + 1)).to(my_gpu(), dtype);
    comm->all_reduce(t, ReduceOp::kSum);
    EXPECT_TRUE(torch::equal(t.cpu(), (torch::arange(1, 6) * (w * (w + 1) / 2)).to(dtype))) << dtype;
    auto a = (torch::arange(1, 6) * (r + 1)).to(my_gpu(), dtype);
    auto pending = comm->all_reduce_async(a, ReduceOp::kSum);
    pending->wait();  // the current stream now waits for the side stream
    EXPECT_TRUE(torch::equal(a.cpu(), (torch::arange(1, 6) * (w * (w + 1) / 2)).to(dtype))) << "async " << dtype;
  }
  auto avg = torch::full({3}, double(r), torch::TensorOptions(torch::kFloat32).device(my_gpu()));
  comm->all_reduce(avg, ReduceOp::kAverage);
  EXPECT_TRUE(torch::allclose(avg.cpu(), torch::full({3}, (w - 1) / 2.0, torch::kFloat32)));
}

TEST(NcclCommunicator, AllToAllGatherBroadcastSplit) {
  SKIP_WITHOUT_GPU_PER_RANK();
  auto comm = nccl_world();
  const int w = comm->size(), me = comm->rank();
  const auto sent = test::rank_rows(me, w);
  for (auto dtype : kDtypes) {
    auto output = torch::full({sent.received(), 3}, -1.0).to(my_gpu(), dtype);
    comm->all_to_all(output, sent.input.to(my_gpu(), dtype), sent.out_splits, sent.in_splits);
    EXPECT_EQ(test::expect_rank_rows_received(output, sent, me), 0);
    auto async_output = torch::full({sent.received(), 3}, -1.0).to(my_gpu(), dtype);
    auto pending =
        comm->all_to_all_async(async_output, sent.input.to(my_gpu(), dtype), sent.out_splits, sent.in_splits);
    pending->wait();  // on a side stream; the current one sees it after the wait
    EXPECT_EQ(test::expect_rank_rows_received(async_output, sent, me), 0);
    auto gathered = torch::zeros({w * 2, 3}, torch::TensorOptions(dtype).device(my_gpu()));
    comm->all_gather(gathered, torch::full({2, 3}, double(me), torch::TensorOptions(dtype).device(my_gpu())));
    for (int s = 0; s < w; ++s) {
      EXPECT_TRUE(torch::equal(gathered.slice(0, 2 * s, 2 * s + 2).cpu(), torch::full({2, 3}, double(s), dtype)));
    }
    auto b = torch::full({4}, double(me + 10), torch::TensorOptions(dtype).device(my_gpu()));
    comm->broadcast(b, w - 1);
    EXPECT_TRUE(torch::equal(b.cpu(), torch::full({4}, double(w - 1 + 10), dtype)));
  }
  auto half = comm->split(me % 2, me);
  auto t = torch::ones({1}, torch::TensorOptions(torch::kFloat32).device(my_gpu()));
  half->all_reduce(t, ReduceOp::kSum);
  EXPECT_EQ(t.item<float>(), float(half->size()));
  comm->barrier();
}

// The EP layer over NCCL (ep = world) equals the plain layer on this rank's tokens run with the
// same weights: float32 on the GPU, a few float32 roundings apart.
TEST(NcclCommunicator, ExpertParallelLayerEqualsLocalLayer) {
  SKIP_WITHOUT_GPU_PER_RANK();
  auto comm = nccl_world();
  model::ModelConfig cfg;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 64;
  cfg.use_moe = true;
  cfg.n_routed_experts = 4 * comm->size();
  cfg.num_experts_per_tok = 2;
  auto groups = make_groups(comm, comm->size(), cfg.n_routed_experts);
  torch::manual_seed(0);
  model::MoEFeedForward full(cfg);
  model::MoEFeedForward local(cfg, groups.topology.local_experts());
  {
    torch::NoGradGuard no_grad;
    const auto params = full->named_parameters();
    for (auto& p : local->named_parameters()) p.value().copy_(params[p.key()]);
  }
  local->set_executor(std::make_shared<ExpertParallelExecutor>(groups.ep, groups.topology, local->experts));
  full->to(my_gpu());
  local->to(my_gpu());
  torch::manual_seed(1 + comm->rank());
  const auto x = torch::randn({2, 16, cfg.hidden_size}, torch::TensorOptions().device(my_gpu()));
  const auto want = full(x).hidden, got = local(x).hidden;
  EXPECT_TRUE(test::all_close(got, want, 1e-5, 1e-4)) << "rank " << comm->rank();
}
