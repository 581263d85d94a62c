#include "trainer/data/prepare.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string_view>
#include <nlohmann/json.hpp>
#include <optional>
#include <signal.h>
#include <thread>
#include <unistd.h>

#include "common/check.h"
#include "common/log.h"
#include "common/resident_memory.h"
#include "common/remove_tree.h"
#include "trainer/data/document_parts.h"
#include "trainer/data/encode_pipeline.h"
#include "trainer/data/prepare_journal.h"
#include "trainer/data/prepare_progress.h"
#include "trainer/data/shard_set.h"
#include "trainer/data/token_shard.h"
#include "trainer/data/tokenizer.h"

namespace fs = std::filesystem;

namespace moe::trainer {

namespace {

using Clock = std::chrono::steady_clock;

// The outputs are written into <out_dir>/.prepare.tmp/ and moved into out_dir only when the whole
// job has succeeded: a failure leaves out_dir exactly as it was (the guard removes the staging). A
// kill leaves the staging and its journal, from which the same command resumes.
class Staging {
 public:
  explicit Staging(const std::string& out_dir) : out_(out_dir), dir_(fs::path(out_dir) / ".prepare.tmp") {
    fs::create_directories(dir_);
  }
  ~Staging() {
    try {
      remove_tree(dir_.string());
    } catch (const std::exception&) {  // never mask the error that unwinds
    }
  }
  std::string dir() const { return dir_.string(); }
  /// The journal of an interrupted run of this command, if there is one; else an empty staging.
  std::optional<PrepareJournal> resume(const std::string& command) {
    auto journal = read_journal(dir());
    if (journal && journal->command == command) return journal;
    if (!fs::is_empty(dir_)) {
      log("prepare", journal ? "the interrupted run in " + dir() + " was of another command or other inputs: "
                               "starting over"
                             : "starting over (nothing to resume in " + dir() + ")");
    }
    remove_tree(dir());
    fs::create_directories(dir_);
    return std::nullopt;
  }
  /// Replaces the old outputs by the staged ones.
  void commit() {
    fs::remove(dir_ / "journal.json");
    for (const auto& e : fs::directory_iterator(dir_)) {  // ranks' parts, of this or an earlier layout
      if (e.is_directory()) remove_tree(e.path().string());
    }
    for (const auto* split : {"train", "val"}) {
      for (const auto& path : list_shards(out_.string(), split)) fs::remove(path);
    }
    for (const auto& path : tokenizer_files(out_.string())) fs::remove(path);  // may be of the other kind
    for (const auto& e : fs::directory_iterator(dir_)) fs::rename(e.path(), out_ / e.path().filename());
  }

 private:
  fs::path out_, dir_;
};

// What makes the output: a resumed run must have the same (file sizes and times stand for contents).
std::string command_fingerprint(const std::vector<std::string>& files, const PrepareOptions& o) {
  const auto stamp = [](const std::string& path) {  // a missing file is refused later, by its user
    std::error_code e1, e2;
    const auto size = fs::file_size(path, e1);
    const auto time = fs::last_write_time(path, e2).time_since_epoch().count();
    return e1 || e2 ? nlohmann::json(path) : nlohmann::json{path, size, time};
  };
  nlohmann::json inputs = nlohmann::json::array();
  for (const auto& f : files) inputs.push_back(stamp(f));
  return nlohmann::json{{"inputs", inputs},
                        {"tokenizer", o.tokenizer.empty() ? nlohmann::json(o.vocab_size) : stamp(o.tokenizer)},
                        {"tokenizer_sample_bytes", o.tokenizer_sample_bytes},
                        {"val_fraction", o.val_fraction},
                        {"shard_tokens", o.shard_tokens},
                        {"separator", o.corpus.separator},
                        {"skip_malformed", o.corpus.skip_malformed}}
      .dump();
}

// Test hook: MOE_PREPARE_FAULT=tokenizer (SIGKILL once the tokenizer is ready), documents:N (after
// the N-th document is written) or journal:N (right after the N-th checkpoint of this run), to test
// resuming at chosen points.
void fault_point(const std::string& point, uint64_t count = 0) {
  static const std::string spec = [] {
    const char* s = std::getenv("MOE_PREPARE_FAULT");
    return std::string(s ? s : "");
  }();
  if (spec.empty()) return;
  if (spec == point || spec == point + ":" + std::to_string(count)) {
    log("prepare", "MOE_PREPARE_FAULT: killed at " + spec);
    ::kill(::getpid(), SIGKILL);
  }
}

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
// the reader pushes documents). At most about sample_bytes of them, spread evenly over the corpus
// (systematic sampling by bytes): the trainer's memory follows what it is given, not the corpus.
std::string tokenizer_training_text(const std::vector<std::string>& files, const PrepareOptions& o, uint64_t bytes,
                                    const std::string& dir, uint64_t* sampled) {
  const auto path = (fs::path(dir) / "tokenizer-input.tmp").string();
  std::ofstream out(path, std::ios::binary);
  const double rate = std::min(1.0, double(o.tokenizer_sample_bytes) / double(std::max<uint64_t>(1, bytes)));
  double seen = 0;
  *sampled = 0;
  auto keep = [&](size_t n) {  // a line is kept while the kept bytes trail rate x the bytes seen
    seen += n;
    return rate >= 1 || double(*sampled) < rate * seen;
  };
  PrepareProgress progress(o.progress, "reading for the tokenizer", bytes);
  const auto stats = read_corpus(files, o.corpus, [&](const std::string& doc) {
    size_t start = 0;
    while (start < doc.size()) {
      const auto end = doc.find('\n', start);
      const auto line = std::string_view(doc).substr(start, end == std::string::npos ? std::string::npos : end - start);
      for (auto piece = line; !piece.empty();) {
        const auto cut = training_piece_length(piece, kMaxTrainingLine);
        if (keep(cut + 1)) {
          out << piece.substr(0, cut) << '\n';
          *sampled += cut + 1;
        }
        piece.remove_prefix(cut);
      }
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }, [&](uint64_t b) { progress.update(b); });
  progress.done(stats.bytes);
  MOE_CHECK(stats.documents > 0, "no documents in the inputs (empty files, or every JSONL line skipped)");
  out.close();
  MOE_CHECK(out.good(), "cannot write '", path, "'");
  return path;
}

// The tokenizer of the run, staged in `out`: trained on a sample of the corpus, or the user's file
// copied (with its tokenizer_config.json). Returns the user's tokenizer opened (errors name the
// user's file, not the staged copy; a tokenizer.json's helper starts once), or null for a trained one.
std::unique_ptr<Tokenizer> stage_tokenizer(const std::vector<std::string>& files, const PrepareOptions& o,
                                           uint64_t bytes, const std::string& out, PrepareSummary& summary) {
  if (o.tokenizer.empty()) {
    uint64_t& sampled = summary.tokenizer_text_bytes;
    const auto text = tokenizer_training_text(files, o, bytes, out, &sampled);
    std::ifstream lines(text, std::ios::binary);
    char megabytes[32];
    std::snprintf(megabytes, sizeof megabytes, "%.1f MB", sampled / 1e6);
    log("prepare", "training a BPE tokenizer of " + std::to_string(o.vocab_size) + " pieces on " + megabytes +
                       " of text" +
                       (o.tokenizer_sample_bytes < bytes ? ", sampled evenly over the corpus (--tokenizer_sample_mb)" : ""));
    SentencePieceTokenizer::train([&](std::string& line) { return bool(std::getline(lines, line)); }, o.vocab_size,
                                  (fs::path(out) / "tokenizer.model").string(),
                                  o.threads > 0 ? o.threads : int(std::thread::hardware_concurrency()));
    fs::remove(text);
    return nullptr;
  }
  auto tokenizer = Tokenizer::open(o.tokenizer);  // refuses a bad file before anything is copied
  const bool hf = fs::path(o.tokenizer).extension() == ".json";
  fs::copy_file(o.tokenizer, fs::path(out) / (hf ? "tokenizer.json" : "tokenizer.model"),
                fs::copy_options::overwrite_existing);
  const auto hf_config = fs::path(o.tokenizer).parent_path() / "tokenizer_config.json";  // its BOS/EOS
  if (hf && fs::exists(hf_config)) {
    fs::copy_file(hf_config, fs::path(out) / "tokenizer_config.json", fs::copy_options::overwrite_existing);
  }
  return tokenizer;
}

// Documents -> the train and val splits: every period-th document (counted over the whole corpus)
// is held out. A checkpoint (the journal) follows every shard that closes.
class SplitWriter {
 public:
  SplitWriter(const std::string& dir, const PrepareOptions& o, const Tokenizer& tokenizer, PrepareJournal journal,
              bool checkpoints)
      : dir_(dir), journal_(std::move(journal)), checkpoints_enabled_(checkpoints),
        period_(o.val_fraction > 0 ? std::max<uint64_t>(2, std::llround(1.0 / o.val_fraction)) : 0),
        train_(dir, "train", o.shard_tokens, uint32_t(tokenizer.vocab_size()), uint32_t(tokenizer.eos_id()),
               journal_.train),
        val_(dir, "val", o.shard_tokens, uint32_t(tokenizer.vocab_size()), uint32_t(tokenizer.eos_id()), journal_.val) {}

  void add(const std::vector<int>& ids, const DocumentEnd& end) {
    const bool held_out = period_ > 0 && documents() % period_ == period_ - 1;
    const bool closed = (held_out ? val_ : train_).add(ids);
    ++(held_out ? journal_.val_documents : journal_.train_documents);
    if (closed && checkpoints_enabled_) {
      journal_.position = end.at;
      journal_.read = end.read;
      journal_.train = train_.checkpoint();
      journal_.val = val_.checkpoint();
      write_journal(dir_, journal_);
      fault_point("journal", ++checkpoints_);
    }
  }
  void close(PrepareSummary& s) {
    train_.close();
    val_.close();
    s.train_documents = journal_.train_documents;
    s.val_documents = journal_.val_documents;
    s.documents = documents();
    s.train_tokens = train_.tokens();
    s.val_tokens = val_.tokens();
    s.train_shards = train_.shards();
    s.val_shards = val_.shards();
  }
  uint64_t documents() const { return journal_.train_documents + journal_.val_documents; }
  uint64_t tokens() const { return train_.tokens() + val_.tokens(); }

 private:
  std::string dir_;
  PrepareJournal journal_;
  bool checkpoints_enabled_;
  uint64_t period_;
  ShardSet train_, val_;
  uint64_t checkpoints_ = 0;
};

void log_workers(const PrepareSummary& s) {
  for (size_t w = 0; w < s.workers.size(); ++w) {
    const auto& k = s.workers[w];
    char line[200];
    std::snprintf(line, sizeof line, "worker %zu: %llu documents, %.1f MB, %llu tokens, encoding %.1f s (%.2f MB/s)",
                  w, (unsigned long long)k.documents, k.bytes / 1e6, (unsigned long long)k.tokens, k.busy_seconds,
                  k.bytes / 1e6 / std::max(k.busy_seconds, 1e-9));
    log("prepare", line);
  }
}

PipelineOptions pipeline_options(const PrepareOptions& o, const Tokenizer& tokenizer) {
  PipelineOptions pipeline;
  pipeline.workers = o.workers > 0 ? o.workers : std::max(1, int(std::thread::hardware_concurrency()));
  pipeline.batch_bytes = o.batch_bytes;
  log("prepare", "encoding on " + std::to_string(pipeline.workers) + " workers with " + tokenizer.batch_path());
  return pipeline;
}

void add_workers(PrepareSummary& summary, const PipelineResult& result) {
  for (const auto& w : result.workers) summary.workers.push_back({w.documents, w.text_bytes, w.tokens, w.busy_seconds});
  log_workers(summary);
}

// One process: the corpus -> the splits, resuming from `journal`.
void encode_into_splits(const std::vector<std::string>& files, const PrepareOptions& o, const Tokenizer& tokenizer,
                        const PrepareJournal& journal, uint64_t bytes, const std::string& out, PrepareSummary& summary) {
  const auto pipeline = pipeline_options(o, tokenizer);
  SplitWriter splits(out, o, tokenizer, journal, /*checkpoints=*/true);
  const uint64_t documents_before = splits.documents(), tokens_before = splits.tokens();
  PrepareProgress progress(o.progress, "tokenizing", bytes, journal.read.bytes);
  const auto result = run_encode_pipeline(
      files, o.corpus, CorpusRange{journal.position}, journal.read, pipeline,
      [&](int) { return tokenizer.batch_encoder(); },
      [&](EncodedBatch& batch) {
        for (size_t i = 0; i < batch.ids.size(); ++i) {
          splits.add(batch.ids[i], batch.ends[i]);
          fault_point("documents", splits.documents());
        }
        progress.update(batch.ends.back().read.bytes, splits.documents() - documents_before,
                        splits.tokens() - tokens_before);
      });
  progress.done(result.read.bytes, splits.documents() - documents_before, splits.tokens() - tokens_before);
  splits.close(summary);
  summary.bytes = result.read.bytes;
  summary.malformed_lines = result.read.malformed_lines;
  add_workers(summary, result);
}

// Under mpirun, on every rank: its byte range of the corpus -> its part, resuming from the part's
// journal. Returns the part's journal once complete.
PartJournal encode_into_part(const std::vector<std::string>& files, const PrepareOptions& o, const Tokenizer& tokenizer,
                             const std::string& command, const CorpusRange& range, const std::string& dir,
                             bool progress_line, PrepareSummary& summary) {
  auto journal = read_part_journal(dir);
  if (journal && journal->command == command && journal->complete) return *journal;
  if (!journal || journal->command != command) journal = PartJournal{command, range.begin};
  if (journal->chunks > 0) {
    log("prepare", "resuming this rank's part after " + std::to_string(journal->documents) + " documents");
  }
  const auto pipeline = pipeline_options(o, tokenizer);
  PartWriter part(dir, o.shard_tokens, journal->chunks);
  uint64_t documents = journal->documents;
  PrepareProgress progress(progress_line, "tokenizing (rank 0's part)", corpus_bytes(files, range), journal->read.bytes);
  const auto result = run_encode_pipeline(
      files, o.corpus, CorpusRange{journal->position, range.end}, journal->read, pipeline,
      [&](int) { return tokenizer.batch_encoder(); },
      [&](EncodedBatch& batch) {
        for (size_t i = 0; i < batch.ids.size(); ++i) {
          ++documents;
          if (part.add(batch.ids[i])) {
            write_part_journal(dir, {command, batch.ends[i].at, batch.ends[i].read, part.chunks(), documents});
          }
          fault_point("documents", documents);
        }
        progress.update(batch.ends.back().read.bytes, documents - journal->documents);
      });
  progress.done(result.read.bytes, documents - journal->documents);
  part.close();
  *journal = {command, range.end, result.read, part.chunks(), documents, true};
  write_part_journal(dir, *journal);
  add_workers(summary, result);
  return *journal;
}

std::string part_dir(const std::string& out, int rank, int ranks) {
  return (fs::path(out) / ("part-" + std::to_string(rank) + "-of-" + std::to_string(ranks))).string();
}

// Rank 0 under mpirun: every rank's part, in rank order -> the splits one process would write.
void join_parts(const std::string& out, int ranks, const std::vector<uint64_t>& chunks, const std::vector<uint64_t>& docs,
                const PrepareOptions& o, const Tokenizer& tokenizer, const std::string& command,
                PrepareSummary& summary) {
  SplitWriter splits(out, o, tokenizer, PrepareJournal{command, true}, /*checkpoints=*/false);
  uint64_t total = 0;
  for (const auto d : docs) total += d;
  log("prepare", "joining the " + std::to_string(ranks) + " ranks' parts (" + std::to_string(total) +
                     " documents) into the shards");
  for (int r = 0; r < ranks; ++r) {
    read_part(part_dir(out, r, ranks), chunks[size_t(r)], [&](const std::vector<int>& ids) { splits.add(ids, {}); });
  }
  splits.close(summary);
  MOE_CHECK(summary.documents == total, "the ranks' parts hold ", summary.documents, " documents, their journals ",
            total, ": a part was changed while joining?");
  for (int r = 0; r < ranks; ++r) remove_tree(part_dir(out, r, ranks));
}

// Under mpirun: the parts, then rank 0 joins them. Only rank 0 touches the staging's top level.
void prepare_distributed(const std::vector<std::string>& files, const PrepareOptions& o, const Tokenizer& tokenizer,
                         const std::string& command, const std::string& out, PrepareRanks& ranks,
                         PrepareSummary& summary) {
  const int rank = ranks.rank(), size = ranks.size();
  const auto range = split_corpus(files, size)[size_t(rank)];
  const auto part_command = command + " ranks " + std::to_string(size);
  const auto part = encode_into_part(files, o, tokenizer, part_command, range, part_dir(out, rank, size),
                                     o.progress && rank == 0, summary);
  // Every rank's counts, rank after rank: documents read, bytes, malformed lines, chunks, documents.
  const auto all = ranks.all_gather({part.read.documents, part.read.bytes, part.read.malformed_lines, part.chunks,
                                     part.documents});
  std::vector<uint64_t> chunks, docs;
  for (int r = 0; r < size; ++r) {
    summary.bytes += all[size_t(5 * r + 1)];
    summary.malformed_lines += all[size_t(5 * r + 2)];
    chunks.push_back(all[size_t(5 * r + 3)]);
    docs.push_back(all[size_t(5 * r + 4)]);
  }
  if (rank == 0) join_parts(out, size, chunks, docs, o, tokenizer, command, summary);
}

}  // namespace

std::string PrepareSummary::to_json() const {
  nlohmann::json per_worker = nlohmann::json::array();
  for (const auto& w : workers) {
    per_worker.push_back({{"documents", w.documents}, {"bytes", w.bytes}, {"tokens", w.tokens},
                          {"busy_seconds", w.busy_seconds}});
  }
  nlohmann::json j = {{"documents", documents},         {"train_documents", train_documents},
                      {"val_documents", val_documents}, {"train_tokens", train_tokens},
                      {"val_tokens", val_tokens},       {"train_shards", train_shards},
                      {"val_shards", val_shards},       {"bytes", bytes},
                      {"malformed_lines", malformed_lines}, {"skipped_files", skipped_files},
                      {"vocab_size", vocab_size},       {"seconds", seconds},
                      {"resumed", resumed},             {"encoder", encoder},
                      {"tokenizer_text_bytes", tokenizer_text_bytes},
                      {"peak_resident_bytes", peak_resident_bytes},
                      {"workers", per_worker}};
  return j.dump();
}

PrepareSummary prepare_corpus(const PrepareOptions& o, PrepareRanks* ranks) {
  MOE_CHECK(!o.inputs.empty(), "no --input given");
  MOE_CHECK(!o.out_dir.empty(), "no --out_dir given");
  MOE_CHECK(o.val_fraction >= 0 && o.val_fraction < 0.5, "--val_fraction must be in [0, 0.5), got ", o.val_fraction);
  MOE_CHECK(o.shard_tokens > 0, "--shard_tokens must be positive");
  MOE_CHECK(o.workers >= 0, "--workers must be 0 (all cores) or more, got ", o.workers);
  MOE_CHECK(o.tokenizer_sample_bytes > 0, "--tokenizer_sample_mb must be positive");
  const auto t0 = Clock::now();
  const bool distributed = ranks != nullptr && ranks->size() > 1;
  const bool leader = !distributed || ranks->rank() == 0;
  PrepareSummary summary;
  const auto files = list_corpus_files(o.inputs, &summary.skipped_files);
  MOE_CHECK(!files.empty(), "no input files (a directory contributes .jsonl, .txt and extension-less files)");
  const uint64_t bytes = corpus_bytes(files);
  const auto command = command_fingerprint(files, o);
  std::optional<Staging> staging;  // rank 0's: the other ranks only write their parts in it
  std::optional<PrepareJournal> journal;
  std::unique_ptr<Tokenizer> tokenizer_ptr;
  if (leader) {
    staging.emplace(o.out_dir);
    journal = staging->resume(command);
    summary.resumed = journal.has_value();
    if (!journal || !journal->tokenizer_ready) {
      tokenizer_ptr = stage_tokenizer(files, o, bytes, staging->dir(), summary);
      journal = PrepareJournal{command, true};
      write_journal(staging->dir(), *journal);
      fault_point("tokenizer");
    } else if (!distributed) {
      log("prepare", "resuming the interrupted run in " + staging->dir() + " after " +
                         std::to_string(journal->read.documents) + " documents (" +
                         std::to_string(journal->read.bytes / 1000000) + " of " + std::to_string(bytes / 1000000) +
                         " MB)");
    }
  }
  if (distributed) ranks->barrier();  // the tokenizer is staged
  const auto out = (fs::path(o.out_dir) / ".prepare.tmp").string();
  const auto tokenizer_path = tokenizer_files(out).at(0);
  if (!tokenizer_ptr) tokenizer_ptr = Tokenizer::open(tokenizer_path);  // trained, resumed, or another rank
  const Tokenizer& tokenizer = *tokenizer_ptr;
  summary.vocab_size = tokenizer.vocab_size();
  MOE_CHECK(tokenizer.eos_id() >= 0, "tokenizer '", o.tokenizer.empty() ? tokenizer_path : o.tokenizer,
            "' has no EOS token (documents are separated by it)");
  summary.encoder = tokenizer.batch_path();
  if (distributed) {
    prepare_distributed(files, o, tokenizer, command, out, *ranks, summary);
  } else {
    encode_into_splits(files, o, tokenizer, *journal, bytes, out, summary);
  }
  if (leader) {
    MOE_CHECK(summary.train_documents > 0, "no documents in the inputs (empty files, or every JSONL line skipped)");
    summary.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    summary.peak_resident_bytes = peak_resident_bytes();
    const auto summary_path = (fs::path(out) / "prepare.json").string();
    std::ofstream summary_file(summary_path);
    summary_file << summary.to_json() << "\n";
    summary_file.close();
    MOE_CHECK(summary_file.good(), "cannot write '", summary_path, "'");
    staging->commit();
  }
  if (distributed) ranks->barrier();  // the data set is in place when mpirun returns
  return summary;
}

}  // namespace moe::trainer
