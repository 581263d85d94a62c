#include "trainer/data/prepare.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string_view>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/check.h"
#include "common/log.h"
#include "common/remove_tree.h"
#include "trainer/data/token_shard.h"
#include "trainer/data/tokenizer.h"

namespace fs = std::filesystem;

namespace moe::trainer {

namespace {

using Clock = std::chrono::steady_clock;

// "\r[prepare] <stage> 45% (1.2 / 2.6 MB) ..." on stderr, at most every half second.
class Progress {
 public:
  Progress(bool enabled, std::string stage, uint64_t total_bytes)
      : enabled_(enabled), stage_(std::move(stage)), total_(std::max<uint64_t>(1, total_bytes)) {}
  void update(uint64_t bytes, const std::string& extra = "", bool force = false) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(500)) return;
    last_ = now;
    std::fprintf(stderr, "\r[prepare] %s %3.0f%% (%.1f / %.1f MB)%s   ", stage_.c_str(), 100.0 * bytes / total_,
                 bytes / 1e6, total_ / 1e6, extra.c_str());
    std::fflush(stderr);
  }
  void done(uint64_t bytes, const std::string& extra) {
    update(bytes, extra, true);
    if (enabled_) std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  std::string stage_;
  uint64_t total_;
  Clock::time_point last_{};
};

uint64_t total_bytes(const std::vector<std::string>& files) {
  uint64_t n = 0;
  for (const auto& f : files) n += fs::file_size(f);
  return n;
}

// Writes a split's shards "<dir>/<split>-00000.bin", ... of at most shard_tokens tokens (a
// document is never split).
class ShardSet {
 public:
  ShardSet(std::string dir, std::string split, uint64_t shard_tokens, uint32_t vocab, uint32_t eos)
      : dir_(std::move(dir)), split_(std::move(split)), shard_tokens_(shard_tokens), vocab_(vocab), eos_(eos) {}
  void add(const std::vector<int>& tokens) {
    if (!writer_ || writer_->count() >= shard_tokens_) roll();
    writer_->append_document(tokens);
    tokens_ += tokens.size() + 1;
  }
  void close() {
    if (writer_) writer_->close();
    writer_.reset();
  }
  uint64_t shards() const { return shards_; }
  uint64_t tokens() const { return tokens_; }

 private:
  void roll() {
    close();
    writer_ = std::make_unique<TokenShardWriter>(shard_path(dir_, split_, shards_++), vocab_, eos_);
  }
  std::string dir_, split_;
  uint64_t shard_tokens_;
  uint32_t vocab_, eos_;
  std::unique_ptr<TokenShardWriter> writer_;
  uint64_t shards_ = 0, tokens_ = 0;
};

// The outputs are written into <out_dir>/.prepare.tmp/ and moved into out_dir only when the whole
// job has succeeded: a failure leaves out_dir exactly as it was (the guard removes the staging).
class Staging {
 public:
  explicit Staging(const std::string& out_dir) : out_(out_dir), dir_(fs::path(out_dir) / ".prepare.tmp") {
    fs::create_directories(out_);
    remove_tree(dir_.string());  // left by a run that was killed
    fs::create_directories(dir_);
  }
  ~Staging() {
    try {
      remove_tree(dir_.string());
    } catch (const std::exception&) {  // never mask the error that unwinds
    }
  }
  std::string dir() const { return dir_.string(); }
  /// Replaces the old outputs by the staged ones.
  void commit() {
    for (const auto* split : {"train", "val"}) {
      for (const auto& path : list_shards(out_.string(), split)) fs::remove(path);
    }
    for (const auto& path : tokenizer_files(out_.string())) fs::remove(path);  // may be of the other kind
    for (const auto& e : fs::directory_iterator(dir_)) fs::rename(e.path(), out_ / e.path().filename());
  }

 private:
  fs::path out_, dir_;
};

// SentencePiece skips longer lines (max_sentence_length): a corpus of one huge line would train on
// nothing. Longer lines are cut, at a space where there is one, never inside a UTF-8 character.
constexpr size_t kMaxTrainingLine = 8192;

size_t training_piece_length(std::string_view line, size_t limit) {
  if (line.size() <= limit) return line.size();
  const auto space = line.rfind(' ', limit - 1);
  if (space != std::string_view::npos && space > limit / 2) return space + 1;
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;  // a continuation byte
  return cut > 0 ? cut : limit;
}

// Lines of the corpus for tokenizer training, through a temporary file (the trainer pulls lines,
// the reader pushes documents).
std::string tokenizer_training_text(const std::vector<std::string>& files, const PrepareOptions& o, uint64_t bytes,
                                    const std::string& dir) {
  const auto path = (fs::path(dir) / "tokenizer-input.tmp").string();
  std::ofstream out(path, std::ios::binary);
  Progress progress(o.progress, "reading for the tokenizer", bytes);
  const auto stats = read_corpus(files, o.corpus, [&](const std::string& doc) {
    size_t start = 0;
    while (start < doc.size()) {
      const auto end = doc.find('\n', start);
      const auto line = doc.substr(start, end == std::string::npos ? std::string::npos : end - start);
      for (auto piece = std::string_view(line); !piece.empty();) {
        const auto cut = training_piece_length(piece, kMaxTrainingLine);
        out << piece.substr(0, cut) << '\n';
        piece.remove_prefix(cut);
      }
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }, [&](uint64_t b) { progress.update(b); });
  progress.done(stats.bytes, "");
  MOE_CHECK(stats.documents > 0, "no documents in the inputs (empty files, or every JSONL line skipped)");
  return path;
}

}  // namespace

std::string PrepareSummary::to_json() const {
  nlohmann::json j = {{"documents", documents},         {"train_documents", train_documents},
                      {"val_documents", val_documents}, {"train_tokens", train_tokens},
                      {"val_tokens", val_tokens},       {"train_shards", train_shards},
                      {"val_shards", val_shards},       {"bytes", bytes},
                      {"malformed_lines", malformed_lines}, {"skipped_files", skipped_files},
                      {"vocab_size", vocab_size},       {"seconds", seconds}};
  return j.dump();
}

PrepareSummary prepare_corpus(const PrepareOptions& o) {
  MOE_CHECK(!o.inputs.empty(), "no --input given");
  MOE_CHECK(!o.out_dir.empty(), "no --out_dir given");
  MOE_CHECK(o.val_fraction >= 0 && o.val_fraction < 0.5, "--val_fraction must be in [0, 0.5), got ", o.val_fraction);
  MOE_CHECK(o.shard_tokens > 0, "--shard_tokens must be positive");
  const auto t0 = Clock::now();
  PrepareSummary summary;
  const auto files = list_corpus_files(o.inputs, &summary.skipped_files);
  MOE_CHECK(!files.empty(), "no input files (a directory contributes .jsonl, .txt and extension-less files)");
  const uint64_t bytes = total_bytes(files);
  Staging staging(o.out_dir);
  const auto& out = staging.dir();

  std::string tokenizer_path;  // the user's file when given: errors name it, not the staged copy
  std::unique_ptr<Tokenizer> tokenizer_ptr;
  if (o.tokenizer.empty()) {
    tokenizer_path = (fs::path(out) / "tokenizer.model").string();
    const auto text = tokenizer_training_text(files, o, bytes, out);
    std::ifstream lines(text, std::ios::binary);
    log("prepare", "training a BPE tokenizer of " + std::to_string(o.vocab_size) + " pieces");
    SentencePieceTokenizer::train([&](std::string& line) { return bool(std::getline(lines, line)); }, o.vocab_size,
                                  tokenizer_path, o.threads > 0 ? o.threads : int(std::thread::hardware_concurrency()));
    fs::remove(text);
    tokenizer_ptr = Tokenizer::open(tokenizer_path);
  } else {
    tokenizer_path = o.tokenizer;
    tokenizer_ptr = Tokenizer::open(tokenizer_path);  // opened once: an HF tokenizer starts a Python helper
    const bool hf = fs::path(o.tokenizer).extension() == ".json";
    fs::copy_file(o.tokenizer, fs::path(out) / (hf ? "tokenizer.json" : "tokenizer.model"),
                  fs::copy_options::overwrite_existing);
    const auto hf_config = fs::path(o.tokenizer).parent_path() / "tokenizer_config.json";  // its BOS/EOS
    if (hf && fs::exists(hf_config)) fs::copy_file(hf_config, fs::path(out) / "tokenizer_config.json");
  }
  const Tokenizer& tokenizer = *tokenizer_ptr;
  summary.vocab_size = tokenizer.vocab_size();
  MOE_CHECK(tokenizer.eos_id() >= 0, "tokenizer '", tokenizer_path, "' has no EOS token (documents are separated by it)");

  const auto vocab = static_cast<uint32_t>(tokenizer.vocab_size()), eos = static_cast<uint32_t>(tokenizer.eos_id());
  ShardSet train(out, "train", o.shard_tokens, vocab, eos);
  ShardSet val(out, "val", o.shard_tokens, vocab, eos);
  const uint64_t period = o.val_fraction > 0 ? std::max<uint64_t>(2, std::llround(1.0 / o.val_fraction)) : 0;
  Progress progress(o.progress, "tokenizing", bytes);
  const auto encode_start = Clock::now();
  const auto stats = read_corpus(files, o.corpus, [&](const std::string& doc) {
    const bool held_out = period > 0 && summary.documents % period == period - 1;
    (held_out ? val : train).add(tokenizer.encode(doc));
    ++(held_out ? summary.val_documents : summary.train_documents);
    ++summary.documents;
  }, [&](uint64_t b) {
    const double secs = std::chrono::duration<double>(Clock::now() - encode_start).count();
    progress.update(b, ", " + std::to_string(summary.documents) + " documents, " +
                           std::to_string(int64_t((train.tokens() + val.tokens()) / std::max(secs, 1e-9))) + " tok/s");
  });
  progress.done(stats.bytes, ", " + std::to_string(summary.documents) + " documents");
  MOE_CHECK(summary.train_documents > 0, "no documents in the inputs (empty files, or every JSONL line skipped)");
  train.close();
  val.close();
  summary.train_tokens = train.tokens();
  summary.val_tokens = val.tokens();
  summary.train_shards = train.shards();
  summary.val_shards = val.shards();
  summary.bytes = stats.bytes;
  summary.malformed_lines = stats.malformed_lines;
  summary.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::ofstream summary_file(fs::path(out) / "prepare.json");
  summary_file << summary.to_json() << "\n";
  summary_file.close();
  MOE_CHECK(summary_file.good(), "cannot write '", (fs::path(out) / "prepare.json").string(), "'");
  staging.commit();
  return summary;
}

}  // namespace moe::trainer
