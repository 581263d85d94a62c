// The distributed optimiser (optim.shard_state) under mpiexec (1, 2, 4 ranks), on every expert
// layout the world allows (ep 1: experts replicated on all ranks; ep = world; on 4 ranks ep 2 x edp 2):
//  - 20 steps sharded equal 20 steps replicated to fp32 reduction-order tolerance (weights, losses,
//    gradient norms), with gradient accumulation, overlapped sync, small buckets (parameters
//    straddle the ranks' blocks) and clipping active; also with the full gradients freed (ZeRO-2);
//  - each rank's state between steps is the size the formula says (bytes, not timings): weights
//    4 B per parameter, gradients 4 B (none with shard_grads), moments 8/d B (4/d in bf16; + padding);
//  - bf16 moments (optim.state_dtype) train close to fp32 ones;
//  - resharding through checkpoints: sharded on the world -> replicated in one process -> sharded
//    on 2 ranks ends with the uninterrupted run's moments, tensor by tensor.
// With --device=cuda the runs train on the GPU in fp32 (ranks share it through the MPI backend):
// the fused kernel on the blocks' views, the buffers on the device (skips without a GPU).
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <set>

#include "parallel/gradient_sync.h"
#include "tests/parallel/mpi_test_options.h"
#include "tests/support.h"
#include "tests/trainer/temp_dir.h"
#include "tests/trainer/training_fixture.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/trainer.h"

using namespace moe;
using namespace moe::trainer;
using namespace moe::test;

namespace {

// The expert-parallel sizes this world can run: 1, the world, and 2 on 4 ranks (ep 2 x edp 2).
std::vector<int> layouts(int world) {
  std::set<int> eps = {1, world};
  if (world == 4) eps.insert(2);
  return {eps.begin(), eps.end()};
}

parallel::ParallelGroups groups_of(std::shared_ptr<parallel::Communicator> comm, int ep) {
  return parallel::make_groups(std::move(comm), ep, 4);
}

// A global batch of 4 sequences per micro-batch on any world (1, 2 or 4 ranks), 2 micro-batches.
TrainConfig run_config(const std::string& dir, const std::string& run, int world) {
  auto c = tiny_config(dir);
  c.train.out_dir = dir + "/" + run;
  c.train.steps = 20;
  c.train.micro_batch = 4 / world;
  c.train.grad_accum = 2;
  c.train.log_every = 1;
  c.parallel.overlap_grad_sync = true;
  c.parallel.bucket_mb = 0.01;  // many buckets, parameters cut across the ranks' blocks
  c.optim.grad_clip = 0.05;     // active: the norm from the blocks must be the whole model's
  c.model.bias_update_rate = 1e-2;
  c.train.device = mpi_test_device();
  c.train.dtype = "fp32";  // on a GPU too: the comparisons are at fp32 tolerance
  return c;
}

// Every test: the MPI world, and a run directory rank 0 made, with the dataset, that every rank sees.
class ShardedOptimizer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(mpi_test_device()) == "cuda" && !torch::cuda::is_available()) {
      GTEST_SKIP() << "--device=cuda: no CUDA device visible";
    }
    dir = shared_dir_with_dataset(*comm, tmp.path());
  }
  std::shared_ptr<parallel::Communicator> comm = mpi_world();
  TempDir tmp{"moe_sharded_test"};
  std::string dir;
};

std::string layout_name(int world, int ep) {
  return std::to_string(world) + " ranks, ep " + std::to_string(ep) + " x edp " + std::to_string(world / ep);
}

// Elements of this rank's trained parameters: dense ones, and those of its experts.
std::pair<int64_t, int64_t> trained_elements(model::CausalLM& lm) {
  int64_t dense = 0, expert = 0;
  for (const auto& p : lm->named_parameters()) {
    if (!p.value().requires_grad()) continue;
    (parallel::is_expert_parameter(p.key()) ? expert : dense) += p.value().numel();
  }
  return {dense, expert};
}

}  // namespace

TEST_F(ShardedOptimizer, EqualsReplicatedOverTwentySteps) {
  const int w = comm->size();
  for (const int ep : layouts(w)) {
    const auto what = layout_name(w, ep);
    const auto tag = "ep" + std::to_string(ep);
    Trainer replicated(run_config(dir, "replicated_" + tag, w), groups_of(comm, ep));
    replicated.run();
    const auto want = weights(replicated.model());
    for (const bool free_grads : {false, true}) {
      const std::string run = (free_grads ? "zero2_" : "sharded_") + tag;
      auto cfg = run_config(dir, run, w);
      cfg.optim.shard_state = true;
      cfg.optim.shard_grads = free_grads;
      Trainer sharded(cfg, groups_of(comm, ep));
      EXPECT_EQ(sharded.optimizer().kind(), w > 1 ? "sharded" : "replicated");  // one rank: nothing to split
      sharded.run();
      for (auto& [name, value] : weights(sharded.model())) {
        EXPECT_TRUE(all_close(value, want.at(name), 1e-6, 1e-4)) << what << " " << run << ": " << name;
      }
      if (comm->rank() == 0) {
        for (const char* field : {"loss", "grad_norm"}) {
          const auto a = logged(dir + "/replicated_" + tag, "train", field), b = logged(dir + "/" + run, "train", field);
          ASSERT_EQ(b.size(), 20u) << what;
          for (const auto& [step, value] : b) {
            EXPECT_NEAR(value, a.at(step), 1e-5 * std::abs(a.at(step))) << what << " " << run << " " << field
                                                                        << " at step " << step;
          }
        }
      }
    }
  }
  comm->barrier();
}

TEST_F(ShardedOptimizer, StatePerRankIsTheFormulasSize) {
  const int w = comm->size();
  for (const int ep : layouts(w)) {
    const auto what = layout_name(w, ep);
    const int edp = w / ep;
    for (const std::string mode : {"replicated", "sharded", "zero2", "bf16"}) {
      auto cfg = run_config(dir, mode + std::to_string(ep), w);
      cfg.train.steps = 2;
      cfg.optim.shard_state = mode != "replicated";
      cfg.optim.shard_grads = mode == "zero2";
      if (mode == "bf16") cfg.optim.state_dtype = "bf16";
      Trainer t(cfg, groups_of(comm, ep));
      t.run();
      const auto [dense, expert] = trained_elements(t.model());
      const int64_t trained = dense + expert;
      int64_t all = 0, tensors = 0;
      for (const auto& p : t.model()->parameters()) {
        all += p.numel();
        ++tensors;
      }
      const auto bytes = t.optimizer().state_bytes();
      EXPECT_EQ(bytes.weights, 4 * all) << what << " " << mode;
      if (mode == "replicated" || w == 1) {  // one rank: the optimizer stays replicated
        EXPECT_EQ(bytes.moments, 8 * trained) << what;
        EXPECT_EQ(bytes.gradients, 4 * trained) << what;
        continue;
      }
      // Each bucket's block is its share rounded up (padding < 1 element per bucket, and a
      // bucket holds at least one parameter tensor): formula <= bytes < formula + 8 per tensor.
      const double share = double(dense) / w + double(expert) / edp;
      const double per_element = mode == "bf16" ? 4 : 8;  // two moments of 2 or 4 bytes
      EXPECT_GE(double(bytes.moments), per_element * share) << what << " " << mode;
      EXPECT_LT(double(bytes.moments), per_element * share + 8 * tensors) << what << " " << mode;
      // Between steps: the full gradients (kept, or freed once packed: ZeRO-2); the reduced blocks
      // are released by the update.
      EXPECT_EQ(bytes.gradients, mode == "zero2" ? 0 : 4 * trained) << what << " " << mode;
    }
  }
  comm->barrier();
}

// bf16 moments round what AdamW keeps to 8 bits of mantissa: the run stays close to the fp32 one
// (losses within 1%), not equal; and its checkpoint holds fp32 moments that resume a replicated run.
TEST_F(ShardedOptimizer, Bf16MomentsTrainCloseToFp32) {
  const int w = comm->size();
  auto fp32 = run_config(dir, "fp32", w), bf16 = run_config(dir, "bf16", w);
  for (auto* c : {&fp32, &bf16}) {
    c->optim.shard_state = true;
    c->checkpoint.save_final = true;
  }
  bf16.optim.state_dtype = "bf16";
  Trainer(fp32, groups_of(comm, w)).run();
  Trainer(bf16, groups_of(comm, w)).run();
  if (comm->rank() == 0) {
    const auto a = logged(dir + "/fp32", "train", "loss"), b = logged(dir + "/bf16", "train", "loss");
    ASSERT_EQ(b.size(), 20u);
    for (const auto& [step, loss] : b) EXPECT_NEAR(loss, a.at(step), 0.01 * a.at(step)) << "step " << step;
    const CheckpointReader reader(dir + "/bf16/checkpoints/step_00000020");
    EXPECT_EQ(reader.manifest().tensors.at("optimizer.model.norm.weight.exp_avg").dtype, "F32");
  }
  comm->barrier();
  auto resumed = run_config(dir, "resumed", w);
  resumed.train.steps = 21;
  resumed.checkpoint.resume = dir + "/bf16/checkpoints/step_00000020";
  Trainer t(resumed, groups_of(comm, w));
  EXPECT_EQ(t.optimizer().kind(), "replicated");
  t.run();
  comm->barrier();
}

TEST_F(ShardedOptimizer, ReshardingThroughCheckpointsKeepsTheMoments) {
  const int w = comm->size();
  if (w == 1) GTEST_SKIP() << "needs 2 or 4 ranks";
  const auto& shared = dir;
  const int ep = w == 4 ? 2 : w;  // on 4 ranks the experts have replicas (edp 2)
  auto sharded = [&](const std::string& dir, const std::string& run, int world) {
    auto c = run_config(dir, run, world);
    c.train.steps = 12;
    c.checkpoint.every = 4;
    c.checkpoint.save_final = true;
    c.optim.shard_state = true;
    return c;
  };
  // The uninterrupted run: sharded on the whole world.
  Trainer uninterrupted(sharded(shared, "whole", w), groups_of(comm, ep));
  uninterrupted.run();
  // Its step 4, continued by one replicated process (rank 0; the others wait), whose step 8 ...
  if (comm->rank() == 0) {
    auto single = run_config(shared, "single", 1);
    single.train.steps = 12;  // the schedule's length: the learning rates of the uninterrupted run
    single.checkpoint.every = 4;
    single.parallel.backend = "single";
    single.checkpoint.resume = shared + "/whole/checkpoints/step_00000004";
    Trainer(single, groups_of(parallel::make_single_communicator(), 1)).run();
  }
  comm->barrier();
  // ... is continued to step 12 sharded on 2 ranks (the first two), ep 2 there.
  auto pair = comm->split(comm->rank() < 2 ? 0 : 1, comm->rank());
  if (comm->rank() < 2) {
    auto two = sharded(shared, "two", 2);
    two.checkpoint.resume = shared + "/single/checkpoints/step_00000008";
    Trainer(two, groups_of(pair, 2)).run();
  }
  comm->barrier();
  if (comm->rank() == 0) {
    const CheckpointReader want(shared + "/whole/checkpoints/step_00000012"),
        got(shared + "/two/checkpoints/step_00000012");
    int64_t moments = 0;
    for (const auto& [name, _] : want.manifest().tensors) {
      ASSERT_TRUE(got.has(name)) << name;
      const bool is_moment = name.find("exp_avg") != std::string::npos;
      moments += is_moment;
      // Moments (and weights) after 12 steps through 3 layouts, against the uninterrupted run.
      EXPECT_TRUE(all_close(got.read(name), want.read(name), is_moment ? 1e-9 : 1e-6, 1e-4)) << name;
    }
    EXPECT_GT(moments, 0);
  }
  comm->barrier();
}
