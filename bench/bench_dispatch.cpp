// moe-bench-dispatch: MoE token dispatch and combine across ranks, nccl-tests style. Per token
// count: dispatch time (count exchange + all-to-all), combine time, bytes each rank sends,
// algorithmic and bus bandwidth (busbw = algbw * (n-1)/n) and #wrong, the rows that reached the
// wrong rank or came back altered (payload = source rank, token, expert: must be 0).
//   mpirun -np 4 build/bin/moe-bench-dispatch --parallel.ep_size 4 --hidden 512
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <sstream>

#include "common/check.h"
#include "common/log.h"
#include "launch/cli.h"
#include "model/moe_feed_forward.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/topology.h"

namespace po = boost::program_options;
using namespace moe;
using namespace moe::parallel;

namespace {

struct Options {
  std::string backend = "auto", device = "auto", dtype = "bf16";
  int ep_size = 0, iters = 20, warmup = 3;
  int64_t hidden = 512, experts = 8, top_k = 2;
  std::vector<int64_t> tokens{256, 1024, 4096, 16384};
};

Options parse(int argc, char** argv) {
  Options o;
  po::options_description desc("moe-bench-dispatch: MoE all-to-all dispatch/combine benchmark");
  desc.add_options()("help", "show this help")
      ("parallel.backend", po::value(&o.backend)->default_value(o.backend), "auto, mpi or nccl")
      ("device", po::value(&o.device)->default_value(o.device), "cpu, cuda or auto (cuda with nccl)")
      ("parallel.ep_size", po::value(&o.ep_size)->default_value(0), "expert-parallel group size (0 = world)")
      ("hidden", po::value(&o.hidden)->default_value(o.hidden), "hidden size")
      ("experts", po::value(&o.experts)->default_value(o.experts), "routed experts")
      ("top_k", po::value(&o.top_k)->default_value(o.top_k), "experts per token")
      ("dtype", po::value(&o.dtype)->default_value(o.dtype), "bf16 or fp32")
      ("tokens", po::value(&o.tokens)->multitoken(), "tokens per rank (several allowed)")
      ("iters", po::value(&o.iters)->default_value(o.iters), "timed iterations")
      ("warmup", po::value(&o.warmup)->default_value(o.warmup), "untimed iterations");
  launch::parse_or_exit(argc, argv, desc);
  return o;
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

int main(int argc, char** argv) try {
  const auto o = parse(argc, argv);
  auto world = make_communicator(o.backend);
  const auto groups = make_groups(world, o.ep_size > 0 ? o.ep_size : world->size(), o.experts);
  const auto& topo = groups.topology;
  auto& ep = *groups.ep;
  MOE_CHECK(o.top_k >= 1 && o.top_k <= o.experts, "--top_k ", o.top_k, " must be in [1, --experts ", o.experts, "]");
  const bool cuda = o.device == "cuda" || (o.device == "auto" && world->backend() == "nccl");
  const torch::Device device = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  const auto dtype = o.dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  MOE_CHECK(o.dtype == "bf16" || o.dtype == "fp32", "--dtype '", o.dtype, "' is not bf16 or fp32");
  const int n = topo.ep_size;
  const int64_t per_rank = topo.experts_per_rank;

  if (world->rank() == 0) {
    std::printf("# ep_size %d, edp_size %d, backend %s, device %s, hidden %ld, experts %ld, top_k %ld, dtype %s\n", n,
                topo.edp_size, world->backend().c_str(), cuda ? "cuda" : "cpu", long(o.hidden), long(o.experts),
                long(o.top_k), o.dtype.c_str());
    std::printf("%8s %10s %12s %12s %12s %10s %10s %8s\n", "tokens", "bytes", "dispatch(ms)", "combine(ms)",
                "algbw(GB/s)", "busbw", "rows/rank", "#wrong");
  }
  for (const int64_t tokens : o.tokens) {
    torch::manual_seed(1000 + world->rank());
    const auto topk = std::get<1>(torch::rand({tokens, o.experts}).topk(o.top_k, -1));  // distinct experts per token
    const auto grouping = model::group_by_expert(topk, o.experts);
    const auto routed_host = grouping.routed.cpu();
    const auto* routed = routed_host.data_ptr<int64_t>();
    const auto copies = topk.reshape({-1}).index_select(0, grouping.copy_order);  // expert of each grouped row
    // Payload: [source rank, source token, expert, rank...].
    auto payload = torch::full({copies.size(0), o.hidden}, double(ep.rank()), torch::kFloat32);
    payload.select(1, 1).copy_(grouping.token_of_copy.to(torch::kFloat32));
    payload.select(1, 2).copy_(copies.to(torch::kFloat32));
    const auto x = payload.to(device, dtype);

    std::vector<int64_t> send(n, 0), recv(n, 0);
    double t_dispatch = 0, t_combine = 0;
    int64_t wrong = 0;
    torch::Tensor received, returned;
    for (int it = 0; it < o.warmup + o.iters; ++it) {
      sync(device);
      ep.barrier();
      const double t0 = now_s();
      std::fill(send.begin(), send.end(), 0);
      for (int64_t e = 0; e < o.experts; ++e) send[e / per_rank] += routed[e];
      auto mine = torch::tensor(send, torch::kInt64), theirs = torch::empty({n}, torch::kInt64);
      ep.all_to_all(theirs, mine, std::vector<int64_t>(n, 1), std::vector<int64_t>(n, 1));
      for (int s = 0; s < n; ++s) recv[s] = theirs[s].item<int64_t>();
      received = torch::empty({std::accumulate(recv.begin(), recv.end(), int64_t{0}), o.hidden}, x.options());
      ep.all_to_all(received, x, recv, send);
      sync(device);
      const double t1 = now_s();
      returned = torch::empty_like(x);
      ep.all_to_all(returned, received, send, recv);
      sync(device);
      const double t2 = now_s();
      if (it >= o.warmup) {
        t_dispatch += t1 - t0;
        t_combine += t2 - t1;
      }
    }
    // #wrong: received rows must come from the chunk's source and target a local expert; the
    // combined rows must equal what was sent.
    const auto got = received.to(torch::kCPU, torch::kFloat32);
    int64_t row = 0;
    const auto first_local = topo.local_experts().first;
    for (int s = 0; s < n; ++s) {
      for (int64_t i = 0; i < recv[s]; ++i, ++row) {
        const auto src = got[row][0].item<float>(), e = got[row][2].item<float>();
        wrong += src != s || e < first_local || e >= first_local + per_rank;
      }
    }
    wrong += (returned != x).any(1).sum().item<int64_t>();
    auto total_wrong = torch::tensor({wrong}, torch::kInt64);
    if (cuda) total_wrong = total_wrong.to(device);
    world->all_reduce(total_wrong, ReduceOp::kSum);
    const int64_t bytes = x.numel() * x.element_size();
    const double d_ms = 1e3 * t_dispatch / o.iters, c_ms = 1e3 * t_combine / o.iters;
    const double algbw = bytes / (t_combine / o.iters) / 1e9, busbw = algbw * (n - 1) / std::max(n, 1);
    if (world->rank() == 0) {
      std::printf("%8ld %10ld %12.3f %12.3f %12.3f %10.3f %10ld %8ld\n", long(tokens), long(bytes), d_ms, c_ms, algbw,
                  busbw, long(x.size(0)), long(total_wrong.cpu().item<int64_t>()));
      std::printf("{\"bench\":\"dispatch\",\"world\":%d,\"ep_size\":%d,\"backend\":\"%s\",\"device\":\"%s\","
                  "\"tokens_per_rank\":%ld,\"hidden\":%ld,\"bytes\":%ld,\"dispatch_ms\":%.4f,\"combine_ms\":%.4f,"
                  "\"algbw_gbs\":%.4f,\"busbw_gbs\":%.4f,\"wrong\":%ld}\n",
                  world->size(), n, world->backend().c_str(), cuda ? "cuda" : "cpu", long(tokens), long(o.hidden),
                  long(bytes), d_ms, c_ms, algbw, busbw, long(total_wrong.cpu().item<int64_t>()));
      std::fflush(stdout);
    }
  }
  world.reset();
  finalize_mpi();
  return 0;
} catch (const std::exception& e) {
  log("error", e.what());
  finalize_mpi();
  return 1;
}
