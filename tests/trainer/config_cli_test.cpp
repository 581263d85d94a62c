// The command line: precedence defaults < --config file < command line, the --dump-config round
// trip, every documented error (unknown key, bad value, missing file, failed validation), the
// shipped configs/, and the learning-rate schedule's values.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/check.h"
#include "tests/trainer/temp_dir.h"
#include "trainer/config_cli.h"
#include "trainer/optim/optimizer.h"

using namespace moe;
using namespace moe::trainer;

namespace {

TrainCommandLine parse(std::vector<std::string> args) {
  args.insert(args.begin(), "moe-train");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_train_command_line(int(argv.size()), argv.data());
}

std::string error_of(const std::vector<std::string>& args) {
  try {
    parse(args);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(no error)";
}

const std::vector<std::string> kData = {"--data.dir", "data/x"};

std::vector<std::string> with_data(std::vector<std::string> args) {
  args.insert(args.end(), kData.begin(), kData.end());
  return args;
}

}  // namespace

TEST(ConfigCli, DefaultsThenFileThenCommandLine) {
  test::TempDir dir;
  std::ofstream(dir / "run.ini") << "# comment\n[model]\nhidden_size = 256\nnum_hidden_layers = 3\n"
                                 << "[train]\nsteps = 77\n[data]\ndir = from/file\n";
  const auto cli = parse({"--config", dir / "run.ini", "--model.hidden_size", "192", "--parallel.ep_size", "2"});
  EXPECT_EQ(cli.config.model.hidden_size, 192);      // command line beats file
  EXPECT_EQ(cli.config.model.num_hidden_layers, 3);  // file beats default
  EXPECT_EQ(cli.config.train.steps, 77);
  EXPECT_EQ(cli.config.parallel.ep_size, 2);
  EXPECT_EQ(cli.config.data.dir, "from/file");
  EXPECT_EQ(cli.config.model.num_attention_heads, 8);  // default
  EXPECT_FALSE(cli.help);
  EXPECT_FALSE(cli.dump_config);
}

TEST(ConfigCli, DumpConfigReadsBackToTheSameValues) {
  test::TempDir dir;
  const auto cli = parse(with_data({"--model.use_moe", "true", "--model.rms_norm_eps", "1e-6", "--optim.lr",
                                    "0.00123", "--model.seq_aux", "false", "--train.out_dir", "runs/x y",
                                    "--model.capacity_factor", "1.25", "--train.recompute", "act", "--train.fused_kernels",
                                    "false", "--dump-config"}));
  EXPECT_TRUE(cli.dump_config);
  const auto text = dump_config(cli.config);
  EXPECT_NE(text.find("[model]\nhidden_size = 512\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lr = 0.00123\n"), std::string::npos) << text;
  EXPECT_NE(text.find("seq_aux = false\n"), std::string::npos) << text;
  std::ofstream(dir / "dumped.ini") << text;
  const auto back = load_config_file(dir / "dumped.ini");
  EXPECT_EQ(dump_config(back), text);
  EXPECT_EQ(back.model.rms_norm_eps, 1e-6);
  EXPECT_EQ(back.train.out_dir, "runs/x y");
  EXPECT_EQ(back.model.capacity_factor, 1.25);
  EXPECT_EQ(back.train.recompute, "act");
  EXPECT_FALSE(back.train.fused_kernels);
  EXPECT_TRUE(TrainConfig{}.train.fused_kernels);  // on unless turned off
  EXPECT_FALSE(back.model.seq_aux);
}

TEST(ConfigCli, EveryDocumentedErrorNamesTheKeyAndValue) {
  test::TempDir dir;
  EXPECT_NE(error_of(with_data({"--train.stepz", "5"})).find("train.stepz"), std::string::npos);
  const auto bad_value = error_of(with_data({"--train.steps", "many"}));
  EXPECT_NE(bad_value.find("many"), std::string::npos) << bad_value;
  EXPECT_NE(bad_value.find("train.steps"), std::string::npos) << bad_value;
  EXPECT_NE(error_of(with_data({"--model.use_moe", "perhaps"})).find("perhaps"), std::string::npos);
  std::ofstream(dir / "typo.ini") << "[optim]\nlearning_rate = 1\n";
  const auto typo = error_of(with_data({"--config", dir / "typo.ini"}));
  EXPECT_NE(typo.find(dir / "typo.ini"), std::string::npos) << typo;
  EXPECT_NE(typo.find("optim.learning_rate"), std::string::npos) << typo;
  std::ofstream(dir / "badval.ini") << "[train]\nmicro_batch = eight\n";
  const auto badval = error_of(with_data({"--config", dir / "badval.ini"}));
  EXPECT_NE(badval.find("eight"), std::string::npos) << badval;
  EXPECT_NE(error_of({"--config", dir / "missing.ini"}).find("missing.ini' not found"), std::string::npos);
  // Validation, after the precedence is applied.
  EXPECT_EQ(error_of(with_data({"--train.steps", "0"})), "--train.steps must be positive, got 0");
  EXPECT_EQ(error_of(with_data({"--parallel.backend", "gloo"})),
            "--parallel.backend 'gloo' is not one of auto, mpi, nccl, single");
  EXPECT_EQ(error_of({}), "--data.dir is not set (the directory moe-prepare wrote)");
  EXPECT_EQ(error_of(with_data({"--model.hidden_size", "100", "--model.num_attention_heads", "3"})),
            "model.hidden_size 100 is not divisible by num_attention_heads 3");
  EXPECT_EQ(error_of(with_data({"--data.seq_len", "100000"})),
            "--data.seq_len 100000 must be in [1, model.max_position_embeddings = 32768]");
  EXPECT_EQ(error_of(with_data({"--parallel.global_batch_aux", "true"})),
            "--parallel.global_batch_aux needs --model.seq_aux false");
  EXPECT_EQ(error_of(with_data({"--parallel.pad_to_capacity", "true"})),
            "--parallel.pad_to_capacity needs --model.capacity_factor > 0 (the rows per expert it pads to)");
  // The distributed optimizer's options go together.
  EXPECT_EQ(error_of(with_data({"--optim.shard_grads", "true"})), "--optim.shard_grads needs --optim.shard_state true");
  EXPECT_EQ(error_of(with_data({"--optim.state_dtype", "bf16"})),
            "--optim.state_dtype bf16 needs --optim.shard_state true (the replicated optimizer keeps fp32 moments)");
  EXPECT_EQ(error_of(with_data({"--optim.shard_state", "true", "--optim.state_dtype", "fp16"})),
            "--optim.state_dtype 'fp16' is not one of fp32, bf16");
  EXPECT_EQ(error_of(with_data({"--optim.shard_state", "true", "--train.cuda_graph", "true"})),
            "--train.cuda_graph runs one rank, which has no replicas to shard the optimizer over: leave "
            "--optim.shard_state false");
  EXPECT_EQ(error_of(with_data({"--train.recompute", "blocks"})),
            "--train.recompute 'blocks' is not one of none, act, weights, act,weights, block");
  EXPECT_EQ(error_of(with_data({"--train.recompute", "block", "--model.dropout", "0.1"})),
            "--train.recompute block needs --model.dropout 0 (the recomputed forward would draw other dropout "
            "masks), got 0.1");
  // Every floating-point option is finite and in its range.
  EXPECT_EQ(error_of(with_data({"--optim.lr", "inf"})), "--optim.lr must be a finite positive number, got inf");
  EXPECT_EQ(error_of(with_data({"--optim.lr", "nan"})), "--optim.lr must be a finite positive number, got nan");
  EXPECT_EQ(error_of(with_data({"--optim.eps", "inf"})), "--optim.eps must be a finite positive number, got inf");
  EXPECT_EQ(error_of(with_data({"--optim.grad_clip", "inf"})),
            "--optim.grad_clip must be finite and >= 0 (0 = off), got inf");
  EXPECT_EQ(error_of(with_data({"--optim.beta2", "nan"})), "--optim.beta2 must be in [0, 1), got nan");
  EXPECT_EQ(error_of(with_data({"--model.capacity_factor", "inf"})),
            "model.capacity_factor must be finite and >= 0 (0 = dropless), got inf");
  EXPECT_EQ(error_of(with_data({"--model.dropout", "nan"})), "model.dropout must be in [0, 1), got nan");
  EXPECT_EQ(error_of(with_data({"--parallel.comm_timeout", "inf"})),
            "--parallel.comm_timeout must be a finite positive number of seconds, got inf");
  // A directory given as --config is not read as an empty file.
  const auto as_dir = error_of(with_data({"--config", dir.path()}));
  EXPECT_NE(as_dir.find("is a directory, not an INI file"), std::string::npos) << as_dir;
  // --help skips validation (nothing else is needed to read the usage).
  EXPECT_TRUE(parse({"--help"}).help);
  EXPECT_NE(usage().find("--model.n_routed_experts"), std::string::npos);
}

TEST(ConfigCli, ShippedConfigsParseAndValidate) {
  int seen = 0;
  for (const auto& e : std::filesystem::directory_iterator(MOE_SOURCE_DIR "/configs")) {
    if (e.path().extension() != ".ini") continue;
    ++seen;
    EXPECT_NO_THROW(parse({"--config", e.path().string(), "--data.dir", "d"})) << e.path();
  }
  EXPECT_GE(seen, 4);
  const auto minimind = load_config_file(MOE_SOURCE_DIR "/configs/minimind2-moe.ini");
  EXPECT_EQ(minimind.model.hidden_size, 640);
  EXPECT_EQ(minimind.model.num_hidden_layers, 8);
  EXPECT_EQ(minimind.model.n_routed_experts, 4);
  EXPECT_EQ(minimind.model.num_experts_per_tok, 2);
  EXPECT_EQ(minimind.model.n_shared_experts, 1);
}

TEST(LrSchedule, WarmupThenCosineToMinimum) {
  OptimOptions o;
  o.lr = 1e-3;
  o.min_lr = 1e-4;
  o.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(lr_at(o, 0, 110), 1e-4);      // 1/10 of the peak
  EXPECT_DOUBLE_EQ(lr_at(o, 4, 110), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(o, 9, 110), 1e-3);      // peak at the end of warm-up
  EXPECT_DOUBLE_EQ(lr_at(o, 10, 110), 1e-3);     // cosine starts at the peak
  EXPECT_DOUBLE_EQ(lr_at(o, 60, 110), 1e-4 + 0.5 * 9e-4 * (1 + std::cos(M_PI * 50.0 / 99.0)));
  EXPECT_DOUBLE_EQ(lr_at(o, 109, 110), 1e-4);    // last step: the minimum
  o.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(lr_at(o, 0, 101), 1e-3);
  EXPECT_NEAR(lr_at(o, 50, 101), 5.5e-4, 1e-15);  // half way: (lr + min) / 2
  EXPECT_DOUBLE_EQ(lr_at(o, 100, 101), 1e-4);     // last step: the minimum
  EXPECT_DOUBLE_EQ(lr_at(o, 25, 101), 1e-4 + 0.5 * 9e-4 * (1 + std::cos(M_PI / 4)));
}
