// moe-bench-checkpoint: what checkpoints cost, per rank, for the configs in configs/:
//   mpirun -np N build/bin/moe-bench-checkpoint [--configs configs/tiny.ini,...] [--dir DIR]
// Per config: a rank's start-up (time and peak resident memory, or GPU memory) building only its
// experts (sharded construction) and, for comparison, the whole model as every rank did before;
// then save and load of the full training state (parameters + AdamW moments): bytes, seconds and
// GB/s per rank (median of --repeats). Loads read what was just written, so they come from the
// page cache. Prints a table on rank 0 and one JSON line per config.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/log.h"
#include "common/remove_tree.h"
#include "bench/bench_stats.h"
#include "launch/cli.h"
#include "parallel/collective_text.h"
#include "parallel/expert_dispatch.h"
#include "parallel/mpi_communicator.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/config_cli.h"
#include "trainer/device.h"
#include "trainer/optim/optimizer.h"
#include "trainer/peak_memory.h"

namespace po = boost::program_options;
using namespace moe;
using Clock = std::chrono::steady_clock;

namespace {

using bench::median;
using bench::seconds_since;

struct Construction {
  double seconds = 0, peak_gib = 0;
};

// Time and peak memory above the current level of building a model with `build`.
template <typename Build>
Construction measure_construction(const torch::Device& device, Build build) {
  trainer::reset_peak_memory(device);
  const double base = trainer::peak_memory(device).reserved_gib;
  const auto start = Clock::now();
  {
    auto lm = build();
    lm->to(device);
    if (device.is_cuda()) torch::cuda::synchronize();
  }
  Construction c;
  c.seconds = seconds_since(start);
  c.peak_gib = trainer::peak_memory(device).reserved_gib - (device.is_cuda() ? 0 : base);
  return c;
}

// Every rank's value of x, as "min-max" (or one number when equal).
std::string range(parallel::Communicator& world, double x, int precision) {
  std::vector<double> all;
  for (const auto& s : parallel::all_gather_strings(world, std::to_string(x))) all.push_back(std::stod(s));
  const auto [lo, hi] = std::minmax_element(all.begin(), all.end());
  std::ostringstream os;
  os << std::fixed << std::setprecision(precision) << *lo;
  if (*hi - *lo > 0.5 * std::pow(10.0, -precision)) os << "-" << *hi;
  return os.str();
}

nlohmann::ordered_json bench_config(const std::string& config_path, std::shared_ptr<parallel::Communicator> world,
                                    const std::string& dir, int repeats, int ep_size, const torch::Device& device) {
  auto config = trainer::load_config_file(config_path);
  config.parallel.ep_size = ep_size;
  config.train.out_dir = dir + "/" + std::filesystem::path(config_path).stem().string();
  config.checkpoint.keep = 1;
  const int ep = config.parallel.ep_size > 0 ? int(config.parallel.ep_size) : world->size();
  const auto groups = parallel::make_groups(world, ep, config.model.use_moe ? config.model.n_routed_experts : ep);
  const auto sharded = measure_construction(
      device, [&] { return parallel::make_expert_parallel_model(config.model, groups, config.train.seed); });
  const auto whole = measure_construction(device, [&] {
    torch::manual_seed(config.train.seed);
    return model::CausalLM(config.model);
  });

  auto lm = parallel::make_expert_parallel_model(config.model, groups, config.train.seed);
  lm->to(device);
  parallel::GradientSync sync(lm, groups, 32 << 20, false, trainer::gradient_reduction(config.optim));
  auto optimizer = trainer::make_training_optimizer(lm, sync, config.optim);
  for (auto& p : lm->parameters()) {
    if (p.requires_grad()) p.mutable_grad() = torch::zeros_like(p);
  }
  sync.sync();
  optimizer->update(config.optim.lr);  // AdamW moments exist, as in a real run
  trainer::CheckpointInputs in;
  in.lm = lm;
  in.optimizer = optimizer.get();
  in.groups = &groups;
  in.config = &config;
  std::vector<double> save_s, load_s;
  trainer::SavedCheckpoint saved;
  for (int r = 0; r < repeats; ++r) {
    in.state.step = r + 1;
    saved = trainer::save_checkpoint(in);
    save_s.push_back(saved.seconds);
    world->barrier();
    const auto start = Clock::now();
    const trainer::CheckpointReader reader(saved.dir);
    trainer::restore_parameters(reader, lm);
    trainer::restore_optimizer(reader, lm, *optimizer);
    if (device.is_cuda()) torch::cuda::synchronize();
    load_s.push_back(seconds_since(start));
    world->barrier();
  }
  const double mine = double(saved.bytes_per_rank[size_t(world->rank())]);
  const double save = median(save_s), load = median(load_s);
  // Load reads the dense parameters every rank holds, not only the share it wrote.
  int64_t held = 0;
  for (const auto& p : lm->parameters()) held += int64_t(p.nbytes()) * 3;  // parameter + 2 moments
  nlohmann::ordered_json j = {{"config", config_path},
                              {"ranks", world->size()},
                              {"ep", ep},
                              {"bytes_total", saved.bytes_total},
                              {"bytes_per_rank", saved.bytes_per_rank},
                              {"save_s", range(*world, save, 3)},
                              {"save_gb_s_per_rank", range(*world, mine / 1e9 / save, 2)},
                              {"load_s", range(*world, load, 3)},
                              {"load_gb_s_per_rank", range(*world, double(held) / 1e9 / load, 2)},
                              {"startup_s_sharded", range(*world, sharded.seconds, 3)},
                              {"startup_s_whole", range(*world, whole.seconds, 3)},
                              {"peak_gib_sharded", range(*world, sharded.peak_gib, 3)},
                              {"peak_gib_whole", range(*world, whole.peak_gib, 3)}};
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  parallel::ensure_mpi_initialized();
  // configs/gpu-1024.ini (2.3B parameters) needs about 30 GB per rank for the whole-model start-up.
  std::string configs = "configs/tiny.ini,configs/minimind2-moe.ini,configs/gpu-768.ini";
  std::string dir = "runs/bench-checkpoint", device_name = "cpu";
  int repeats = 3, ep_size = 0;
  po::options_description desc("moe-bench-checkpoint: checkpoint save/load and start-up cost per rank");
  desc.add_options()("help", "show this help")
      ("configs", po::value(&configs)->default_value(configs), "comma-separated INI files (moe-train --config)")
      ("dir", po::value(&dir)->default_value(dir), "where the checkpoints are written (removed at the end)")
      ("repeats", po::value(&repeats)->default_value(repeats), "saves and loads per config (median)")
      ("ep_size", po::value(&ep_size)->default_value(ep_size), "ranks per expert-parallel group; 0 = world")
      ("device", po::value(&device_name)->default_value(device_name), "cpu | cuda | auto");
  launch::parse_or_exit(argc, argv, desc);
  auto world = parallel::make_communicator("mpi");
  set_log_rank(world->rank(), world->size());
  try {
    const auto device = trainer::choose_device(device_name);
    std::vector<nlohmann::ordered_json> rows;
    std::stringstream list(configs);
    for (std::string path; std::getline(list, path, ',');) {
      log_rank0("bench", "checkpointing " + path + " on " + std::to_string(world->size()) + " ranks ...");
      rows.push_back(bench_config(path, world, dir, std::max(1, repeats), ep_size, device));
      if (world->rank() == 0) std::cout << rows.back().dump() << std::endl;
    }
    world->barrier();
    if (world->rank() == 0) {
      remove_tree(dir);
      std::cout << "\n| config | ranks x ep | state MB (per rank) | save s | save GB/s/rank | load s | load GB/s/rank "
                   "| start-up s sharded / whole | peak GiB sharded / whole |\n|---|---|---|---|---|---|---|---|---|\n";
      for (const auto& r : rows) {
        const auto& per = r["bytes_per_rank"];
        const auto [lo, hi] = std::minmax_element(per.begin(), per.end());
        std::cout << std::fixed << std::setprecision(1) << "| " << r["config"].get<std::string>() << " | "
                  << r["ranks"] << " x " << r["ep"] << " | " << r["bytes_total"].get<double>() / 1e6 << " ("
                  << lo->get<double>() / 1e6 << "-" << hi->get<double>() / 1e6 << ") | "
                  << r["save_s"].get<std::string>() << " | " << r["save_gb_s_per_rank"].get<std::string>() << " | "
                  << r["load_s"].get<std::string>() << " | " << r["load_gb_s_per_rank"].get<std::string>() << " | "
                  << r["startup_s_sharded"].get<std::string>() << " / " << r["startup_s_whole"].get<std::string>()
                  << " | " << r["peak_gib_sharded"].get<std::string>() << " / "
                  << r["peak_gib_whole"].get<std::string>() << " |\n";
      }
    }
  } catch (const std::exception& e) {
    log("error", e.what());
    world->abort(e.what());
  }
  parallel::finalize_mpi();
  return 0;
}
