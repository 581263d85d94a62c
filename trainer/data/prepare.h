// moe-prepare's pipeline: documents -> tokenizer (a SentencePiece BPE trained here, or a given
// SentencePiece .model or Hugging Face tokenizer.json) -> token shards of a training split and a
// held-out validation split, plus a JSON summary.
//   <out_dir>/tokenizer.model (or tokenizer.json [+ tokenizer_config.json]), train-00000.bin ...,
//             val-00000.bin ..., prepare.json
// Encoding runs on `workers` threads (trainer/data/encode_pipeline.h) and the output does not
// depend on their number. The work is staged in <out_dir>/.prepare.tmp/ and moved into place at the
// end; a run that was killed resumes from its last closed shard (trainer/data/prepare_journal.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/data/corpus_reader.h"

namespace moe::trainer {

struct PrepareOptions {
  std::vector<std::string> inputs;  // files or directories (see list_corpus_files)
  std::string out_dir;
  std::string tokenizer;             // an existing SentencePiece .model or HF tokenizer.json; empty = train one
  int64_t vocab_size = 6400;         // when training one (MiniMind's size)
  double val_fraction = 0.01;        // every round(1/f)-th document is held out; 0 = none
  uint64_t shard_tokens = 100000000;  // tokens per shard file at most
  CorpusOptions corpus;
  int threads = 0;                   // tokenizer training threads; 0 = all cores
  int workers = 0;                   // encoding threads; 0 = all cores
  size_t batch_bytes = 256 << 10;    // documents are encoded in batches of about this much text
  uint64_t tokenizer_sample_bytes = 64ull << 20;  // text a tokenizer is trained on, at most (spread over the corpus)
  bool progress = true;              // a progress line on stderr
};

struct WorkerSummary {
  uint64_t documents = 0, bytes = 0, tokens = 0;
  double busy_seconds = 0;
};

struct PrepareSummary {
  uint64_t documents = 0, train_documents = 0, val_documents = 0;
  uint64_t train_tokens = 0, val_tokens = 0, train_shards = 0, val_shards = 0;
  uint64_t bytes = 0, malformed_lines = 0, skipped_files = 0;
  int64_t vocab_size = 0;
  double seconds = 0;          // this run (a resumed run counts from its restart)
  bool resumed = false;        // continued an interrupted run
  std::string encoder;         // how the documents were encoded (Tokenizer::batch_path)
  std::vector<WorkerSummary> workers;  // what each worker encoded in this run
  uint64_t tokenizer_text_bytes = 0;  // what a tokenizer trained in this run was trained on
  uint64_t peak_resident_bytes = 0;  // of this process (a tokenizer.json's helpers: about 46 MiB each)
  std::string to_json() const;
};

/// The ranks of an mpirun that prepare one data set together: each encodes a byte range of the
/// corpus into a part of its own, then rank 0 joins the parts into the shards one process would
/// have written. --out_dir must be on a file system all ranks share. launch/prepare_main.cpp
/// implements it with MPI, and a failure on any rank aborts them all.
class PrepareRanks {
 public:
  virtual ~PrepareRanks() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Waits for every rank, without spinning a core (rank 0 may train a tokenizer meanwhile).
  virtual void barrier() = 0;
  /// Every rank's values (the same number on each), rank after rank.
  virtual std::vector<uint64_t> all_gather(const std::vector<uint64_t>& values) = 0;
};

/// Runs the pipeline (on every rank of `ranks` together, when given). Deterministic: the same
/// inputs and options give byte-identical outputs, whatever the numbers of workers and ranks.
/// Refuses inputs without any document. The summary is complete on rank 0.
PrepareSummary prepare_corpus(const PrepareOptions& options, PrepareRanks* ranks = nullptr);

}  // namespace moe::trainer
