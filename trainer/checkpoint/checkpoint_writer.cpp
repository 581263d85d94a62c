#include "trainer/checkpoint/checkpoint_writer.h"

#include <signal.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "common/check.h"
#include "common/durable_file.h"
#include "common/log.h"
#include "common/remove_tree.h"
#include "common/safetensors.h"
#include "common/safetensors_torch.h"
#include "parallel/collective_text.h"
#include "trainer/checkpoint/checkpoint_dirs.h"
#include "trainer/checkpoint/checkpoint_manifest.h"
#include "trainer/checkpoint/checkpoint_write_plan.h"
#include "trainer/config_cli.h"

namespace fs = std::filesystem;

namespace moe::trainer {

namespace {

std::string rank_file(const char* kind, int rank, int world) {
  char name[64];
  std::snprintf(name, sizeof(name), "%s-%05d-of-%05d.safetensors", kind, rank, world);
  return name;
}

// The test hook: MOE_CHECKPOINT_FAULT=<point>[:<rank>|all[:kill|fail|pause<seconds>[:<step>]]].
void fault_point(const char* point, int rank, int64_t step) {
  const char* spec = std::getenv("MOE_CHECKPOINT_FAULT");
  if (!spec) return;
  std::vector<std::string> f;
  std::string s = spec;
  for (size_t a = 0, b; a <= s.size(); a = b + 1) {
    b = std::min(s.find(':', a), s.size());
    f.push_back(s.substr(a, b - a));
  }
  f.resize(4);
  const std::string action = f[2].empty() ? "kill" : f[2];
  if (f[0] != point || !(f[1].empty() || f[1] == "all" || std::stoi(f[1]) == rank) ||
      !(f[3].empty() || std::stoll(f[3]) == step)) {
    return;
  }
  log("checkpoint", std::string("MOE_CHECKPOINT_FAULT: ") + action + " at '" + point + "'");
  if (action == "fail") {
    throw InvalidArgument(std::string("injected failure at '") + point + "' (MOE_CHECKPOINT_FAULT)");
  }
  if (action.rfind("pause", 0) == 0) {  // a slow save (a large model, a slow file system)
    std::this_thread::sleep_for(std::chrono::duration<double>(std::stod(action.substr(5))));
    return;
  }
  ::kill(::getpid(), SIGKILL);
}

// One file of tensors this rank writes; the CPU copies stay alive until written.
struct FileBuilder {
  std::vector<torch::Tensor> keep;
  std::vector<SafetensorsTensor> tensors;
  void add(const std::string& name, const torch::Tensor& value) {
    keep.push_back(value.detach().to(torch::kCPU).contiguous());
    const auto& t = keep.back();
    tensors.push_back({name, safetensors_dtype(t.scalar_type()), t.sizes().vec(), t.data_ptr()});
  }
  uint64_t bytes() const {
    uint64_t n = 0;
    for (const auto& t : keep) n += t.nbytes();
    return n;
  }
};

void add_written(CheckpointManifest& m, const std::string& file, const FileBuilder& b, const WrittenSafetensors& w,
                 int rank) {
  m.files[file] = {w.size, w.crc32, w.header_crc32, rank};
  for (size_t i = 0; i < b.tensors.size(); ++i) {
    m.tensors[b.tensors[i].name] = {file, b.tensors[i].dtype, b.tensors[i].shape, w.tensor_crc32[i]};
  }
}

// This rank's share: its files written into tmp_dir, described by a manifest of its own.
// writers: plan_writers'; moments: the full optimiser state of the parameters this rank writes.
CheckpointManifest write_rank_share(const CheckpointInputs& in, const std::map<std::string, int>& writers,
                                    const std::map<std::string, AdamMoments>& moments, const fs::path& tmp_dir,
                                    uint64_t* bytes) {
  const auto& topo = in.groups->topology;
  CheckpointManifest m;
  FileBuilder params, optim;
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : in.lm->named_parameters()) {
      if (writers.at(p.key()) != topo.rank) continue;
      params.add(p.key(), p.value().to(torch::kFloat32));
      if (const auto it = moments.find(p.key()); it != moments.end()) {
        optim.add(optimizer_key(p.key(), "exp_avg"), it->second.exp_avg.to(torch::kFloat32));
        optim.add(optimizer_key(p.key(), "exp_avg_sq"), it->second.exp_avg_sq.to(torch::kFloat32));
        optim.add(optimizer_key(p.key(), "step"), torch::full({}, double(it->second.step), torch::kFloat32));
      }
    }
  }
  fault_point("before_write", topo.rank, in.state.step);
  const auto model_file = rank_file("model", topo.rank, topo.world_size);
  const auto optim_file = rank_file("optimizer", topo.rank, topo.world_size);
  const std::map<std::string, std::string> meta = {{"format", "pt"}};  // what transformers expects
  add_written(m, model_file, params, write_safetensors((tmp_dir / model_file).string(), params.tensors, meta),
              topo.rank);
  add_written(m, optim_file, optim, write_safetensors((tmp_dir / optim_file).string(), optim.tensors, meta),
              topo.rank);
  fault_point("written", topo.rank, in.state.step);
  *bytes = params.bytes() + optim.bytes();
  m.rng.assign(topo.world_size, RankRng{});
  m.rng[topo.rank] = in.state.rng;
  return m;
}

CheckpointManifest common_fields(const CheckpointInputs& in) {
  CheckpointManifest m;
  const auto& topo = in.groups->topology;
  m.step = in.state.step;
  m.tokens = in.state.tokens;
  m.state = in.state;
  m.train_tokens = in.train_tokens;
  m.seq_len = in.config->data.seq_len;
  m.world = topo.world_size;
  m.ep = topo.ep_size;
  m.edp = topo.edp_size;
  m.config = config_values(*in.config);
  return m;
}

void add_plain_file(CheckpointManifest& m, const fs::path& dir, const std::string& name, const std::string& bytes) {
  DurableFile f((dir / name).string());
  f.write(bytes.data(), bytes.size());
  f.close();
  m.files[name] = {f.size(), f.crc32(), 0, 0};
}

// The save after step_N.tmp/ exists: every rank writes its share, rank 0 writes the manifest,
// renames the directory into place and replaces `latest`. An error on any rank throws on all.
void write_and_publish(const CheckpointInputs& in, const fs::path& dir, const std::string& name,
                       uint64_t* bytes_this_rank) {
  auto& world = *in.groups->world;
  const auto& topo = in.groups->topology;
  const auto final_dir = dir / name, tmp_dir = dir / (name + ".tmp");
  const auto context = "saving checkpoint " + final_dir.string();
  // Collective, so before anything on one rank can throw: a sharded optimiser gathers the moments
  // of the parameters this rank writes.
  const auto writers = plan_writers(in.lm, topo);
  const auto moments = in.optimizer ? in.optimizer->gather_moments([&](const std::string& name) {
    const auto it = writers.find(name);
    return it != writers.end() && it->second == topo.rank;
  }) : std::map<std::string, AdamMoments>{};
  std::string error;
  std::string share;
  try {
    auto mine = write_rank_share(in, writers, moments, tmp_dir, bytes_this_rank);
    auto common = common_fields(in);
    common.files = std::move(mine.files);
    common.tensors = std::move(mine.tensors);
    common.rng = std::move(mine.rng);
    share = common.to_json();
  } catch (const std::exception& e) {
    error = e.what();
  }
  parallel::agree_or_throw(world, error, context);
  const auto shares = parallel::all_gather_strings(world, share);

  if (topo.rank == 0) {
    try {
      auto manifest = common_fields(in);
      manifest.rng.assign(topo.world_size, RankRng{});
      for (int r = 0; r < topo.world_size; ++r) {
        auto part = CheckpointManifest::parse(shares[r], "rank " + std::to_string(r) + "'s share");
        manifest.files.insert(part.files.begin(), part.files.end());
        manifest.tensors.insert(part.tensors.begin(), part.tensors.end());
        manifest.rng[r] = part.rng[r];
      }
      add_plain_file(manifest, tmp_dir, "config.ini", dump_config(*in.config));
      for (const auto& file : in.tokenizer_files) {
        add_plain_file(manifest, tmp_dir, fs::path(file).filename().string(), read_small_file(file, uint64_t(1) << 30));
      }
      add_plain_file(manifest, tmp_dir, "manifest.json", manifest.to_json());
      manifest.files.erase("manifest.json");  // it cannot list its own checksum
      fsync_directory(tmp_dir.string());
      fault_point("manifest", topo.rank, in.state.step);
      if (fs::exists(final_dir)) {
        replace_directory(tmp_dir, final_dir, dir / (name + ".old.tmp"));
      } else {
        rename_path(tmp_dir.string(), final_dir.string());
      }
      fsync_directory(dir.string());
      fault_point("renamed", topo.rank, in.state.step);
      replace_file_durably((dir / "latest").string(), name + "\n");
      fault_point("latest", topo.rank, in.state.step);
      remove_interrupted_saves(dir);
      prune_step_dirs(dir, in.config->checkpoint.keep, name, in.state.step);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  parallel::agree_or_throw(world, error, context);
}

}  // namespace

SavedCheckpoint save_checkpoint(const CheckpointInputs& in) {
  const auto start = std::chrono::steady_clock::now();
  auto& world = *in.groups->world;
  const auto& topo = in.groups->topology;
  const auto dir = fs::path(in.config->train.out_dir) / "checkpoints";
  const auto name = step_dir_name(in.state.step);
  const auto final_dir = dir / name, tmp_dir = dir / (name + ".tmp");
  const auto context = "saving checkpoint " + final_dir.string();
  std::string error;
  if (topo.rank == 0) {
    try {
      fs::create_directories(dir);
      remove_interrupted_saves(dir);
      fs::create_directories(tmp_dir);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  parallel::agree_or_throw(world, error, context);

  SavedCheckpoint saved;
  try {
    write_and_publish(in, dir, name, &saved.bytes_this_rank);
  } catch (...) {
    // Every rank is past its writes (the error was agreed on): free the space at once, so that the
    // next try (after a full disk, say) has it, instead of when the next run starts.
    if (topo.rank == 0) {
      try {
        remove_tree(tmp_dir.string());  // not fs::remove_all: libtorch.so's copy of it crashes (common/remove_tree.h)
      } catch (const std::exception&) {
        // The save's own error is the one to report; the next run's start removes what is left.
      }
    }
    throw;
  }
  for (const auto& bytes : parallel::all_gather_strings(world, std::to_string(saved.bytes_this_rank))) {
    saved.bytes_per_rank.push_back(std::stoull(bytes));
    saved.bytes_total += saved.bytes_per_rank.back();
  }
  saved.dir = final_dir.string();
  saved.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return saved;
}

}  // namespace moe::trainer
