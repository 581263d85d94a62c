#include "trainer/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>

#include "common/check.h"
#include "common/safetensors_torch.h"
#include "common/durable_file.h"
#include "common/log.h"
#include "common/remove_tree.h"
#include "parallel/collective_text.h"
#include "parallel/gradient_sync.h"
#include "trainer/config_cli.h"

namespace fs = std::filesystem;

namespace moe::trainer {

namespace {

std::string rank_file(const char* kind, int rank, int world) {
  char name[64];
  std::snprintf(name, sizeof(name), "%s-%05d-of-%05d.safetensors", kind, rank, world);
  return name;
}

std::string optimizer_key(const std::string& param, const char* field) { return "optimizer." + param + "." + field; }

// The test hook: MOE_CHECKPOINT_FAULT=<point>[:<rank>|all[:kill|fail[:<step>]]].
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
  ::kill(::getpid(), SIGKILL);
}

// Which world rank writes each parameter of this rank's model: an expert by the replica
// (expert id % edp) of the EP rank that holds it; dense parameters spread over all ranks, largest
// first to the least loaded (every rank computes the same plan from the same names).
std::map<std::string, int> plan_writers(const model::CausalLM& lm, const parallel::Topology& topo) {
  std::map<std::string, int> writer;
  std::vector<std::pair<int64_t, std::string>> dense;
  int64_t expert_bytes = 0;  // of this rank's experts, all layers
  for (const auto& p : lm->named_parameters()) {
    const auto id = model::routed_expert_of(p.key());
    if (!id) {
      dense.emplace_back(int64_t(p.value().nbytes()), p.key());
      continue;
    }
    expert_bytes += int64_t(p.value().nbytes());
    const int64_t expert = id->second;
    const int ep_rank = int(expert / topo.experts_per_rank), edp_rank = int(expert % topo.edp_size);
    writer[p.key()] = edp_rank * topo.ep_size + ep_rank;
  }
  std::vector<int64_t> load(topo.world_size, 0);
  const int64_t per_expert = topo.experts_per_rank > 0 ? expert_bytes / topo.experts_per_rank : 0;
  for (int r = 0; r < topo.world_size; ++r) {
    const int ep_rank = r % topo.ep_size, edp_rank = r / topo.ep_size;
    for (int64_t e = ep_rank * topo.experts_per_rank; e < (ep_rank + 1) * topo.experts_per_rank; ++e) {
      if (e % topo.edp_size == edp_rank) load[r] += per_expert;
    }
  }
  std::sort(dense.begin(), dense.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (const auto& [bytes, name] : dense) {
    const int r = int(std::min_element(load.begin(), load.end()) - load.begin());
    writer[name] = r;
    load[r] += bytes;
  }
  return writer;
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
CheckpointManifest write_rank_share(const CheckpointInputs& in, const fs::path& tmp_dir, uint64_t* bytes) {
  const auto& topo = in.groups->topology;
  CheckpointManifest m;
  const auto writers = plan_writers(in.lm, topo);
  FileBuilder params, optim;
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : in.lm->named_parameters()) {
      if (writers.at(p.key()) != topo.rank) continue;
      params.add(p.key(), p.value().to(torch::kFloat32));
      if (!in.optimizer) continue;
      if (const auto moments = in.optimizer->moments_of(p.value())) {
        optim.add(optimizer_key(p.key(), "exp_avg"), moments->exp_avg.to(torch::kFloat32));
        optim.add(optimizer_key(p.key(), "exp_avg_sq"), moments->exp_avg_sq.to(torch::kFloat32));
        optim.add(optimizer_key(p.key(), "step"), torch::full({}, double(moments->step), torch::kFloat32));
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

std::optional<int64_t> step_of_dir_name(const std::string& name) {
  static const std::regex pattern(R"(step_(\d{8}))");
  std::smatch m;
  if (!std::regex_match(name, m, pattern)) return std::nullopt;
  return std::stoll(m[1].str());
}

// The step directories in `dir` (a checkpoints/ directory): (step, name), by step.
std::vector<std::pair<int64_t, std::string>> step_entries(const fs::path& dir) {
  std::vector<std::pair<int64_t, std::string>> steps;
  if (!fs::is_directory(dir)) return steps;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (const auto step = step_of_dir_name(name); step && e.is_directory()) steps.emplace_back(*step, name);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

// Of the step directories up to this save's, the newest `keep` stay (the one `latest` names among
// them). Later steps, left by a run that was resumed from an earlier checkpoint, are not touched.
void prune(const fs::path& dir, int64_t keep, const std::string& latest, int64_t step_saved) {
  auto steps = step_entries(dir);
  steps.erase(std::remove_if(steps.begin(), steps.end(), [&](const auto& s) { return s.first > step_saved; }),
              steps.end());
  for (size_t i = 0; i + size_t(keep) < steps.size(); ++i) {  // the oldest, by step
    if (steps[i].second != latest) remove_tree((dir / steps[i].second).string());
  }
}

// Leftovers of interrupted saves: step_N.tmp and step_N.old directories, latest.tmp.
void remove_stale(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    const bool tmp = name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0;
    if (tmp && (name.rfind("step_", 0) == 0 || name == "latest.tmp")) {
      log_rank0("checkpoint", "removing '" + e.path().string() + "', left by an interrupted save");
      remove_tree(e.path().string());
    }
  }
}

// A step saved again (a run resumed from an earlier step of its own directory): the new directory
// takes the old one's place in one atomic exchange, so that `latest`, which may name it, never
// names a missing directory. File systems without RENAME_EXCHANGE get two renames instead.
void replace_directory(const fs::path& fresh, const fs::path& target, const fs::path& aside) {
  if (::renameat2(AT_FDCWD, fresh.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    remove_tree(fresh.string());  // now the old directory
    return;
  }
  rename_path(target.string(), aside.string());
  rename_path(fresh.string(), target.string());
}

// The model-ep*.pt files of the checkpoints before the training-state format.
bool has_torchscript_files(const fs::path& dir) {
  if (!fs::is_directory(dir)) return false;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".pt") return true;
  }
  return false;
}

}  // namespace

std::string step_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  return name;
}

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
      remove_stale(dir);
      fs::create_directories(tmp_dir);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  parallel::agree_or_throw(world, error, context);

  SavedCheckpoint saved;
  std::string share;
  try {
    auto mine = write_rank_share(in, tmp_dir, &saved.bytes_this_rank);
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
      remove_stale(dir);
      prune(dir, in.config->checkpoint.keep, name, in.state.step);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  parallel::agree_or_throw(world, error, context);
  for (const auto& bytes : parallel::all_gather_strings(world, std::to_string(saved.bytes_this_rank))) {
    saved.bytes_per_rank.push_back(std::stoull(bytes));
    saved.bytes_total += saved.bytes_per_rank.back();
  }
  saved.dir = final_dir.string();
  saved.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return saved;
}

std::vector<std::string> step_dirs(const std::string& run_dir) {
  const auto dir = fs::path(run_dir) / "checkpoints";
  std::vector<std::string> paths;
  for (const auto& [step, name] : step_entries(dir)) paths.push_back((dir / name).string());
  return paths;
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  const auto latest = fs::path(run_dir) / "checkpoints" / "latest";
  if (!fs::exists(latest)) return std::nullopt;
  return resolve_checkpoint_dir((fs::path(run_dir) / "checkpoints").string());
}

std::string resolve_checkpoint_dir(const std::string& path) {
  fs::path dir = path;
  MOE_CHECK(fs::is_directory(dir), "checkpoint '", path, "' not found (give a run directory or checkpoints/step_N)");
  if (fs::exists(dir / "manifest.json")) return dir.string();
  if (fs::is_directory(dir / "checkpoints")) dir /= "checkpoints";
  if (fs::exists(dir / "latest")) {
    auto name = read_small_file((dir / "latest").string(), 256);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
    const bool old_name = std::regex_match(name, std::regex(R"(step_\d{6})"));
    MOE_CHECK(!old_name || !has_torchscript_files(dir / name), "'", (dir / name).string(),
              "' is a checkpoint of an earlier format (TorchScript .pt files), which this version does not read: "
              "train into another --train.out_dir");
    MOE_CHECK(step_of_dir_name(name).has_value(), "'", (dir / "latest").string(), "' does not name a step directory");
    MOE_CHECK(fs::exists(dir / name / "manifest.json"), "'", (dir / "latest").string(), "' names '", name,
              "', which is not a complete checkpoint");
    return (dir / name).string();
  }
  MOE_CHECK(!has_torchscript_files(path), "'", path, "' is a checkpoint of an earlier format (TorchScript .pt "
            "files), which this version does not read");
  throw InvalidArgument("no checkpoint in '" + path + "' (no manifest.json, no checkpoints/latest)");
}

CheckpointReader::CheckpointReader(const std::string& step_dir) : dir_(step_dir) {
  const auto manifest_path = (fs::path(step_dir) / "manifest.json").string();
  MOE_CHECK(fs::exists(manifest_path), "'", step_dir, "' is not a checkpoint (no manifest.json)");
  manifest_ = CheckpointManifest::parse(read_small_file(manifest_path, CheckpointManifest::kMaxBytes), manifest_path);
  for (const auto& [name, file] : manifest_.files) {
    const auto path = fs::path(step_dir) / name;
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    MOE_CHECK(!ec, "checkpoint '", step_dir, "': file '", name, "' listed in the manifest is missing (", ec.message(),
              ")");
    MOE_CHECK(size == file.size, "checkpoint file '", path.string(), "' has ", size, " bytes, the manifest says ",
              file.size, " (truncated or replaced)");
  }
}

CheckpointReader::~CheckpointReader() = default;

const SafetensorsFile& CheckpointReader::open(const std::string& file) const {
  auto& slot = files_[file];
  if (!slot) {
    const auto path = (fs::path(dir_) / file).string();
    auto opened = std::make_unique<SafetensorsFile>(path);
    const auto& listed = manifest_.files.at(file);
    MOE_CHECK(opened->file_size() == listed.size, "checkpoint file '", path, "' has ", opened->file_size(),
              " bytes, the manifest says ", listed.size);
    MOE_CHECK(crc32_of(opened->header_bytes().data(), opened->header_bytes().size()) == listed.header_crc32,
              "checkpoint file '", path, "': its header fails the manifest's checksum (corrupt)");
    slot = std::move(opened);
  }
  return *slot;
}

torch::Tensor CheckpointReader::read(const std::string& name) const {
  const auto it = manifest_.tensors.find(name);
  MOE_CHECK(it != manifest_.tensors.end(), "checkpoint '", dir_, "' has no tensor ", name);
  const auto& listed = it->second;
  const auto& file = open(listed.file);
  const auto* entry = file.find(name);
  MOE_CHECK(entry != nullptr, "checkpoint file '", file.path(), "' lacks tensor ", name, " that the manifest lists");
  MOE_CHECK(entry->dtype == listed.dtype && entry->shape == listed.shape, "checkpoint file '", file.path(),
            "': tensor ", name, " is ", entry->dtype, " ", c10::IntArrayRef(entry->shape), ", the manifest says ",
            listed.dtype, " ", c10::IntArrayRef(listed.shape));
  auto value = read_tensor(file, *entry);
  MOE_CHECK(crc32_of(value.data_ptr(), value.nbytes()) == listed.crc32, "checkpoint file '", file.path(), "': tensor ",
            name, " fails its checksum (corrupt file)");
  return value;
}

TrainConfig CheckpointReader::config() const {
  return config_from_values(manifest_.config, (fs::path(dir_) / "manifest.json").string());
}

std::string CheckpointReader::verified_file(const std::string& name) const {
  const auto it = manifest_.files.find(name);
  if (it == manifest_.files.end()) return "";
  const auto path = (fs::path(dir_) / name).string();
  const auto bytes = read_small_file(path, it->second.size);
  MOE_CHECK(crc32_of(bytes.data(), bytes.size()) == it->second.crc32, "checkpoint file '", path,
            "' fails the manifest's checksum (corrupt)");
  return path;
}

std::string CheckpointReader::tokenizer_path() const {
  for (const auto* name : {"tokenizer.model", "tokenizer.json"}) {
    const auto path = verified_file(name);
    if (path.empty()) continue;
    verified_file("tokenizer_config.json");
    return path;
  }
  return "";
}

void restore_parameters(const CheckpointReader& reader, model::CausalLM& lm) {
  torch::NoGradGuard no_grad;
  for (auto& p : lm->named_parameters()) {
    MOE_CHECK(reader.has(p.key()), "checkpoint '", reader.dir(), "' lacks parameter ", p.key());
    const auto value = reader.read(p.key());
    MOE_CHECK(value.sizes() == p.value().sizes(), "checkpoint '", reader.dir(), "': parameter ", p.key(),
              " has shape ", value.sizes(), ", the model has ", p.value().sizes());
    p.value().copy_(value);
  }
}

void restore_optimizer(const CheckpointReader& reader, model::CausalLM& lm, FusedAdamW& optimizer) {
  for (const auto& p : lm->named_parameters()) {
    if (!reader.has(optimizer_key(p.key(), "exp_avg"))) continue;
    AdamMoments m;
    m.exp_avg = reader.read(optimizer_key(p.key(), "exp_avg"));
    m.exp_avg_sq = reader.read(optimizer_key(p.key(), "exp_avg_sq"));
    const auto step = reader.read(optimizer_key(p.key(), "step"));
    MOE_CHECK(step.numel() == 1, "checkpoint '", reader.dir(), "': ", optimizer_key(p.key(), "step"),
              " is not a scalar");
    const double steps = step.to(torch::kFloat64).item<double>();
    MOE_CHECK(std::isfinite(steps) && steps >= 0 && steps == std::floor(steps), "checkpoint '", reader.dir(), "': ",
              optimizer_key(p.key(), "step"), " = ", steps, " is not a step count");
    m.step = int64_t(steps);
    try {
      optimizer.set_moments(p.value(), m);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument("checkpoint '" + reader.dir() + "': " + p.key() + ": " + e.what());
    }
  }
}

LoadedModel load_model_for_inference(const std::string& path) {
  LoadedModel loaded;
  loaded.step_dir = resolve_checkpoint_dir(path);
  const CheckpointReader reader(loaded.step_dir);
  loaded.config = reader.config();
  loaded.lm = model::CausalLM(loaded.config.model);
  restore_parameters(reader, loaded.lm);
  for (const auto& p : loaded.lm->named_parameters()) {
    MOE_CHECK(torch::isfinite(p.value()).all().item<bool>(), "checkpoint '", loaded.step_dir, "': parameter ", p.key(),
              " holds non-finite values (the run diverged); use an earlier checkpoint");
  }
  loaded.tokenizer_path = reader.tokenizer_path();
  loaded.lm->eval();
  return loaded;
}

}  // namespace moe::trainer
