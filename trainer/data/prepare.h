// moe-prepare's pipeline: documents -> tokenizer (a SentencePiece BPE trained here, or a given
// SentencePiece .model or Hugging Face tokenizer.json) -> token shards of a training split and a
// held-out validation split, plus a JSON summary.
//   <out_dir>/tokenizer.model (or tokenizer.json [+ tokenizer_config.json]), train-00000.bin ...,
//             val-00000.bin ..., prepare.json
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
  bool progress = true;              // a progress line on stderr
};

struct PrepareSummary {
  uint64_t documents = 0, train_documents = 0, val_documents = 0;
  uint64_t train_tokens = 0, val_tokens = 0, train_shards = 0, val_shards = 0;
  uint64_t bytes = 0, malformed_lines = 0, skipped_files = 0;
  int64_t vocab_size = 0;
  double seconds = 0;
  std::string to_json() const;
};

/// Runs the pipeline. Deterministic: the same inputs and options give byte-identical outputs.
/// Refuses inputs without any document.
PrepareSummary prepare_corpus(const PrepareOptions& options);

}  // namespace moe::trainer
