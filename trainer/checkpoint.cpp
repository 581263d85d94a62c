#include "trainer/checkpoint.h"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/check.h"
#include "common/remove_tree.h"
#include "parallel/gradient_sync.h"
#include "trainer/config_cli.h"

namespace fs = std::filesystem;

namespace moe::trainer {

namespace {

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%06lld", static_cast<long long>(step));
  return name;
}

std::string shard_name(int ep_rank, int ep_size) {
  return "model-ep" + std::to_string(ep_rank) + "-of-" + std::to_string(ep_size) + ".pt";
}

void write_text_atomically(const fs::path& path, const std::string& text) {
  const auto tmp = path.string() + ".tmp";
  std::ofstream(tmp) << text;
  fs::rename(tmp, path);
}

}  // namespace

std::string save_model_checkpoint(model::CausalLM& lm, const parallel::ParallelGroups& groups,
                                  const TrainConfig& config, int64_t step, const std::string& run_dir,
                                  const std::string& tokenizer_path) {
  const auto& topo = groups.topology;
  const auto dir = fs::path(run_dir) / "checkpoints";
  const auto final_dir = dir / step_name(step), tmp_dir = dir / (step_name(step) + ".tmp");
  if (topo.rank == 0) {
    remove_tree(tmp_dir.string());
    fs::create_directories(tmp_dir);
  }
  groups.world->barrier();
  if (topo.edp_rank == 0) {  // one copy of every parameter: the ranks of the first EP group
    torch::serialize::OutputArchive archive;
    torch::NoGradGuard no_grad;
    for (const auto& p : lm->named_parameters()) {
      if (topo.ep_rank == 0 || parallel::is_expert_parameter(p.key())) {
        archive.write(p.key(), p.value().detach().to(torch::kCPU, torch::kFloat32));
      }
    }
    archive.save_to((tmp_dir / shard_name(topo.ep_rank, topo.ep_size)).string());
  }
  groups.world->barrier();
  if (topo.rank == 0) {
    std::ofstream(tmp_dir / "config.ini") << dump_config(config);
    if (!tokenizer_path.empty()) fs::copy_file(tokenizer_path, tmp_dir / "tokenizer.model");
    remove_tree(final_dir.string());
    fs::rename(tmp_dir, final_dir);
    write_text_atomically(dir / "latest", step_name(step) + "\n");
  }
  groups.world->barrier();
  return final_dir.string();
}

LoadedModel load_model_for_inference(const std::string& path) {
  fs::path dir = path;
  MOE_CHECK(fs::is_directory(dir), "checkpoint '", path, "' not found");
  if (fs::is_directory(dir / "checkpoints")) dir /= "checkpoints";
  if (fs::exists(dir / "latest")) {
    std::string name;
    std::ifstream(dir / "latest") >> name;
    dir /= name;
  }
  MOE_CHECK(fs::exists(dir / "config.ini"), "'", dir.string(),
            "' is not a checkpoint (no config.ini; give a run directory or checkpoints/step_N)");
  LoadedModel loaded;
  loaded.step_dir = dir.string();
  loaded.config = load_config_file((dir / "config.ini").string());
  loaded.tokenizer_path = (dir / "tokenizer.model").string();
  loaded.lm = model::CausalLM(loaded.config.model);
  std::vector<std::unique_ptr<torch::serialize::InputArchive>> shards;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".pt") continue;
    shards.push_back(std::make_unique<torch::serialize::InputArchive>());
    shards.back()->load_from(e.path().string());
  }
  MOE_CHECK(!shards.empty(), "checkpoint '", dir.string(), "' has no model-*.pt files");
  torch::NoGradGuard no_grad;
  for (auto& p : loaded.lm->named_parameters()) {
    torch::Tensor value;
    bool found = false;
    for (auto& shard : shards) {
      if ((found = shard->try_read(p.key(), value))) break;
    }
    MOE_CHECK(found, "checkpoint '", dir.string(), "' lacks parameter ", p.key());
    MOE_CHECK(value.sizes() == p.value().sizes(), "parameter ", p.key(), " has shape ", value.sizes(),
              " in the checkpoint, the config gives ", p.value().sizes());
    p.value().copy_(value);
  }
  loaded.lm->eval();
  return loaded;
}

}  // namespace moe::trainer
