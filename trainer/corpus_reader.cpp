#include "trainer/corpus_reader.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/check.h"

namespace fs = std::filesystem;

namespace moe::trainer {

namespace {

bool is_jsonl(const std::string& path) { return fs::path(path).extension() == ".jsonl"; }

bool is_corpus_file(const fs::path& p) {
  const auto ext = p.extension().string();
  return ext.empty() || ext == ".jsonl" || ext == ".txt";
}

// The text of one JSONL line, or an error message in `why`.
bool parse_jsonl_line(const std::string& line, std::string& text, std::string& why) {
  const auto doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    why = "not valid JSON";
  } else if (!doc.is_object() || !doc.contains("text")) {
    why = "no \"text\" field";
  } else if (!doc["text"].is_string()) {
    why = "\"text\" is not a string";
  } else {
    text = doc["text"].get<std::string>();
    return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> list_corpus_files(const std::vector<std::string>& inputs, uint64_t* skipped_files) {
  std::vector<std::string> files;
  for (const auto& input : inputs) {
    MOE_CHECK(fs::exists(input), "input '", input, "' not found");
    if (!fs::is_directory(input)) {
      files.push_back(input);
      continue;
    }
    std::vector<std::string> in_dir;
    for (const auto& e : fs::directory_iterator(input)) {
      if (!e.is_regular_file() || fs::is_symlink(e.path())) continue;
      if (is_corpus_file(e.path())) {
        in_dir.push_back(e.path().string());
      } else if (skipped_files) {
        ++*skipped_files;
      }
    }
    std::sort(in_dir.begin(), in_dir.end());
    files.insert(files.end(), in_dir.begin(), in_dir.end());
  }
  return files;
}

CorpusStats read_corpus(const std::vector<std::string>& files, const CorpusOptions& options,
                        const std::function<void(const std::string&)>& on_document,
                        const std::function<void(uint64_t)>& on_bytes) {
  CorpusStats stats;
  auto emit = [&](const std::string& text) {
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) return;
    ++stats.documents;
    on_document(text);
  };
  for (const auto& path : files) {
    std::ifstream in(path, std::ios::binary);
    MOE_CHECK(in.good(), "cannot read '", path, "'");
    const bool jsonl = is_jsonl(path);
    std::string line, text, why, document;
    uint64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      stats.bytes += line.size() + 1;
      if (on_bytes && line_no % 4096 == 0) on_bytes(stats.bytes);
      if (jsonl) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        if (parse_jsonl_line(line, text, why)) {
          emit(text);
        } else {
          MOE_CHECK(options.skip_malformed, path, ":", line_no, ": malformed JSONL line (", why,
                    "); fix it or pass --skip_malformed to skip such lines");
          ++stats.malformed_lines;
        }
      } else if (line == options.separator || (!line.empty() && line.back() == '\r' &&
                                               line.substr(0, line.size() - 1) == options.separator)) {
        emit(document);
        document.clear();
      } else {
        document += line;
        document += '\n';
      }
    }
    if (!jsonl) emit(document);
  }
  if (on_bytes) on_bytes(stats.bytes);
  return stats;
}

}  // namespace moe::trainer
