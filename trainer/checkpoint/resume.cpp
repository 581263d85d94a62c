#include "trainer/checkpoint/resume.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/check.h"
#include "common/durable_file.h"
#include "trainer/config_cli.h"

namespace moe::trainer {

namespace {

// The fields that shape the parameters, with intermediate_size resolved.
std::vector<std::pair<std::string, std::string>> parameter_shape(const model::ModelConfig& m) {
  auto b = [](bool v) { return std::string(v ? "true" : "false"); };
  return {{"model.hidden_size", std::to_string(m.hidden_size)},
          {"model.num_hidden_layers", std::to_string(m.num_hidden_layers)},
          {"model.num_attention_heads", std::to_string(m.num_attention_heads)},
          {"model.num_key_value_heads", std::to_string(m.num_key_value_heads)},
          {"model.intermediate_size", std::to_string(m.resolved_intermediate_size())},
          {"model.vocab_size", std::to_string(m.vocab_size)},
          {"model.use_moe", b(m.use_moe)},
          {"model.n_routed_experts", std::to_string(m.use_moe ? m.n_routed_experts : 0)},
          {"model.n_shared_experts", std::to_string(m.use_moe ? m.n_shared_experts : 0)}};
}

int64_t global_batch(const TrainConfig& c, int world) { return c.train.micro_batch * c.train.grad_accum * world; }

}  // namespace

std::vector<std::string> changed_settings(const TrainConfig& before, const TrainConfig& after) {
  std::vector<std::string> changes;
  const auto old_values = config_values(before);
  for (const auto& [key, value] : config_values(after)) {
    const auto it = old_values.find(key);
    if (it != old_values.end() && it->second == value) continue;
    changes.push_back(key + " " + (it == old_values.end() ? "(unset)" : it->second) + " -> " + value);
  }
  return changes;
}

std::vector<std::string> parameter_shape_mismatches(const model::ModelConfig& saved, const model::ModelConfig& now) {
  std::vector<std::string> mismatches;
  const auto before = parameter_shape(saved), after = parameter_shape(now);
  for (size_t i = 0; i < before.size(); ++i) {
    if (before[i].second != after[i].second) {
      mismatches.push_back(before[i].first + " " + before[i].second + " (saved) vs " + after[i].second + " (now)");
    }
  }
  return mismatches;
}

std::vector<std::string> check_resumable(const CheckpointManifest& saved, const TrainConfig& saved_config,
                                         const TrainConfig& now, uint64_t train_tokens, int world,
                                         const std::string& what) {
  auto mismatches = parameter_shape_mismatches(saved_config.model, now.model);
  if (saved.seq_len != now.data.seq_len) {
    mismatches.push_back("data.seq_len " + std::to_string(saved.seq_len) + " (saved) vs " +
                         std::to_string(now.data.seq_len) + " (now): the data position counts windows of it");
  }
  if (saved_config.data.seed != now.data.seed) {
    mismatches.push_back("data.seed " + std::to_string(saved_config.data.seed) + " (saved) vs " +
                         std::to_string(now.data.seed) + " (now): the data position is in its shuffle order");
  }
  if (saved.train_tokens != train_tokens) {
    mismatches.push_back("training data of " + std::to_string(saved.train_tokens) + " tokens (saved) vs " +
                         std::to_string(train_tokens) + " (now): the data position refers to the saved stream");
  }
  if (!mismatches.empty()) {
    std::ostringstream os;
    os << what << " cannot continue this run; these differ:";
    for (const auto& m : mismatches) os << "\n  " << m;
    throw InvalidArgument(os.str());
  }

  std::vector<std::string> notes;
  for (const auto& change : changed_settings(saved_config, now)) {
    if (change.rfind("checkpoint.resume ", 0) == 0 || change.rfind("checkpoint.init_from ", 0) == 0) continue;
    notes.push_back(change);
  }
  if (saved.world != world) {
    notes.push_back("ranks " + std::to_string(saved.world) + " (ep " + std::to_string(saved.ep) + " x edp " +
                    std::to_string(saved.edp) + ") -> " + std::to_string(world));
  }
  const int64_t old_batch = global_batch(saved_config, saved.world), new_batch = global_batch(now, world);
  if (old_batch != new_batch) {
    notes.push_back("global batch " + std::to_string(old_batch) + " -> " + std::to_string(new_batch) +
                    " sequences: the continued run is not the one the checkpoint's run would have been");
  }
  return notes;
}

void truncate_metrics(const std::string& path, int64_t step) {
  if (!std::filesystem::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
    if (j["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  replace_file_durably(path, kept);
}

}  // namespace moe::trainer
