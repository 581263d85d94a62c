// Reads pretraining documents from MiniMind's JSONL format (one {"text": ...} object per line) and
// from plain text files (documents separated by a separator line, by default an empty line).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moe::trainer {

struct CorpusOptions {
  std::string separator;        // plain text: a line equal to this ends a document ("" = empty line)
  bool skip_malformed = false;  // JSONL: skip and count a malformed line instead of failing
};

struct CorpusStats {
  uint64_t documents = 0, bytes = 0, malformed_lines = 0, skipped_files = 0;
};

/// Where reading goes on: byte `offset` of the file-th input file. Documents end at positions like
/// this (after a JSONL line, after a separator line, at a file's end), which is what resuming and
/// splitting the corpus between ranks start from.
struct CorpusPosition {
  uint64_t file = 0, offset = 0;
  bool operator<(const CorpusPosition& o) const { return file < o.file || (file == o.file && offset < o.offset); }
  bool operator==(const CorpusPosition& o) const { return file == o.file && offset == o.offset; }
};

/// The documents that start in [begin, end). A plain-text file is read whole by the range its start
/// falls in (its documents span lines); a JSONL file can be cut at any line.
struct CorpusRange {
  CorpusPosition begin;
  CorpusPosition end{UINT64_MAX, 0};
};

/// The input files, in a deterministic order: each path as given; a directory contributes its
/// regular files ending in .jsonl or .txt or with no extension, sorted by name (others, such as
/// fortune's .dat indexes, are skipped and counted). Refuses a path that does not exist.
std::vector<std::string> list_corpus_files(const std::vector<std::string>& inputs, uint64_t* skipped_files = nullptr);

/// Calls on_document(text) for every non-empty document of every file, in order. .jsonl files are
/// JSONL: a line that is not an object with a string "text" is an error naming the file and line
/// (moe::InvalidArgument), or with skip_malformed is counted and skipped. A plain-text line that is
/// not UTF-8 (or holds a NUL byte: binary data) is treated the same way. on_bytes(n) reports
/// progress in bytes read.
CorpusStats read_corpus(const std::vector<std::string>& files, const CorpusOptions& options,
                        const std::function<void(const std::string&)>& on_document,
                        const std::function<void(uint64_t)>& on_bytes = nullptr);

/// read_corpus over a range, continuing `stats` (the counts of what came before, on resume);
/// on_document(text, after) also gets the position after the document. on_bytes gets stats.bytes.
void read_corpus_range(const std::vector<std::string>& files, const CorpusOptions& options, const CorpusRange& range,
                       CorpusStats& stats, const std::function<void(std::string&, const CorpusPosition&)>& on_document,
                       const std::function<void(uint64_t)>& on_bytes = nullptr);

/// The bytes of the files that `range` covers (default: the whole corpus).
uint64_t corpus_bytes(const std::vector<std::string>& files, const CorpusRange& range = {});

/// The ranges that split the corpus into `parts` of about equal bytes, at line starts of JSONL
/// files and at the starts of plain-text files (a range may be empty).
std::vector<CorpusRange> split_corpus(const std::vector<std::string>& files, int parts);

/// Offset of the first byte of `text` that is not part of valid UTF-8 (or is NUL); npos if none.
size_t invalid_utf8_at(const std::string& text);

}  // namespace moe::trainer
