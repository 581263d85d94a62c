// Expert parallelism equals one process: the EP MoE layer (outputs, input, gate and expert
// gradients) and 10 optimiser steps of the whole model, on 1, 2 and 4 ranks (ep = world, or
// ep 2 x edp 2 with --ep_size=2), in float64, including skewed routing and an empty batch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <string>

#include "common/check.h"
#include "common/log.h"
#include "common/step_regions.h"
#include "parallel/expert_dispatch.h"
#include "parallel/global_aux_loss.h"
#include "parallel/gradient_sync.h"
#include "parallel/mpi_communicator.h"
#include "tests/parallel/mpi_test_options.h"
#include "tests/support.h"

using namespace moe;
using namespace moe::parallel;
using moe::test::all_close;
using moe::test::grad_or_zeros;

namespace {

ParallelGroups groups_for(int64_t experts) {
  auto world = std::make_shared<MpiCommunicator>(MPI_COMM_WORLD, 120.0);
  const int ep = test::mpi_test_ep_size() > 0 ? test::mpi_test_ep_size() : world->size();
  return make_groups(world, ep, experts);
}

model::ModelConfig layer_config() { return test::moe_layer_config(16, 24, 4, 2, 1); }

torch::Tensor all_reduced(torch::Tensor t, Communicator& comm) {
  comm.all_reduce(t, ReduceOp::kSum);
  return t;
}

// Rows [first, first + count) of the global batch for each rank; count per rank from `rows`.
std::pair<int64_t, int64_t> my_rows(const std::vector<int64_t>& rows, int rank) {
  int64_t first = 0;
  for (int r = 0; r < rank; ++r) first += rows[r];
  return {first, rows[rank]};
}

// Full layer on the global batch vs the EP layer on this rank's rows.
// With --device=cuda the EP layer runs on the GPU (ranks share it through the MPI backend, which
// stages through host memory), the reference on the CPU.
// compute: how the EP ranks run their local experts; grouped runs in float32 (the CPU's
// _grouped_mm takes no float64), so its tolerances are a few float32 roundings.
void expect_layer_equal(const model::ModelConfig& cfg, const std::vector<int64_t>& rows, bool one_expert,
                        model::ExpertCompute compute = model::ExpertCompute::kAuto) {
  const torch::Device device(test::mpi_test_device());
  if (device.is_cuda() && !torch::cuda::is_available()) GTEST_SKIP() << "--device=cuda: no CUDA device visible";
  const bool f32 = compute == model::ExpertCompute::kGrouped;
  test::DtypeAndSeed guard(f32 ? caffe2::TypeMeta::Make<float>() : caffe2::TypeMeta::Make<double>());
  const double atol = f32 ? 1e-5 : 1e-12, rtol = f32 ? 1e-4 : 1e-10;
  auto g = groups_for(cfg.n_routed_experts);
  const auto& topo = g.topology;
  model::MoEFeedForward full(cfg);
  if (one_expert) {
    torch::NoGradGuard no_grad;
    full->gate->weight.normal_(0, 0.01);
    full->gate->weight[2].fill_(5.0);
  }
  model::MoEFeedForward local(cfg, topo.local_experts());
  {
    torch::NoGradGuard no_grad;
    const auto full_params = full->named_parameters();
    for (auto& p : local->named_parameters()) p.value().copy_(full_params[p.key()]);
  }
  local->set_executor(std::make_shared<ExpertParallelExecutor>(g.ep, topo, local->experts, compute));
  local->to(device);

  const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  const auto x = one_expert ? torch::rand({total, 5, cfg.hidden_size}) + 1.0 : torch::randn({total, 5, cfg.hidden_size});
  const auto grad_out = torch::randn(x.sizes());
  const auto [first, count] = my_rows(rows, topo.rank);

  auto x_full = x.clone().requires_grad_(true);
  full->train();
  const auto y_full = full(x_full).hidden;
  y_full.backward(grad_out);

  auto x_local = x.slice(0, first, first + count).to(device).requires_grad_(true);
  local->train();
  const auto y_local = local(x_local).hidden;
  y_local.backward(grad_out.slice(0, first, first + count).to(device));

  const auto where = "rank " + std::to_string(topo.rank) + " on " + device.str() + " (ep " +
                     std::to_string(topo.ep_size) + " x edp " + std::to_string(topo.edp_size) + ")";
  EXPECT_TRUE(all_close(y_local, y_full.slice(0, first, first + count), atol, rtol)) << "output, " << where;
  EXPECT_TRUE(all_close(x_local.grad(), x_full.grad().slice(0, first, first + count), atol, rtol))
      << "input gradient, " << where;
  const auto full_params = full->named_parameters();
  for (auto& p : local->named_parameters()) {
    // Loss = sum over the global batch: dense grads sum over the world, expert grads over edp.
    auto& comm = is_expert_parameter("layers.0.mlp." + p.key()) ? *g.edp : *g.world;
    EXPECT_TRUE(all_close(all_reduced(grad_or_zeros(p.value()).cpu(), comm), grad_or_zeros(full_params[p.key()]), atol, rtol))
        << "gradient of " << p.key() << ", " << where;
  }
}

std::vector<int64_t> rows_per_rank(int world, int64_t each) { return std::vector<int64_t>(world, each); }

}  // namespace

TEST(ExpertParallel, LayerEqualsSingleProcessRandomRouting) {
  int w = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  expect_layer_equal(layer_config(), rows_per_rank(w, 3), false);
}

// The EP ranks run their experts as grouped matrix products (device-side regrouping of the
// received rows, then _grouped_mm) against the single-process loop.
TEST(ExpertParallel, GroupedLayerEqualsSingleProcessLoop) {
  int w = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  auto cfg = layer_config();
  cfg.expert_compute = "loop";  // the single-process reference
  expect_layer_equal(cfg, rows_per_rank(w, 3), false, model::ExpertCompute::kGrouped);
  auto rows = rows_per_rank(w, 2);
  rows[0] = w == 1 ? 1 : 0;  // and a rank without tokens
  expect_layer_equal(cfg, rows, true, model::ExpertCompute::kGrouped);
}

TEST(ExpertParallel, LayerEqualsSingleProcessWhenEveryTokenPicksOneExpert) {
  int w = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  auto cfg = layer_config();
  cfg.num_experts_per_tok = 1;  // experts 0, 1, 3 and the ranks holding only them receive nothing
  expect_layer_equal(cfg, rows_per_rank(w, 2), true);
  expect_layer_equal(layer_config(), rows_per_rank(w, 2), true);
}

TEST(ExpertParallel, LayerEqualsSingleProcessWithAnEmptyRankBatch) {
  int w = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  auto rows = rows_per_rank(w, 2);
  rows[0] = 0;  // rank 0 has no tokens but still serves its experts
  if (w == 1) rows[0] = 1;
  expect_layer_equal(layer_config(), rows, false);
}

TEST(ExpertParallel, ExpertParametersAreShardedAcrossEp) {
  auto cfg = layer_config();
  cfg.vocab_size = 50;
  cfg.hidden_size = 32;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 4;
  cfg.max_position_embeddings = 16;
  auto g = groups_for(cfg.n_routed_experts);
  const auto lm = make_expert_parallel_model(cfg, g, 1);
  const model::CausalLM single(cfg);
  auto expert_numel = [](const model::CausalLM& m) {
    int64_t n = 0;
    for (const auto& p : m->named_parameters()) n += is_expert_parameter(p.key()) ? p.value().numel() : 0;
    return n;
  };
  std::ostringstream os;
  os << "expert parameters on this rank: " << expert_numel(lm) << " of " << expert_numel(single) << " (ep_size "
     << g.topology.ep_size << ")";
  log("test", os.str());
  EXPECT_EQ(expert_numel(lm) * g.topology.ep_size, expert_numel(single));
}

// The capacity limit applies to each rank's own batch: the EP layer with capacity, its copies
// sent as counted or padded to the capacity (every rank sending `capacity` rows per expert),
// equals the full layer run on the same rows, kept and dropped copies alike: output, input
// gradient, and every parameter's gradient summed over the ranks (experts' over their edp group
// on the EP side).
// With --device=cuda the EP layer runs on the GPU, the reference on the CPU (as expect_layer_equal).
void expect_capacity_layer_equal(bool pad_to_capacity) {
  const torch::Device device(test::mpi_test_device());
  if (device.is_cuda() && !torch::cuda::is_available()) GTEST_SKIP() << "--device=cuda: no CUDA device visible";
  test::DtypeAndSeed guard;
  auto cfg = layer_config();
  cfg.capacity_factor = 0.6;
  auto g = groups_for(cfg.n_routed_experts);
  model::MoEFeedForward full(cfg);
  model::MoEFeedForward local(cfg, g.topology.local_experts());
  {
    torch::NoGradGuard no_grad;
    full->gate->weight[1].add_(0.5);  // overflow expert 1
    const auto full_params = full->named_parameters();
    for (auto& p : local->named_parameters()) p.value().copy_(full_params[p.key()]);
  }
  local->set_executor(std::make_shared<ExpertParallelExecutor>(g.ep, g.topology, local->experts,
                                                               model::ExpertCompute::kAuto, pad_to_capacity));
  local->to(device);
  const auto x = torch::randn({g.world->size() * 3, 4, cfg.hidden_size});
  const auto mine = x.narrow(0, g.world->rank() * 3, 3);
  const auto upstream = torch::randn(mine.sizes());
  full->train();
  local->train();
  const auto x_full = mine.clone().requires_grad_(true), x_local = mine.to(device).requires_grad_(true);
  const auto want = full(x_full), got = local(x_local);
  want.hidden.backward(upstream);
  got.hidden.backward(upstream.to(device));
  const auto where =
      "rank " + std::to_string(g.world->rank()) + " on " + device.str() + (pad_to_capacity ? ", padded" : ", counted");
  EXPECT_TRUE(all_close(got.hidden, want.hidden, 1e-12, 1e-10)) << where;
  EXPECT_TRUE(all_close(x_local.grad(), x_full.grad(), 1e-12, 1e-10)) << "input gradient, " << where;
  EXPECT_TRUE(torch::equal(got.load.dropped.cpu(), want.load.dropped));
  EXPECT_GT(all_reduced(got.load.dropped.sum().cpu(), *g.world).item<int64_t>(), 0) << "the test must drop copies";
  std::map<std::string, torch::Tensor> full_sums;  // every rank sums the same parameters, in one order
  for (auto& p : full->named_parameters()) full_sums[p.key()] = all_reduced(grad_or_zeros(p.value()).clone(), *g.world);
  for (auto& p : local->named_parameters()) {
    auto& comm = is_expert_parameter("layers.0.mlp." + p.key()) ? *g.edp : *g.world;
    EXPECT_TRUE(
        all_close(all_reduced(grad_or_zeros(p.value()).cpu().clone(), comm), full_sums.at(p.key()), 1e-12, 1e-10))
        << "gradient of " << p.key() << ", " << where;
  }
}

TEST(ExpertParallel, LayerWithCapacityEqualsSingleProcessOnTheSameRows) { expect_capacity_layer_equal(false); }

TEST(ExpertParallel, LayerPaddedToCapacityEqualsSingleProcessOnTheSameRows) { expect_capacity_layer_equal(true); }

namespace {

// One log of what happens, in order: the payload all-to-alls' starts and waits (from the
// communicator) and the layer's regions (from the region recorder).
struct EventLog : RegionRecorder {
  std::vector<std::string> events;
  void begin(const char* name) override { events.push_back(std::string("begin ") + name); }
  void end(const char* name) override { events.push_back(std::string("end ") + name); }
};

class LoggedPending : public PendingCollective {
 public:
  LoggedPending(std::unique_ptr<PendingCollective> inner, EventLog& log) : inner_(std::move(inner)), log_(log) {}
  void wait() override {
    inner_->wait();
    log_.events.push_back("all_to_all done");
  }

 private:
  std::unique_ptr<PendingCollective> inner_;
  EventLog& log_;
};

// Forwards every collective; logs the payload all-to-alls (blocking, or started and finished).
class LoggingCommunicator : public Communicator {
 public:
  LoggingCommunicator(std::shared_ptr<Communicator> inner, EventLog& log) : inner_(std::move(inner)), log_(log) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  void all_reduce(at::Tensor& t, ReduceOp op) override { inner_->all_reduce(t, op); }
  void reduce_scatter(at::Tensor& out, const at::Tensor& in, ReduceOp op) override {
    inner_->reduce_scatter(out, in, op);
  }
  void all_to_all(at::Tensor& out, const at::Tensor& in, const std::vector<int64_t>& out_splits,
                  const std::vector<int64_t>& in_splits) override {
    log_.events.push_back(in.scalar_type() == torch::kLong ? "count exchange" : "all_to_all");
    inner_->all_to_all(out, in, out_splits, in_splits);
  }
  std::unique_ptr<PendingCollective> all_to_all_async(at::Tensor& out, const at::Tensor& in,
                                                      const std::vector<int64_t>& out_splits,
                                                      const std::vector<int64_t>& in_splits) override {
    log_.events.push_back("all_to_all started");
    return std::make_unique<LoggedPending>(inner_->all_to_all_async(out, in, out_splits, in_splits), log_);
  }
  void all_gather(at::Tensor& out, const at::Tensor& in) override { inner_->all_gather(out, in); }
  void broadcast(at::Tensor& t, int root) override { inner_->broadcast(t, root); }
  void barrier() override { inner_->barrier(); }
  std::shared_ptr<Communicator> split(int color, int key) override { return inner_->split(color, key); }
  [[noreturn]] void abort(const std::string& reason) override { inner_->abort(reason); }

 private:
  std::shared_ptr<Communicator> inner_;
  EventLog& log_;
};

}  // namespace

// The layer's shared experts run while its dispatch is in flight (started before them, finished
// after them); the combine's all-to-all follows the local experts. The output still equals the
// single-process layer's (the tests above).
TEST(ExpertParallel, SharedExpertsRunWhileTheDispatchIsInFlight) {
  test::DtypeAndSeed guard;
  const auto cfg = layer_config();
  ASSERT_GT(cfg.n_shared_experts, 0);
  auto g = groups_for(cfg.n_routed_experts);
  EventLog log;
  auto logged = std::make_shared<LoggingCommunicator>(g.ep, log);
  model::MoEFeedForward layer(cfg, g.topology.local_experts());
  layer->set_executor(std::make_shared<ExpertParallelExecutor>(logged, g.topology, layer->experts));
  layer->train();
  set_region_recorder(&log);
  const auto y = layer(torch::randn({2, 5, cfg.hidden_size})).hidden;
  set_region_recorder(nullptr);
  const std::vector<std::string> want = {
      "begin experts",        "all_to_all started", "end experts",  // the counts' exchange and the dispatch's start
      "begin shared_experts", "end shared_experts",                 // while the copies travel
      "begin experts",        "all_to_all done",    "all_to_all",  "end experts"};  // local experts, the combine
  std::vector<std::string> got;  // the events above, leaving out the other regions
  for (const auto& e : log.events) {
    if (std::find(want.begin(), want.end(), e) != want.end()) got.push_back(e);
  }
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got, want);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

// Padded to the capacity the ranks exchange no counts: each all-to-all has the same fixed size,
// the dispatch still in flight while the shared experts run. Counted, they do.
TEST(ExpertParallel, PaddedDispatchExchangesNoCounts) {
  test::DtypeAndSeed guard;
  auto cfg = layer_config();
  cfg.capacity_factor = 1.0;
  auto g = groups_for(cfg.n_routed_experts);
  EventLog log;
  model::MoEFeedForward layer(cfg, g.topology.local_experts());
  auto logged = std::make_shared<LoggingCommunicator>(g.ep, log);
  auto executor = std::make_shared<ExpertParallelExecutor>(logged, g.topology, layer->experts,
                                                           model::ExpertCompute::kAuto, /*pad_to_capacity=*/true);
  layer->set_executor(executor);
  layer->train();
  const auto x = torch::randn({2, 5, cfg.hidden_size}).requires_grad_(true);
  layer(x).hidden.sum().backward();
  const auto count_of = [&](const std::string& e) { return std::count(log.events.begin(), log.events.end(), e); };
  EXPECT_EQ(count_of("count exchange"), 0);
  EXPECT_EQ(count_of("all_to_all started"), 1);  // the dispatch
  EXPECT_EQ(count_of("all_to_all"), 3);          // the combine, and both backward
  const int64_t capacity = model::expert_capacity(1.0, 10, cfg.num_experts_per_tok, cfg.n_routed_experts);
  EXPECT_EQ(executor->last_received_rows(), capacity * cfg.n_routed_experts);  // per_rank x capacity from each of ep
  layer->set_executor(std::make_shared<ExpertParallelExecutor>(logged, g.topology, layer->experts));
  layer(x).hidden.sum().backward();
  EXPECT_EQ(count_of("count exchange"), 1);
}

namespace {

// 10 AdamW steps on each rank's share of the global batch equal one process on the whole of it.
// global_batch_aux: seq_aux off, the batch-level aux loss over the global batch on the ranks.
// overlap: gradient buckets (small, so there are many) start their all-reduce during backward.
// recompute: the EP ranks' training recomputation (e.g. "block": the all-to-alls run again in the backward).
void expect_ten_steps_equal_single_process(bool global_batch_aux, bool overlap = false,
                                           const std::string& recompute = "none") {
  test::DtypeAndSeed guard;
  auto cfg = test::small_moe_config(50);
  cfg.seq_aux = !global_batch_aux;
  const int64_t global_batch = 8, seq = 8, steps = 10;
  const uint64_t seed = 7;
  auto g = groups_for(cfg.n_routed_experts);
  const int w = g.world->size(), r = g.world->rank();
  ASSERT_EQ(global_batch % w, 0);
  const auto data = torch::randint(cfg.vocab_size, {steps, global_batch, seq + 1}, torch::kInt64);
  auto adamw = [](std::vector<torch::Tensor> params) {
    return torch::optim::AdamW(params, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  };

  // One process, global batch.
  torch::manual_seed(seed);
  model::CausalLM single(cfg);
  auto single_opt = adamw(single->parameters());
  std::vector<double> single_losses;
  for (int64_t s = 0; s < steps; ++s) {
    const auto batch = data[s];
    auto out = single(batch.narrow(1, 0, seq), batch.narrow(1, 1, seq));
    single_opt.zero_grad();
    out.loss.backward();
    single_opt.step();
    single_losses.push_back(out.loss.item<double>());
  }

  // Every rank its share of the global batch.
  auto lm = make_expert_parallel_model(cfg, g, seed);
  model::set_recompute(*lm, model::parse_recompute(recompute));
  if (global_batch_aux) use_global_batch_aux_loss(lm, g.world);
  GradientSync sync(lm, g, overlap ? 4096 : 32 << 20, overlap);
  auto opt = adamw(lm->parameters());
  const int64_t per_rank = global_batch / w;
  for (int64_t s = 0; s < steps; ++s) {
    const auto batch = data[s].narrow(0, r * per_rank, per_rank);
    auto out = lm(batch.narrow(1, 0, seq), batch.narrow(1, 1, seq));
    opt.zero_grad();
    sync.begin_backward(/*last=*/true);
    out.loss.backward();
    if (overlap && w > 1) {
      EXPECT_GT(sync.bucket_count(), 4u);
      EXPECT_EQ(sync.buckets_started(), sync.bucket_count()) << "every bucket starts during backward";
    } else if (overlap) {
      EXPECT_EQ(sync.buckets_started(), 0u) << "one rank: nothing to exchange, no bucket copies";
    }
    sync.sync();
    opt.step();
    auto loss = out.loss.detach().clone();
    g.world->all_reduce(loss, ReduceOp::kAverage);
    EXPECT_NEAR(loss.item<double>(), single_losses[s], 1e-10) << "step " << s << " rank " << r;
  }
  const auto final_single = single->named_parameters();
  for (const auto& p : lm->named_parameters()) {
    EXPECT_TRUE(all_close(p.value(), final_single[p.key()], 1e-9, 1e-7)) << p.key() << " rank " << r;
  }
}

}  // namespace

TEST(ExpertParallel, TenOptimizerStepsEqualSingleProcess) { expect_ten_steps_equal_single_process(false); }

// Whole blocks recomputed on the ranks (their dispatch and combine run again in the backward, and
// with the global-batch aux loss its all-reduce of the counts), overlapped gradient sync.
TEST(ExpertParallel, TenOptimizerStepsWithRecomputedBlocksEqualSingleProcess) {
  expect_ten_steps_equal_single_process(false, true, "block");
  expect_ten_steps_equal_single_process(true, false, "block");
}

TEST(ExpertParallel, GlobalBatchAuxLossEqualsSingleProcessBatchAuxLoss) { expect_ten_steps_equal_single_process(true); }

TEST(ExpertParallel, OverlappedGradientSyncEqualsSingleProcess) {
  expect_ten_steps_equal_single_process(false, /*overlap=*/true);
}
