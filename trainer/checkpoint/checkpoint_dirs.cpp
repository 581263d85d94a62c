#include "trainer/checkpoint/checkpoint_dirs.h"

#include <fcntl.h>
#include <stdio.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <regex>

#include "common/check.h"
#include "common/durable_file.h"
#include "common/log.h"
#include "common/remove_tree.h"

namespace fs = std::filesystem;

namespace moe::trainer {

namespace {

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

void remove_interrupted_saves(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    const bool tmp = name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0;
    if (tmp && (name.rfind("step_", 0) == 0 || name == "latest.tmp")) {
      log_rank0("checkpoint", "removing '" + e.path().string() + "', left by an interrupted save");
      remove_tree(e.path().string());
    }
  }
}

void prune_step_dirs(const fs::path& dir, int64_t keep, const std::string& latest, int64_t step_saved) {
  auto steps = step_entries(dir);
  steps.erase(std::remove_if(steps.begin(), steps.end(), [&](const auto& s) { return s.first > step_saved; }),
              steps.end());
  for (size_t i = 0; i + size_t(keep) < steps.size(); ++i) {  // the oldest, by step
    if (steps[i].second != latest) remove_tree((dir / steps[i].second).string());
  }
}

void replace_directory(const fs::path& fresh, const fs::path& target, const fs::path& aside) {
  if (::renameat2(AT_FDCWD, fresh.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    remove_tree(fresh.string());  // now the old directory
    return;
  }
  rename_path(target.string(), aside.string());
  rename_path(fresh.string(), target.string());
}

}  // namespace moe::trainer
