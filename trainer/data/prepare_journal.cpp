#include "trainer/data/prepare_journal.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/durable_file.h"

namespace moe::trainer {

namespace {

const char* kJournal = "journal.json";

nlohmann::json position_json(const CorpusPosition& p) { return {{"file", p.file}, {"offset", p.offset}}; }
CorpusPosition position_of(const nlohmann::json& j) {
  return {j.at("file").get<uint64_t>(), j.at("offset").get<uint64_t>()};
}

nlohmann::json read_json(const CorpusStats& r) {
  return {{"documents", r.documents}, {"bytes", r.bytes}, {"malformed_lines", r.malformed_lines}};
}
CorpusStats read_of(const nlohmann::json& j) {
  CorpusStats r;
  r.documents = j.at("documents").get<uint64_t>();
  r.bytes = j.at("bytes").get<uint64_t>();
  r.malformed_lines = j.at("malformed_lines").get<uint64_t>();
  return r;
}

// The journal's JSON in `dir`, or null when there is none or it is damaged (a run that cannot read
// its journal starts over, which is always correct).
nlohmann::json read_json_journal(const std::string& dir) {
  const auto path = (std::filesystem::path(dir) / kJournal).string();
  if (!std::filesystem::exists(path)) return nullptr;
  return nlohmann::json::parse(read_small_file(path, 1 << 20), nullptr, /*allow_exceptions=*/false);
}

nlohmann::json shard_state(const ShardSet::State& s) {
  return {{"shards", s.shards}, {"tokens", s.tokens}, {"open_tokens", s.open_tokens}};
}

ShardSet::State shard_state(const nlohmann::json& j) {
  return {j.at("shards").get<uint64_t>(), j.at("tokens").get<uint64_t>(), j.at("open_tokens").get<uint64_t>()};
}

}  // namespace

void write_journal(const std::string& dir, const PrepareJournal& j) {
  const nlohmann::json doc = {
      {"command", j.command},
      {"tokenizer_ready", j.tokenizer_ready},
      {"position", position_json(j.position)},
      {"read", read_json(j.read)},
      {"train_documents", j.train_documents},
      {"val_documents", j.val_documents},
      {"train", shard_state(j.train)},
      {"val", shard_state(j.val)}};
  replace_file_durably((std::filesystem::path(dir) / kJournal).string(), doc.dump() + "\n");
}

std::optional<PrepareJournal> read_journal(const std::string& dir) {
  try {
    const auto doc = read_json_journal(dir);
    if (!doc.is_object()) return std::nullopt;
    PrepareJournal j;
    j.command = doc.at("command").get<std::string>();
    j.tokenizer_ready = doc.at("tokenizer_ready").get<bool>();
    j.position = position_of(doc.at("position"));
    j.read = read_of(doc.at("read"));
    j.train_documents = doc.at("train_documents").get<uint64_t>();
    j.val_documents = doc.at("val_documents").get<uint64_t>();
    j.train = shard_state(doc.at("train"));
    j.val = shard_state(doc.at("val"));
    return j;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

void write_part_journal(const std::string& dir, const PartJournal& j) {
  const nlohmann::json doc = {{"command", j.command},       {"position", position_json(j.position)},
                              {"read", read_json(j.read)},  {"chunks", j.chunks},
                              {"documents", j.documents},   {"complete", j.complete}};
  replace_file_durably((std::filesystem::path(dir) / kJournal).string(), doc.dump() + "\n");
}

std::optional<PartJournal> read_part_journal(const std::string& dir) {
  try {
    const auto doc = read_json_journal(dir);
    if (!doc.is_object()) return std::nullopt;
    PartJournal j;
    j.command = doc.at("command").get<std::string>();
    j.position = position_of(doc.at("position"));
    j.read = read_of(doc.at("read"));
    j.chunks = doc.at("chunks").get<uint64_t>();
    j.documents = doc.at("documents").get<uint64_t>();
    j.complete = doc.at("complete").get<bool>();
    return j;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace moe::trainer
