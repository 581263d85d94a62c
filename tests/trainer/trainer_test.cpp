// The training loop under mpiexec (1, 2, 4 ranks): the global gradient norm equals one process's;
// k micro-batches of b equal one step of k*b; the whole loop on N ranks (expert parallel, with
// clipping active) equals the same loop in one process; a tiny model overfits a tiny corpus; the
// NaN guard skips and then stops.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <filesystem>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "model/feed_forward.h"
#include "model/fused_kernels.h"
#include "parallel/expert_dispatch.h"
#include "parallel/gradient_sync.h"
#include "parallel/mpi_communicator.h"
#include "tests/support.h"
#include "tests/trainer/temp_dir.h"
#include "tests/trainer/training_fixture.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/optim/optimizer.h"
#include "trainer/data/token_shard.h"
#include "trainer/trainer.h"

using namespace moe;
using namespace moe::trainer;
using moe::test::all_close;
using namespace moe::test;

namespace {

// Expert parallel over all of comm's ranks.
parallel::ParallelGroups groups_of(std::shared_ptr<parallel::Communicator> comm, int64_t experts) {
  const int ep = comm->size();
  return parallel::make_groups(std::move(comm), ep, experts);
}

}  // namespace

TEST(Trainer, GlobalGradNormEqualsSingleProcess) {
  test::DtypeAndSeed guard;
  auto comm = mpi_world();
  auto cfg = tiny_config("").model;
  const auto g = groups_of(comm, cfg.n_routed_experts);
  const int w = comm->size(), r = comm->rank();
  const auto tokens = torch::randint(cfg.vocab_size, {2 * w, 9}, torch::kInt64);
  torch::manual_seed(5);
  model::CausalLM single(cfg);
  single(tokens.narrow(1, 0, 8), tokens.narrow(1, 1, 8)).loss.backward();
  double want = 0;
  for (const auto& p : single->parameters()) want += p.grad().square().sum().item<double>();
  want = std::sqrt(want);

  auto lm = parallel::make_expert_parallel_model(cfg, g, 5);
  const auto mine = tokens.narrow(0, 2 * r, 2);
  lm(mine.narrow(1, 0, 8), mine.narrow(1, 1, 8)).loss.backward();
  parallel::GradientSync(lm, g).sync();
  const double got = global_grad_norm(lm, g);
  EXPECT_NEAR(got, want, 1e-10 * want) << "rank " << r << " of " << w;
  // Clipping scales to the limit exactly.
  const double factor = clip_gradients(lm, got, want / 2);
  EXPECT_NEAR(global_grad_norm(lm, g), want / 2, 1e-5 * want);
  EXPECT_NEAR(factor, 0.5, 1e-5);
  EXPECT_EQ(clip_gradients(lm, want / 4, want), 1.0);
}

// k micro-batches of b, one step of k*b, and N ranks (N * b per micro-batch) all give the same
// weights: the same windows in the same global batches, and gradients that average alike.
TEST(Trainer, AccumulationAndRanksEqualOneLargeBatch) {
  auto comm = mpi_world();
  test::TempDir tmp("moe_trainer_test");
  const auto dir = tmp.path();
  write_dataset(dir + "/data", 400, 64);
  auto cfg = tiny_config(dir);
  cfg.optim.grad_clip = 0.05;  // active: the global norm must be the same everywhere
  cfg.train.log_every = 1;     // every step's gradient norm (before clipping) in metrics.jsonl
  const int w = comm->size();

  // The reference: one process (a single communicator), global micro-batch 4 * w, no accumulation.
  auto single_cfg = cfg;
  single_cfg.train.micro_batch = 4 * w;
  single_cfg.parallel.backend = "single";
  Trainer single(single_cfg, groups_of(parallel::make_single_communicator(), 4));
  const auto s_single = single.run();
  const auto want = weights(single.model());

  // On the N ranks: micro-batch 2 with 2 accumulation steps.
  auto ranks_cfg = cfg;
  ranks_cfg.train.micro_batch = 2;
  ranks_cfg.train.grad_accum = 2;
  const auto shared = rank0_path(*comm, dir);
  ranks_cfg.train.out_dir = shared + "/run2";
  ranks_cfg.parallel.overlap_grad_sync = true;  // with accumulation: buckets start in the last backward only
  ranks_cfg.parallel.bucket_mb = 0.01;
  ranks_cfg.checkpoint.save_final = true;
  Trainer ranks(ranks_cfg, groups_of(comm, 4));
  const auto s_ranks = ranks.run();
  EXPECT_NEAR(s_ranks.first_loss, s_single.first_loss, 1e-5);
  EXPECT_NEAR(s_ranks.last_loss, s_single.last_loss, 1e-5);
  // The fp32 gradients differ in summation order (one batch of 4w vs 2 x 2 per rank), and AdamW
  // divides by sqrt(v): where a gradient is near zero, rounding alone moves a weight by a fraction of
  // a step (lr 3e-3). 1e-5 is 0.3% of one step after 6; a wrong average or a missed micro-batch
  // differs by whole steps. (1e-6 held on one CPU and not on another: 1.9e-6 seen.)
  constexpr double kWeightAtol = 1e-5;
  for (auto& [name, value] : weights(ranks.model())) {
    EXPECT_TRUE(all_close(value, want.at(name), kWeightAtol, 1e-4)) << name << " rank " << comm->rank() << " of " << w;
  }
  // The sharded checkpoint (one model and one optimizer file per rank) loads into the whole single-process model.
  ASSERT_FALSE(s_ranks.checkpoint.empty());
  const auto loaded = load_model_for_inference(shared + "/run2");
  EXPECT_EQ(loaded.step_dir, s_ranks.checkpoint);
  for (const auto& p : loaded.lm->named_parameters()) {
    EXPECT_TRUE(all_close(p.value(), want.at(p.key()), kWeightAtol, 1e-4)) << "checkpoint " << p.key();
  }
  comm->barrier();
  if (w > 1 && comm->rank() == 0) {
    const auto file = "model-00001-of-0000" + std::to_string(w) + ".safetensors";
    std::filesystem::remove(s_ranks.checkpoint + "/" + file);
    try {
      load_model_for_inference(shared + "/run2");
      ADD_FAILURE() << "a checkpoint without rank 1's file must be refused";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("file '" + file + "' listed in the manifest is missing"), std::string::npos)
          << e.what();
    }
  }
  // AdamW hardly sees a gradient's scale; the logged norms do.
  if (comm->rank() == 0) {
    const auto single_norms = logged(dir + "/run", "train", "grad_norm");
    const auto rank_norms = logged(shared + "/run2", "train", "grad_norm");
    ASSERT_EQ(single_norms.size(), size_t(cfg.train.steps));
    ASSERT_EQ(rank_norms.size(), single_norms.size());
    for (const auto& [step, norm] : single_norms) {
      EXPECT_NEAR(rank_norms.at(step), norm, 1e-5 * norm) << "step " << step;
    }
  }
  comm->barrier();  // rank 0 removes the shared directory when it leaves
}

TEST(Trainer, TinyModelOverfitsATinyCorpus) {
  auto comm = mpi_world();
  test::TempDir tmp("moe_trainer_test");
  write_dataset(tmp.path() + "/data", 8, 64);  // 8 documents of 29 + 1 tokens
  auto cfg = tiny_config(tmp.path());
  cfg.train.steps = 150;
  cfg.train.micro_batch = 4 / comm->size() > 0 ? 4 / comm->size() : 1;
  cfg.optim.lr = 1e-2;
  cfg.optim.min_lr = 1e-3;
  cfg.optim.warmup_steps = 10;
  cfg.optim.weight_decay = 0;
  Trainer trainer(cfg, groups_of(comm, 4));
  const auto s = trainer.run();
  EXPECT_GT(s.first_loss, 3.5);  // about ln(64) = 4.16 at the start
  EXPECT_LT(s.last_loss, 0.5) << "memorising 240 tokens should be easy";
}

// --train.recompute act (and act,weights) reaches every feed-forward of the model the trainer
// builds (expert parallel on N ranks too) and trains the same losses and weights.
TEST(Trainer, RecomputedActivationTrainsTheSameWeights) {
  auto comm = mpi_world();
  test::TempDir tmp("moe_trainer_test");
  write_dataset(tmp.path() + "/data", 40, 64);
  std::vector<std::pair<TrainSummary, std::vector<torch::Tensor>>> runs;
  for (const std::string recompute : {"none", "act", "act,weights"}) {
    auto cfg = tiny_config(tmp.path());
    cfg.train.steps = 5;
    cfg.train.recompute = recompute;
    cfg.train.out_dir = tmp.path() + "/run_" + std::to_string(runs.size());
    Trainer trainer(cfg, groups_of(comm, 4));
    const auto summary = trainer.run();
    std::vector<torch::Tensor> weights;
    for (const auto& p : trainer.model()->parameters()) weights.push_back(p.detach().clone());
    bool all_recompute = true;
    for (const auto& m : trainer.model()->modules()) {
      if (auto ff = std::dynamic_pointer_cast<model::FeedForwardImpl>(m)) {
        all_recompute &= ff->recomputes_activation() == (recompute != "none");
        all_recompute &= ff->recasts_weights() == (recompute == "act,weights");
      }
    }
    EXPECT_TRUE(all_recompute) << recompute;
    runs.emplace_back(summary, weights);
  }
  // fp32 on the CPU: [gate | up] is one tensor with recomputation, so an input's gradients may sum
  // in another order (float32 rounding, ~1e-7 relative). Adam divides by sqrt(v), which magnifies
  // that where v is small: the weights agree to 1e-5 after five steps of up to 1.5e-3 each (a
  // wrong gradient moves them by about a step).
  for (size_t run = 1; run < runs.size(); ++run) {
    EXPECT_NEAR(runs[run].first.first_loss, runs[0].first.first_loss, 1e-6 * runs[0].first.first_loss);
    EXPECT_NEAR(runs[run].first.last_loss, runs[0].first.last_loss, 1e-6 * runs[0].first.last_loss);
    for (size_t i = 0; i < runs[0].second.size(); ++i) {
      EXPECT_TRUE(all_close(runs[run].second[i], runs[0].second[i], 1e-5, 1e-4)) << run << " " << i;
    }
  }
}

// train.fused_kernels reaches the process-wide switch the model reads (model/fused_kernels.h).
TEST(Trainer, FusedKernelsFollowTheConfig) {
  auto comm = mpi_world();
  test::TempDir tmp("moe_trainer_test");
  write_dataset(tmp.path() + "/data", 40, 64);
  for (const bool fused : {false, true}) {
    auto cfg = tiny_config(tmp.path());
    cfg.train.fused_kernels = fused;
    cfg.train.out_dir = tmp.path() + "/run_fused_" + std::to_string(fused);
    Trainer trainer(cfg, groups_of(comm, 4));
    EXPECT_EQ(model::fused_kernels_enabled(), fused);
  }
}

TEST(Trainer, NonFiniteGradientsAreSkippedThenStopTheRun) {
  auto comm = mpi_world();
  test::TempDir tmp("moe_trainer_test");
  write_dataset(tmp.path() + "/data", 100, 64);
  auto cfg = tiny_config(tmp.path());
  cfg.train.steps = 20;
  cfg.train.max_bad_steps = 3;
  cfg.optim.warmup_steps = 0;
  cfg.optim.grad_clip = 0;
  cfg.optim.lr = 1e30;  // the first update overflows the weights; later gradients are not finite
  cfg.optim.min_lr = 1e30;
  Trainer trainer(cfg, groups_of(comm, 4));
  try {
    trainer.run();
    ADD_FAILURE() << "the run should stop";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("3 consecutive steps with non-finite gradients"), std::string::npos)
        << e.what();
  }
}

// A run that diverges never saves its non-finite weights over the last good checkpoint.
TEST(Trainer, DivergedWeightsAreNeverSaved) {
  auto comm = mpi_world();
  test::TempDir tmp("moe_trainer_test");
  const auto dir = rank0_path(*comm, tmp.path());
  if (comm->rank() == 0) write_dataset(dir + "/data", 100, 64);
  comm->barrier();
  auto cfg = tiny_config(dir);
  cfg.train.steps = 2;
  cfg.checkpoint.save_final = true;
  Trainer(cfg, groups_of(comm, 4)).run();
  auto diverging = cfg;
  diverging.train.steps = 6;
  diverging.checkpoint.every = 1;
  diverging.checkpoint.resume = "auto";
  diverging.optim.lr = diverging.optim.min_lr = 1e30;  // the next update overflows the weights
  const auto message = refusal([&] { Trainer(diverging, groups_of(comm, 4)).run(); });
  EXPECT_NE(message.find("checkpoint at step 3: rank 0 of " + std::to_string(comm->size()) +
                         ": the weights hold non-finite values"),
            std::string::npos)
      << message;
  EXPECT_EQ(latest_checkpoint(dir + "/run"), dir + "/run/checkpoints/step_00000002");
  EXPECT_EQ(refusal([&] { load_model_for_inference(dir + "/run"); }), "(no error)");
  comm->barrier();
}

// Auxiliary-loss-free balancing in the loop: counts of every micro-batch of every rank, summed as
// integers, move the bias once per step; the bias has the same bits on every rank and equals one
// process's with the same global batch (sigmoid scores, z-loss on).
TEST(Trainer, RoutingBiasHasTheSameBitsOnEveryRankAsInOneProcess) {
  auto comm = mpi_world();
  test::TempDir tmp("moe_trainer_test");
  const auto dir = tmp.path();
  write_dataset(dir + "/data", 400, 64);
  auto cfg = tiny_config(dir);
  cfg.model.scoring_func = "sigmoid";
  cfg.model.bias_update_rate = 1e-2;
  cfg.model.router_z_loss_coef = 1e-3;
  cfg.model.aux_loss_alpha = 1e-4;
  cfg.train.log_every = 1;
  const int w = comm->size();
  auto biases = [](Trainer& t) {
    std::vector<torch::Tensor> b;
    for (const auto& layer : t.model()->moe_layers()) b.push_back(layer->gate->e_score_correction_bias.detach().clone());
    return torch::stack(b);  // [L, E]
  };

  auto single_cfg = cfg;
  single_cfg.train.micro_batch = 4 * w;
  single_cfg.parallel.backend = "single";
  Trainer single(single_cfg, groups_of(parallel::make_single_communicator(), 4));
  single.run();
  const auto want = biases(single);
  EXPECT_GT(want.abs().max().item<double>(), 0.0) << "the bias must have moved";
  EXPECT_NEAR(want.sum(-1).abs().max().item<double>(), 0.0, 1e-6) << "centred moves keep each layer's sum at 0";

  auto ranks_cfg = cfg;
  ranks_cfg.train.micro_batch = 2;
  ranks_cfg.train.grad_accum = 2;
  const auto shared = rank0_path(*comm, dir);
  ranks_cfg.train.out_dir = shared + "/run2";
  Trainer ranks(ranks_cfg, groups_of(comm, 4));
  ranks.run();
  const auto mine = biases(ranks);
  EXPECT_TRUE(torch::equal(mine, want)) << "rank " << comm->rank() << " of " << w << ":\n" << mine << "\nvs\n" << want;
  auto all = torch::empty({w * mine.size(0), mine.size(1)}, mine.options());
  comm->all_gather(all, mine);
  for (int r = 0; r < w; ++r) {
    EXPECT_TRUE(torch::equal(all.narrow(0, r * mine.size(0), mine.size(0)), mine)) << "rank " << r << " differs";
  }
  if (comm->rank() == 0) {
    const auto vio = logged(shared + "/run2", "train", "max_vio"), z = logged(shared + "/run2", "train", "z");
    EXPECT_EQ(vio.size(), size_t(cfg.train.steps));
    EXPECT_EQ(z.size(), size_t(cfg.train.steps));
    for (const auto& [step, value] : z) EXPECT_GT(value, 0.0) << "z-loss at step " << step;
    const auto single_vio = logged(dir + "/run", "train", "max_vio");
    for (const auto& [step, value] : vio) EXPECT_EQ(value, single_vio.at(step)) << "MaxVio at step " << step;
  }
  comm->barrier();
}
