#include "trainer/checkpoint/checkpoint_reader.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "common/check.h"
#include "common/durable_file.h"
#include "common/safetensors_torch.h"
#include "trainer/checkpoint/checkpoint_dirs.h"
#include "trainer/config_cli.h"

namespace fs = std::filesystem;

namespace moe::trainer {

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

void restore_optimizer(const CheckpointReader& reader, model::CausalLM& lm, TrainingOptimizer& optimizer) {
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
      optimizer.set_moments(p.key(), m);
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
