// Training checkpoints under mpiexec (1, 2, 4 ranks; ep = the world or --ep_size):
//  - N steps, resume, N more equal 2N uninterrupted steps bitwise (weights, optimiser state, losses,
//    gradient norms, data position), with dropout, gradient accumulation and overlapped sync;
//  - a checkpoint saved by one process resumes on N ranks, one saved on N ranks resumes in one
//    process (and on 4 ranks, on 2 with ep 2), equal to the uninterrupted run to fp32 tolerance;
//  - a changed model, a corrupt tensor that only its owner reads: every rank refuses, naming both.
// With --shard_state every run uses the distributed optimiser (optim.shard_state).
// The runs balance by bias (model.bias_update_rate): its state is among the bitwise-compared tensors.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "common/check.h"
#include "parallel/mpi_communicator.h"
#include "tests/parallel/mpi_test_options.h"
#include "tests/trainer/temp_dir.h"
#include "tests/trainer/training_fixture.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/trainer.h"

using namespace moe;
using namespace moe::trainer;
using namespace moe::test;
namespace fs = std::filesystem;

namespace {

parallel::ParallelGroups groups_of(std::shared_ptr<parallel::Communicator> comm, int ep) {
  return parallel::make_groups(std::move(comm), ep > 0 ? ep : comm->size(), 4);
}

int test_ep(const parallel::Communicator& comm) {
  return mpi_test_ep_size() > 0 ? mpi_test_ep_size() : comm.size();
}

// 8 steps of 4 sequences per global micro-batch, a checkpoint every 4.
TrainConfig run_config(const std::string& dir, const std::string& run, int world) {
  auto c = tiny_config(dir);
  c.train.out_dir = dir + "/" + run;
  c.train.steps = 8;
  c.train.micro_batch = 4 / world;
  c.train.log_every = 1;
  c.checkpoint.every = 4;
  c.checkpoint.save_final = true;
  c.optim.grad_clip = 0.05;  // active
  // Balancing by bias and the z-loss on: the bias is training state, resumed and resharded too.
  c.model.bias_update_rate = 1e-2;
  c.model.router_z_loss_coef = 1e-3;
  c.optim.shard_state = mpi_test_shard_state();  // the whole suite again with the distributed optimiser
  return c;
}

// Bitwise: every tensor of two checkpoints (parameters and optimiser state) has the same CRC-32.
void expect_same_tensors(const std::string& a, const std::string& b) {
  const CheckpointReader ra(a), rb(b);
  ASSERT_EQ(ra.manifest().tensors.size(), rb.manifest().tensors.size());
  for (const auto& [name, t] : ra.manifest().tensors) {
    ASSERT_TRUE(rb.has(name)) << name;
    EXPECT_EQ(t.crc32, rb.manifest().tensors.at(name).crc32) << name;
  }
}

void expect_close_weights(model::CausalLM& lm, const std::map<std::string, torch::Tensor>& want,
                          const std::string& what) {
  for (auto& [name, value] : weights(lm)) {
    EXPECT_TRUE(all_close(value, want.at(name), 1e-6, 1e-4)) << what << ": " << name;
  }
}

}  // namespace

TEST(Checkpoint, ResumeIsBitwiseExact) {
  auto comm = mpi_world();
  TempDir tmp("moe_checkpoint_test");
  const auto dir = shared_dir_with_dataset(*comm, tmp.path());
  const int ep = test_ep(*comm);
  auto cfg = run_config(dir, "a", comm->size());
  cfg.train.micro_batch = 2;
  cfg.train.grad_accum = 2;
  cfg.model.dropout = 0.1;  // draws from the saved generators
  cfg.parallel.overlap_grad_sync = true;
  cfg.parallel.bucket_mb = 0.01;
  Trainer a(cfg, groups_of(comm, ep));
  const auto sa = a.run();
  ASSERT_EQ(sa.checkpoint, dir + "/a/checkpoints/step_00000008");

  auto resumed = cfg;
  resumed.train.out_dir = dir + "/b";
  resumed.checkpoint.resume = dir + "/a/checkpoints/step_00000004";
  Trainer b(resumed, groups_of(comm, ep));
  EXPECT_EQ(b.state().step, 4);
  const auto sb = b.run();
  EXPECT_EQ(sb.first_step, 4);
  EXPECT_EQ(sb.steps, 4);
  EXPECT_EQ(b.state().data, a.state().data) << "the data stream must continue at the same window";
  EXPECT_EQ(b.state().tokens, a.state().tokens);
  for (auto& [name, value] : weights(b.model())) {
    EXPECT_TRUE(torch::equal(value, weights(a.model()).at(name))) << name << " rank " << comm->rank();
  }
  if (comm->rank() == 0) {
    expect_same_tensors(sa.checkpoint, sb.checkpoint);
    for (const char* field : {"loss", "grad_norm"}) {
      const auto want = logged(dir + "/a", "train", field), got = logged(dir + "/b", "train", field);
      ASSERT_EQ(got.size(), 4u) << field;
      for (const auto& [step, value] : got) EXPECT_EQ(value, want.at(step)) << field << " at step " << step;
    }
  }

  // Resuming the run's own earlier checkpoint saves step 8 again, replacing the old directory.
  auto redo = cfg;
  redo.checkpoint.resume = dir + "/a/checkpoints/step_00000004";
  Trainer(redo, groups_of(comm, ep)).run();
  if (comm->rank() == 0) {
    expect_same_tensors(sb.checkpoint, sa.checkpoint);
    for (const auto& e : fs::directory_iterator(dir + "/a/checkpoints")) {
      EXPECT_EQ(e.path().extension(), "") << "leftover " << e.path();
    }
  }

  // Resuming in the run's own directory ("auto") continues its metrics without duplicates.
  auto again = cfg;
  again.train.steps = 10;
  again.checkpoint.resume = "auto";
  Trainer c(again, groups_of(comm, ep));
  EXPECT_EQ(c.state().step, 8);
  c.run();
  if (comm->rank() == 0) {
    const auto steps = logged(dir + "/a", "train", "loss");
    ASSERT_EQ(steps.size(), 10u);
    EXPECT_EQ(steps.begin()->first, 1);
    EXPECT_EQ(steps.rbegin()->first, 10);
  }
  comm->barrier();
}

TEST(Checkpoint, ReshardedResumeMatchesUninterrupted) {
  auto comm = mpi_world();
  const int w = comm->size(), ep = test_ep(*comm);
  TempDir own("moe_checkpoint_test");
  const auto local = own.path();  // this rank's single-process runs
  const auto shared = rank0_path(*comm, local);
  write_dataset(local + "/data", 200, 64);
  comm->barrier();

  // The reference: one process, 8 steps, checkpoints at 4 and 8.
  auto single_cfg = run_config(local, "single", 1);
  single_cfg.parallel.backend = "single";
  Trainer single(single_cfg, groups_of(parallel::make_single_communicator(), 1));
  single.run();
  const auto want = weights(single.model());

  // Saved by one process (rank 0's), resumed on all ranks.
  auto up = run_config(shared, "up", w);
  up.checkpoint.resume = shared + "/single/checkpoints/step_00000004";
  Trainer resumed_up(up, groups_of(comm, ep));
  resumed_up.run();
  expect_close_weights(resumed_up.model(), want, "1 -> " + std::to_string(w) + " ranks");
  EXPECT_EQ(resumed_up.state().data, single.state().data);

  // Saved on all ranks, resumed by one process.
  auto many = run_config(shared, "many", w);
  Trainer trained(many, groups_of(comm, ep));
  trained.run();
  auto down = run_config(local, "down", 1);
  down.parallel.backend = "single";
  down.checkpoint.resume = shared + "/many/checkpoints/step_00000004";
  Trainer resumed_down(down, groups_of(parallel::make_single_communicator(), 1));
  resumed_down.run();
  expect_close_weights(resumed_down.model(), want, std::to_string(w) + " -> 1 rank");
  if (comm->rank() == 0) {
    const auto want_norms = logged(local + "/single", "train", "grad_norm");
    for (const auto* run : {"/up", "/many"}) {
      for (const auto& [step, norm] : logged(shared + run, "train", "grad_norm")) {
        EXPECT_NEAR(norm, want_norms.at(step), 1e-5 * norm) << run << " step " << step;
      }
    }
    for (const auto& [step, norm] : logged(local + "/down", "train", "grad_norm")) {
      EXPECT_NEAR(norm, want_norms.at(step), 1e-5 * norm) << "down step " << step;
    }
  }

  // On 4 ranks: the 4-rank checkpoint resumed by each half, 2 ranks with ep 2.
  if (w == 4) {
    const int half = comm->rank() / 2;
    auto pair = comm->split(half, comm->rank() % 2);
    const auto pair_dir = rank0_path(*pair, local);
    auto two = run_config(pair_dir, "two", 2);
    two.checkpoint.resume = shared + "/many/checkpoints/step_00000004";
    Trainer resumed_two(two, groups_of(pair, 2));
    resumed_two.run();
    expect_close_weights(resumed_two.model(), want, "4 -> 2 ranks");
    pair->barrier();
  }
  comm->barrier();
}

TEST(Checkpoint, EveryRankRefusesAMismatchOrACorruptShard) {
  auto comm = mpi_world();
  const int ep = test_ep(*comm);
  TempDir tmp("moe_checkpoint_test");
  const auto dir = shared_dir_with_dataset(*comm, tmp.path());
  auto cfg = run_config(dir, "a", comm->size());
  cfg.train.steps = 4;
  Trainer(cfg, groups_of(comm, ep)).run();
  const auto step_dir = dir + "/a/checkpoints/step_00000004";

  auto wider = cfg;
  wider.model.hidden_size = 48;
  wider.checkpoint.resume = "auto";
  const auto changed = refusal([&] { Trainer(wider, groups_of(comm, ep)); });
  EXPECT_NE(changed.find("model.hidden_size 32 (saved) vs 48 (now)"), std::string::npos) << changed;
  EXPECT_NE(changed.find(step_dir), std::string::npos) << changed;

  // The last expert's tensors are read by the rank that holds it only.
  if (comm->rank() == 0) {
    const CheckpointReader reader(step_dir);
    const auto& t = reader.manifest().tensors.at("model.layers.1.mlp.experts.3.down_proj.weight");
    const auto path = step_dir + "/" + t.file;
    const SafetensorsFile file(path);
    const auto* entry = file.find("model.layers.1.mlp.experts.3.down_proj.weight");
    std::fstream g(path, std::ios::in | std::ios::out | std::ios::binary);
    g.seekg(std::streamoff(file.header().data_start + entry->begin + 5));
    char byte = 0;
    g.read(&byte, 1);
    byte ^= 0x10;
    g.seekp(std::streamoff(file.header().data_start + entry->begin + 5));
    g.write(&byte, 1);
  }
  comm->barrier();
  auto same = cfg;
  same.checkpoint.resume = "auto";
  const auto corrupt = refusal([&] { Trainer(same, groups_of(comm, ep)); });
  EXPECT_NE(corrupt.find("tensor model.layers.1.mlp.experts.3.down_proj.weight fails its checksum"), std::string::npos)
      << corrupt;
  const int holder = 3 / (4 / ep);  // the first rank that holds expert 3 (edp replica 0)
  EXPECT_NE(corrupt.find("resuming: rank " + std::to_string(holder) + " of "), std::string::npos) << corrupt;
  comm->barrier();
}
