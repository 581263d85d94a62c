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

namespace {

// The number of lines before byte `offset` of `path` (for an error message of a reader that started
// mid-file).
uint64_t lines_before(const std::string& path, uint64_t offset) {
  std::ifstream in(path, std::ios::binary);
  uint64_t lines = 0;
  std::vector<char> chunk(1 << 20);
  while (offset > 0 && in) {
    in.read(chunk.data(), std::streamsize(std::min<uint64_t>(offset, chunk.size())));
    const auto n = static_cast<uint64_t>(in.gcount());
    lines += std::count(chunk.data(), chunk.data() + n, '\n');
    offset -= std::min(offset, n);
  }
  return lines;
}

}  // namespace

void read_corpus_range(const std::vector<std::string>& files, const CorpusOptions& options, const CorpusRange& range,
                       CorpusStats& stats, const std::function<void(std::string&, const CorpusPosition&)>& on_document,
                       const std::function<void(uint64_t)>& on_bytes) {
  auto emit = [&](std::string& text, const CorpusPosition& after) {
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) return;
    ++stats.documents;
    on_document(text, after);
  };
  for (uint64_t f = range.begin.file; f < files.size() && CorpusPosition{f, 0} < range.end; ++f) {
    const auto& path = files[f];
    const uint64_t start = f == range.begin.file ? range.begin.offset : 0;
    std::ifstream in(path, std::ios::binary);
    MOE_CHECK(in.good(), "cannot read '", path, "'");
    if (start > 0) in.seekg(std::streamoff(start));
    const bool jsonl = is_jsonl(path);
    const auto where = [&](uint64_t line_no) {  // "file:line" of an error
      return path + ":" + std::to_string(line_no + (start > 0 ? lines_before(path, start) : 0));
    };
    std::string line, text, why, document;
    uint64_t line_no = 0, offset = start;
    while ((!jsonl || CorpusPosition{f, offset} < range.end) && std::getline(in, line)) {
      ++line_no;
      offset += line.size() + 1;
      stats.bytes += line.size() + 1;
      if (on_bytes && line_no % 4096 == 0) on_bytes(stats.bytes);
      if (jsonl) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        if (parse_jsonl_line(line, text, why)) {
          emit(text, {f, offset});
        } else {
          MOE_CHECK(options.skip_malformed, where(line_no), ": malformed JSONL line (", why,
                    "); fix it or pass --skip_malformed to skip such lines");
          ++stats.malformed_lines;
        }
      } else if (const auto bad = invalid_utf8_at(line); bad != std::string::npos) {
        MOE_CHECK(options.skip_malformed, where(line_no), ": not UTF-8 text (byte ", bad + 1, " of the line is 0x",
                  std::hex, int(static_cast<unsigned char>(line[bad])), std::dec,
                  "): a binary file? Remove it from the inputs, or pass --skip_malformed to skip such lines");
        ++stats.malformed_lines;
      } else if (line == options.separator || (!line.empty() && line.back() == '\r' &&
                                               line.substr(0, line.size() - 1) == options.separator)) {
        emit(document, {f, offset});
        document.clear();
      } else {
        document += line;
        document += '\n';
      }
    }
    if (!jsonl) emit(document, {f + 1, 0});
  }
  if (on_bytes) on_bytes(stats.bytes);
}

CorpusStats read_corpus(const std::vector<std::string>& files, const CorpusOptions& options,
                        const std::function<void(const std::string&)>& on_document,
                        const std::function<void(uint64_t)>& on_bytes) {
  CorpusStats stats;
  read_corpus_range(files, options, CorpusRange{}, stats,
                    [&](std::string& text, const CorpusPosition&) { on_document(text); }, on_bytes);
  return stats;
}

uint64_t corpus_bytes(const std::vector<std::string>& files, const CorpusRange& range) {
  uint64_t n = 0;
  for (uint64_t f = range.begin.file; f < files.size() && CorpusPosition{f, 0} < range.end; ++f) {
    const uint64_t from = f == range.begin.file ? range.begin.offset : 0;
    const uint64_t to = f == range.end.file ? range.end.offset : fs::file_size(files[f]);
    n += to - std::min(to, from);
  }
  return n;
}

std::vector<CorpusRange> split_corpus(const std::vector<std::string>& files, int parts) {
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  for (const auto& f : files) total += sizes.emplace_back(fs::file_size(f));
  // The k-th cut: the first document start at or after byte k * total / parts of the whole corpus.
  const auto cut = [&](int k) -> CorpusPosition {
    uint64_t target = total / parts * k + total % parts * k / parts, before = 0;
    for (uint64_t f = 0; f < files.size(); before += sizes[f++]) {
      if (target >= before + sizes[f]) continue;
      const uint64_t at = target - before;
      if (at == 0 || !is_jsonl(files[f])) return {at == 0 ? f : f + 1, 0};
      std::ifstream in(files[f], std::ios::binary);  // the start of the line after byte at - 1
      in.seekg(std::streamoff(at - 1));
      std::string rest;
      std::getline(in, rest);
      const uint64_t line_start = at + rest.size();
      return line_start >= sizes[f] ? CorpusPosition{f + 1, 0} : CorpusPosition{f, line_start};
    }
    return {files.size(), 0};
  };
  std::vector<CorpusRange> ranges(size_t(std::max(parts, 1)));
  for (int k = 0; k < int(ranges.size()); ++k) {
    ranges[k].begin = cut(k);
    ranges[k].end = k + 1 < int(ranges.size()) ? cut(k + 1) : CorpusPosition{files.size(), 0};
  }
  return ranges;
}

}  // namespace moe::trainer
