#include "trainer/data/corpus_reader.h"

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

size_t invalid_utf8_at(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c == 0) return i;  // NUL: binary data, never text
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0, min = 0;
    if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07, min = 0x10000;
    else return i;
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8.
    if (cp < min || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return i;
    i += len;
  }
  return std::string::npos;
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
      } else if (const auto bad = invalid_utf8_at(line); bad != std::string::npos) {
        MOE_CHECK(options.skip_malformed, path, ":", line_no, ": not UTF-8 text (byte ", bad + 1, " of the line is 0x",
                  std::hex, int(static_cast<unsigned char>(line[bad])), std::dec,
                  "): a binary file? Remove it from the inputs, or pass --skip_malformed to skip such lines");
        ++stats.malformed_lines;
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
