// moe-bench-scaling: how training throughput grows with ranks and the expert-parallel size, and
// where the step's time goes. Under mpirun (the world is the mpirun size; bench/bench_scaling.sh
// sweeps world sizes and draws the report). Per ep_size it runs real training steps of our
// components (the EP model, gradient sync, global-norm clipping, fused AdamW) on random tokens,
// warm-up first, then reports: step time (median, min, max over steps and ranks: a step lasts as
// long as its slowest rank), tokens/s in all and per rank, the breakdown of the step, the load
// imbalance over experts and ranks, and the collectives alone at the model's message sizes
// (nccl-tests style: time, algorithm and bus bandwidth, #wrong). A table on rank 0 and one JSON
// line per configuration (--json appends them to a file).
//
// The breakdown (milliseconds per step, averaged over steps and ranks):
//   all_to_all        dispatch and combine payloads, forward and backward (timed communicator)
//   wait              the per-expert count exchange before each dispatch: tiny messages, so its
//                     time is the wait for the slowest rank (load imbalance, host synchronisation)
//   grad_allreduce    gradient all-reduce (reduce-scatter when sharded) not hidden behind backward
//   optimizer         global gradient norm (one all-reduce), clipping, AdamW (sharded: of this
//                     rank's blocks, then the all-gather of the updated weights)
//   expert_compute    routed experts: forward measured (the experts region less its communication),
//                     backward in the forward's proportion of the backward compute
//   dense_compute     the rest: attention, norms, gate, shared experts, embedding, loss
//   grad_allreduce_alone, grad_allreduce_overlapped: the same buckets all-reduced alone, and how
//                     much of that the step did not expose (with --overlap 1)
// With --shard_state 1 (or both) the optimiser is the distributed one (optim.shard_state); every
// row also reports the training state per rank (weights, gradients, moments) against the formula
// held between steps (16 B per parameter replicated; 8 + 8/d sharded, 4 + 8/d with --shard_grads 1,
// d = the parameter's replicas), the peak memory of the timed steps and the optimiser's share of
// the step; the optimizer column is then the update of this rank's blocks, weight_allgather the
// all-gather of the updated weights after it.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/log.h"
#include "common/step_regions.h"
#include "bench/bench_stats.h"
#include "bench/collective_bench.h"
#include "launch/cli.h"
#include "parallel/expert_dispatch.h"
#include "parallel/gradient_sync.h"
#include "parallel/mpi_communicator.h"
#include "parallel/timed_communicator.h"
#include "parallel/topology.h"
#include "trainer/config_cli.h"
#include "trainer/device.h"
#include "trainer/mfu.h"
#include "trainer/optim/training_optimizer.h"
#include "trainer/peak_memory.h"

namespace po = boost::program_options;
using namespace moe;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string config = "configs/tiny.ini", mode = "weak", backend = "auto", device = "auto", json, label;
  std::vector<int> ep_sizes;
  int64_t tokens_per_rank = 2048, global_tokens = 0, steps = 10, warmup = 3, collective_iters = 10;
  int overlap = -1;  // -1: the config's parallel.overlap_grad_sync
  std::string shard_state = "0";  // 0 | 1 | both
  int shard_grads = 0;
  int64_t topk_group = 0;  // > 0: each ep > 1 also runs with n_group = ep (a group per rank), this topk_group
};

Options parse(int argc, char** argv) {
  Options o;
  po::options_description desc(
      "moe-bench-scaling: training throughput against ranks and ep_size, with the step's breakdown\n"
      "  mpirun -np 4 build/bin/moe-bench-scaling --config configs/tiny.ini --ep_sizes 1 2 4\n"
      "  (bench/bench_scaling.sh sweeps world sizes and draws the report)");
  desc.add_options()("help", "show this help")
      ("config", po::value(&o.config)->default_value(o.config), "model (and data.seq_len, optim) from this INI")
      ("ep_sizes", po::value(&o.ep_sizes)->multitoken(), "expert-parallel sizes to run (default: 1 and the world)")
      ("mode", po::value(&o.mode)->default_value(o.mode), "weak (fixed tokens per rank) | strong (fixed global batch)")
      ("tokens_per_rank", po::value(&o.tokens_per_rank)->default_value(o.tokens_per_rank), "weak: tokens per rank per step")
      ("global_tokens", po::value(&o.global_tokens)->default_value(0), "strong: tokens per step in all (0 = 4 x tokens_per_rank)")
      ("steps", po::value(&o.steps)->default_value(o.steps), "timed steps per configuration")
      ("warmup", po::value(&o.warmup)->default_value(o.warmup), "untimed steps first")
      ("collective_iters", po::value(&o.collective_iters)->default_value(o.collective_iters), "iterations of each collective alone")
      ("overlap", po::value(&o.overlap)->default_value(o.overlap), "gradient sync during backward: 1, 0, -1 = the config's")
      ("topk_group", po::value(&o.topk_group)->default_value(o.topk_group),
       "> 0: each ep_size > 1 runs again with group-limited routing, model.n_group = ep_size (a group per rank) "
       "and this model.topk_group, to compare the all-to-all bytes leaving each rank")
      ("shard_state", po::value(&o.shard_state)->default_value(o.shard_state),
       "the distributed optimiser (optim.shard_state): 0, 1, or both (each layout twice)")
      ("shard_grads", po::value(&o.shard_grads)->default_value(o.shard_grads),
       "with sharding: 1 frees each full gradient once reduce-scattered (optim.shard_grads)")
      ("backend", po::value(&o.backend)->default_value(o.backend), "auto | mpi | nccl")
      ("device", po::value(&o.device)->default_value(o.device), "auto | cpu | cuda")
      ("json", po::value(&o.json), "append one JSON line per configuration to this file (rank 0)")
      ("label", po::value(&o.label), "a name for this machine in the JSON lines");
  launch::parse_or_exit(argc, argv, desc);
  MOE_CHECK(o.mode == "weak" || o.mode == "strong", "--mode '", o.mode, "' is not weak or strong");
  MOE_CHECK(o.shard_state == "0" || o.shard_state == "1" || o.shard_state == "both", "--shard_state '",
            o.shard_state, "' is not 0, 1 or both");
  MOE_CHECK(o.steps > 0 && o.warmup >= 0 && o.collective_iters > 0, "--steps, --collective_iters must be positive");
  return o;
}

using bench::mean;
using bench::median;
using bench::seconds_since;
using bench::bench_all_reduce;
using bench::bench_all_to_all;

// Wall-clock time of the model's forward regions (CPU; on GPUs after a synchronisation).
class WallClockRegions : public RegionRecorder {
 public:
  explicit WallClockRegions(std::function<void()> synchronize) : synchronize_(std::move(synchronize)) {}
  void begin(const char* name) override {
    synchronize_();
    open_[name] = Clock::now();
  }
  void end(const char* name) override {
    synchronize_();
    totals_[name] += seconds_since(open_.at(name));
  }
  std::map<std::string, double> take() { return std::exchange(totals_, {}); }

 private:
  std::function<void()> synchronize_;
  std::map<std::string, Clock::time_point> open_;
  std::map<std::string, double> totals_;
};

// Per-step values of this rank, then gathered over the ranks.
struct StepTimes {
  double step = 0, forward = 0, backward = 0, grad_sync = 0, update = 0;
  double weight_allgather = 0;  // of the update (sharded): the all-gathers of the updated weights
  double a2a_fwd = 0, counts_fwd = 0, a2a_bwd = 0, counts_bwd = 0, allreduce_bwd = 0, experts_region = 0;
  double a2a_leaving_bytes = 0;  // dispatch and combine rows to other ranks, forward and backward
};

std::vector<double> gather(parallel::Communicator& world, double value) {
  auto mine = torch::tensor({value}, torch::kFloat64);
  auto all = torch::empty({world.size()}, torch::kFloat64);
  world.all_gather(all, mine);
  return std::vector<double>(all.data_ptr<double>(), all.data_ptr<double>() + world.size());
}

// Bytes of the gradients each group all-reduces: dense over the world, experts over edp.
std::pair<int64_t, int64_t> gradient_bytes(model::CausalLM& lm) {
  int64_t dense = 0, expert = 0;
  for (const auto& p : lm->named_parameters()) {
    if (!p.value().requires_grad()) continue;  // the routing bias: never synchronised
    (parallel::is_expert_parameter(p.key()) ? expert : dense) += p.value().numel() * 4;
  }
  return {dense, expert};
}

nlohmann::ordered_json run_layout(const Options& o, const trainer::TrainConfig& config, int ep,
                                  const std::shared_ptr<parallel::TimedCommunicator>& world, const torch::Device& device) {
  const auto synchronize = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  const auto& m = config.model;
  const int n = world->size();
  const auto groups = parallel::make_groups(world, ep, m.use_moe ? m.n_routed_experts : ep);
  const auto& topo = groups.topology;
  auto lm = parallel::make_expert_parallel_model(m, groups, config.train.seed, config.parallel.pad_to_capacity);
  lm->to(device);
  lm->train();
  const bool overlap = o.overlap < 0 ? config.parallel.overlap_grad_sync : o.overlap == 1;
  const int64_t bucket_bytes = int64_t(config.parallel.bucket_mb * (1 << 20));
  parallel::GradientSync sync(lm, groups, bucket_bytes, overlap, trainer::gradient_reduction(config.optim));
  auto optimizer = trainer::make_training_optimizer(lm, sync, config.optim);
  const bool bf16 = device.is_cuda();

  const int64_t seq = config.data.seq_len;
  const int64_t global = o.global_tokens > 0 ? o.global_tokens : 4 * o.tokens_per_rank;
  const int64_t tokens = o.mode == "weak" ? o.tokens_per_rank : global / n;
  MOE_CHECK(tokens >= seq && tokens % seq == 0, "tokens per rank ", tokens, " is not a positive multiple of seq_len ",
            seq, o.mode == "strong" ? " (--global_tokens / ranks)" : " (--tokens_per_rank)");
  const int64_t batch = tokens / seq;
  torch::manual_seed(1000 + world->rank());
  const auto ids = torch::randint(m.vocab_size, {batch, seq + 1}, torch::TensorOptions(torch::kInt64).device(device));
  const auto x = ids.narrow(1, 0, seq), y = ids.narrow(1, 1, seq);

  WallClockRegions regions(synchronize);
  std::vector<StepTimes> steps;
  torch::Tensor routed;  // tokens routed to each expert, over the timed steps and layers (this rank's)
  for (int64_t s = 0; s < o.warmup + o.steps; ++s) {
    const bool timed = s >= o.warmup;
    if (s == o.warmup) trainer::reset_peak_memory(device);
    StepTimes st;
    optimizer->zero_grad();
    world->barrier();  // steps start together: the time of a step is that of its slowest rank
    synchronize();
    world->reset();
    const auto t0 = Clock::now();
    set_region_recorder(&regions);
    model::CausalLMOutput out;
    {
      trainer::AutocastScope autocast(bf16);
      out = lm(x, y);
    }
    set_region_recorder(nullptr);
    synchronize();
    st.forward = seconds_since(t0);
    const auto fwd_comm = world->times();
    const auto t1 = Clock::now();
    sync.begin_backward(true);
    out.loss.backward();
    synchronize();
    st.backward = seconds_since(t1);
    const auto bwd_comm = world->times();
    const auto t2 = Clock::now();
    sync.sync();
    synchronize();
    st.grad_sync = seconds_since(t2);
    const auto t3 = Clock::now();
    const double gathers_before = world->times().other_s;
    optimizer->update(config.optim.lr);
    synchronize();
    st.weight_allgather = world->times().other_s - gathers_before;
    st.update = seconds_since(t3) - st.weight_allgather;
    st.step = seconds_since(t0);
    st.a2a_fwd = fwd_comm.all_to_all_s;
    st.counts_fwd = fwd_comm.count_exchange_s;
    st.a2a_bwd = bwd_comm.all_to_all_s - fwd_comm.all_to_all_s;
    st.counts_bwd = bwd_comm.count_exchange_s - fwd_comm.count_exchange_s;
    st.allreduce_bwd = bwd_comm.all_reduce_s - fwd_comm.all_reduce_s;
    st.a2a_leaving_bytes = double(bwd_comm.all_to_all_remote_bytes);
    const auto by_region = regions.take();
    st.experts_region = by_region.count("experts") ? by_region.at("experts") : 0;
    if (!timed) continue;
    steps.push_back(st);
    for (const auto& layer : out.expert_load) {
      routed = routed.defined() ? routed + layer.routed.cpu() : layer.routed.cpu().clone();
    }
  }

  const auto peak = trainer::peak_memory(device);
  const auto state = optimizer->state_bytes();  // after a step: the moments exist, the gradients as kept

  // Step time: per step the slowest rank; then median, min, max over steps.
  std::vector<double> step_max, step_spread;
  for (const auto& st : steps) {
    const auto all = gather(*world, st.step);
    step_max.push_back(*std::max_element(all.begin(), all.end()));
    step_spread.push_back(*std::max_element(all.begin(), all.end()) / *std::min_element(all.begin(), all.end()));
  }
  const double step_s = median(step_max);
  const auto rank_mean = [&](auto field) {
    std::vector<double> v;
    for (const auto& st : steps) v.push_back(field(st));
    return mean(gather(*world, mean(v)));
  };
  const double fwd = rank_mean([](const StepTimes& s) { return s.forward; });
  const double bwd = rank_mean([](const StepTimes& s) { return s.backward; });
  const double a2a = rank_mean([](const StepTimes& s) { return s.a2a_fwd + s.a2a_bwd; });
  const double wait = rank_mean([](const StepTimes& s) { return s.counts_fwd + s.counts_bwd; });
  const double grad_exposed = rank_mean([](const StepTimes& s) { return s.grad_sync + s.allreduce_bwd; });
  const double update = rank_mean([](const StepTimes& s) { return s.update; });
  const double weight_allgather = rank_mean([](const StepTimes& s) { return s.weight_allgather; });
  const double leaving = rank_mean([](const StepTimes& s) { return s.a2a_leaving_bytes; });
  const double fwd_comm = rank_mean([](const StepTimes& s) { return s.a2a_fwd + s.counts_fwd; });
  const double bwd_comm = rank_mean([](const StepTimes& s) { return s.a2a_bwd + s.counts_bwd + s.allreduce_bwd; });
  const double experts_fwd = std::max(0.0, rank_mean([](const StepTimes& s) { return s.experts_region; }) - fwd_comm);
  const double fwd_compute = std::max(1e-12, fwd - fwd_comm), bwd_compute = std::max(0.0, bwd - bwd_comm);
  const double expert_compute = experts_fwd + bwd_compute * experts_fwd / fwd_compute;
  const double dense_compute = fwd_compute + bwd_compute - expert_compute;

  // Load: copies routed to each expert over all ranks; each EP rank computes its experts' share.
  double expert_imbalance = 1, rank_imbalance = 1;
  if (routed.defined() && m.use_moe) {
    auto total = routed.to(torch::kFloat64);
    world->all_reduce(total, parallel::ReduceOp::kSum);
    expert_imbalance = (total.max() / total.mean()).item<double>();
    const auto per_rank = total.view({ep, -1}).sum(1);
    rank_imbalance = (per_rank.max() / per_rank.mean()).item<double>();
  }

  // The collectives alone, at this model's sizes: the dispatch of one layer (tokens x top-k rows
  // of hidden floats, the same again for combine), the gradient buckets.
  nlohmann::ordered_json collectives = nlohmann::ordered_json::array();
  const auto [dense_bytes, expert_bytes] = gradient_bytes(lm);
  double grad_alone = 0;
  if (n > 1) {
    if (m.use_moe && ep > 1) {
      const int64_t dispatch_bytes = tokens * m.num_experts_per_tok * m.hidden_size * 4;
      collectives.push_back(bench_all_to_all(*groups.ep, dispatch_bytes, o.collective_iters));
      collectives.push_back(bench_all_to_all(*groups.ep, dispatch_bytes / 16, o.collective_iters));  // latency
    }
    collectives.push_back(bench_all_reduce(*groups.world, 64 << 10, o.collective_iters));  // latency
    for (const auto& [bytes, comm] : {std::pair{dense_bytes, groups.world}, std::pair{expert_bytes, groups.edp}}) {
      if (bytes == 0 || comm->size() == 1) continue;
      for (int64_t left = bytes; left > 0; left -= bucket_bytes) {  // the buckets GradientSync makes
        auto r = bench_all_reduce(*comm, std::min(left, bucket_bytes), o.collective_iters);
        grad_alone += r["time_us"].get<double>() / 1e6;
        if (left == bytes) collectives.push_back(r);
      }
    }
  }
  grad_alone = mean(gather(*world, grad_alone));

  // The formula, for the state held between steps: 4 B of weight per parameter, 4 B of gradient
  // (none with shard_grads) and 8 B of moments per trained parameter, the moments divided by its
  // replicas d (world for dense, edp for experts) when sharded.
  const double dense_params = double(dense_bytes) / 4, expert_params = double(expert_bytes) / 4;
  const double trained = dense_params + expert_params;
  const double per_replica = dense_params / n + expert_params / topo.edp_size;
  const double weights = double(state.weights);
  const bool sharded = config.optim.shard_state, freed = sharded && config.optim.shard_grads;
  const double formula = weights + (freed ? 0 : 4 * trained) + 8 * (sharded ? per_replica : trained);
  auto max_over_ranks = [&](double v) {
    const auto all = gather(*world, v);
    return *std::max_element(all.begin(), all.end());
  };

  const double tokens_per_s = double(tokens) * n / step_s;
  const auto ms = [](double s) { return s * 1e3; };
  nlohmann::ordered_json j;
  j["type"] = "scaling";
  j["label"] = o.label;
  j["config"] = o.config;
  j["device"] = device.str();
  j["backend"] = world->backend();
  j["world"] = n;
  j["ep"] = ep;
  j["edp"] = topo.edp_size;
  j["mode"] = o.mode;
  j["overlap"] = overlap;
  j["tokens_per_rank"] = tokens;
  j["seq_len"] = seq;
  j["hidden_size"] = m.hidden_size;
  j["layers"] = m.num_hidden_layers;
  j["experts"] = m.use_moe ? m.n_routed_experts : 0;
  j["top_k"] = m.use_moe ? m.num_experts_per_tok : 0;
  j["n_group"] = m.use_moe ? m.n_group : 0;
  j["topk_group"] = m.use_moe ? m.topk_group : 0;
  j["params_total"] = trainer::total_parameters(m);
  j["params_active"] = trainer::active_parameters(m);
  j["flops_per_token"] = trainer::training_flops_per_token(m, seq);
  j["dense_grad_bytes"] = dense_bytes;
  j["expert_grad_bytes_per_rank"] = expert_bytes;
  j["step_ms"] = {{"median", ms(step_s)},
                  {"min", ms(*std::min_element(step_max.begin(), step_max.end()))},
                  {"max", ms(*std::max_element(step_max.begin(), step_max.end()))}};
  j["tokens_per_s"] = tokens_per_s;
  j["tokens_per_s_per_rank"] = tokens_per_s / n;
  j["breakdown_ms"] = {{"dense_compute", ms(dense_compute)},   {"expert_compute", ms(expert_compute)},
                       {"all_to_all", ms(a2a)},                {"wait", ms(wait)},
                       {"grad_allreduce", ms(grad_exposed)},   {"optimizer", ms(update)},
                       {"weight_allgather", ms(weight_allgather)},
                       {"grad_allreduce_alone", ms(grad_alone)},
                       {"grad_allreduce_overlapped", ms(std::max(0.0, grad_alone - grad_exposed))}};
  j["imbalance"] = {{"experts_max_over_mean", expert_imbalance},
                    {"ep_ranks_max_over_mean", rank_imbalance},
                    {"step_time_max_over_min", median(step_spread)}};
  j["a2a_bytes_leaving_per_rank"] = leaving;  // per step, mean over ranks
  j["collectives"] = collectives;
  j["shard_state"] = sharded;
  j["shard_grads"] = freed;
  j["state_bytes_per_rank"] = {{"weights", max_over_ranks(double(state.weights))},
                               {"gradients", max_over_ranks(double(state.gradients))},
                               {"moments", max_over_ranks(double(state.moments))},
                               {"total", max_over_ranks(double(state.total()))},
                               {"formula", max_over_ranks(formula)}};
  j["peak_memory_gib_per_rank"] = max_over_ranks(peak.allocated_gib);
  j["optimizer_share"] = update / step_s;
  return j;
}

void print_row(const nlohmann::ordered_json& j) {
  const auto& b = j["breakdown_ms"];
  std::printf("%5d %3d %4d %8ld %9.1f %9.1f %9.1f %11.0f %9.0f | %7.1f %7.1f %7.1f %6.1f %7.1f %6.1f | %5.2f %5.2f\n",
              j["world"].get<int>(), j["ep"].get<int>(), j["edp"].get<int>(), long(j["tokens_per_rank"].get<int64_t>()),
              j["step_ms"]["median"].get<double>(), j["step_ms"]["min"].get<double>(),
              j["step_ms"]["max"].get<double>(), j["tokens_per_s"].get<double>(),
              j["tokens_per_s_per_rank"].get<double>(), b["dense_compute"].get<double>(),
              b["expert_compute"].get<double>(), b["all_to_all"].get<double>(), b["wait"].get<double>(),
              b["grad_allreduce"].get<double>(), b["optimizer"].get<double>(),
              j["imbalance"]["experts_max_over_mean"].get<double>(), j["imbalance"]["ep_ranks_max_over_mean"].get<double>());
  const auto& state = j["state_bytes_per_rank"];
  std::printf("      %s: state per rank %.2f MB (weights %.2f, gradients %.2f, moments %.2f; formula %.2f), "
              "peak %.3f GiB, optimizer %.1f%% of the step, weight all-gather %.1f ms\n",
              j["shard_state"].get<bool>() ? (j["shard_grads"].get<bool>() ? "sharded+grads" : "sharded") : "replicated",
              state["total"].get<double>() / 1e6, state["weights"].get<double>() / 1e6,
              state["gradients"].get<double>() / 1e6, state["moments"].get<double>() / 1e6,
              state["formula"].get<double>() / 1e6, j["peak_memory_gib_per_rank"].get<double>(),
              100 * j["optimizer_share"].get<double>(), b["weight_allgather"].get<double>());
  if (j["ep"].get<int>() > 1) {
    std::printf("      all-to-all leaving each rank: %.3f MB per step (n_group %ld, topk_group %ld)\n",
                j["a2a_bytes_leaving_per_rank"].get<double>() / 1e6, long(j["n_group"].get<int64_t>()),
                long(j["topk_group"].get<int64_t>()));
  }
  for (const auto& c : j["collectives"]) {
    std::printf("      %-10s over %d ranks: %10ld B  %9.1f us  algbw %7.3f GB/s  busbw %7.3f GB/s  #wrong %ld\n",
                c["op"].get<std::string>().c_str(), c["ranks"].get<int>(), long(c["bytes"].get<int64_t>()),
                c["time_us"].get<double>(), c["algbw_gbs"].get<double>(), c["busbw_gbs"].get<double>(),
                long(c["wrong"].get<int64_t>()));
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) try {
  const auto o = parse(argc, argv);
  parallel::ensure_mpi_initialized();
  auto config = trainer::load_config_file(o.config);
  const auto device = trainer::choose_device(o.device);
  auto inner = parallel::make_communicator(o.backend);
  auto world = std::make_shared<parallel::TimedCommunicator>(inner, std::make_shared<parallel::CommTimes>(),
                                                             device.is_cuda() ? std::function<void()>([] {
                                                               torch::cuda::synchronize();
                                                             })
                                                                              : std::function<void()>());
  const int n = world->size();
  auto eps = o.ep_sizes;
  if (eps.empty()) eps = n > 1 ? std::vector<int>{1, n} : std::vector<int>{1};
  const int64_t experts = config.model.use_moe ? config.model.n_routed_experts : 1;
  if (world->rank() == 0) {
    std::printf("moe-bench-scaling: %s, %d ranks (%s, %s), %s scaling, %ld timed steps after %ld warm-up\n",
                o.config.c_str(), n, world->backend().c_str(), device.str().c_str(), o.mode.c_str(), long(o.steps),
                long(o.warmup));
    std::printf("world  ep  edp  tok/rank  step_ms    min_ms    max_ms       tok/s  tok/s/rk |   dense  expert  "
                "a2a     wait  gradAR    optim | imbE  imbR\n");
  }
  std::ofstream json;
  if (world->rank() == 0 && !o.json.empty()) {
    json.open(o.json, std::ios::app);
    MOE_CHECK(json.good(), "cannot append to --json '", o.json, "'");
  }
  for (const int ep : eps) {
    if (ep < 1 || n % ep != 0 || experts % ep != 0) {
      log_rank0("bench", "ep_size " + std::to_string(ep) + " skipped: it must divide the world (" + std::to_string(n) +
                             ") and the experts (" + std::to_string(experts) + ")");
      continue;
    }
    std::vector<trainer::TrainConfig> variants{config};
    if (o.topk_group > 0 && ep > 1 && config.model.use_moe) {  // a group per rank: copies reach <= topk_group ranks
      auto grouped = config;
      grouped.model.n_group = ep;
      grouped.model.topk_group = o.topk_group;
      grouped.model.validate();
      variants.push_back(grouped);
    }
    if (o.shard_state != "0") {  // the same layouts with the distributed optimiser (or only with it)
      std::vector<trainer::TrainConfig> sharded;
      for (auto v : variants) {
        v.optim.shard_state = true;
        v.optim.shard_grads = o.shard_grads == 1;
        sharded.push_back(v);
      }
      if (o.shard_state == "1") variants.clear();
      variants.insert(variants.end(), sharded.begin(), sharded.end());
    }
    for (const auto& variant : variants) {
      log_rank0("bench", "world " + std::to_string(n) + ", ep " + std::to_string(ep) + ", topk_group " +
                             std::to_string(variant.model.topk_group) + " of " + std::to_string(variant.model.n_group) +
                             " groups" + (variant.optim.shard_state ? ", sharded optimizer" : "") + ": running");
      const auto j = run_layout(o, variant, ep, world, device);
      if (world->rank() != 0) continue;
      print_row(j);
      std::cout << j.dump() << "\n";
      if (json.is_open()) json << j.dump() << "\n" << std::flush;
    }
  }
  world.reset();
  inner.reset();
  parallel::finalize_mpi();
  return 0;
} catch (const std::exception& e) {
  log("error", e.what());
  parallel::finalize_mpi();
  return 1;
}
