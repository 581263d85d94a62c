// moe-prepare's engine: one thread reads documents into batches, N workers encode batches, and the
// caller's thread receives the encoded batches in input order, so that the output does not depend
// on N. Reading, encoding and writing overlap; at most `in_flight` batches exist at any time
// (queued, being encoded, or waiting for their turn), which bounds the memory whatever the corpus.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainer/data/corpus_reader.h"
#include "trainer/data/tokenizer.h"

namespace moe::trainer {

/// Where a document ends in the corpus, and the reader's counts there: what resuming after it needs.
struct DocumentEnd {
  CorpusPosition at;
  CorpusStats read;
};

struct EncodedBatch {
  std::vector<std::vector<int>> ids;  // per document, in input order
  std::vector<DocumentEnd> ends;
  uint64_t text_bytes = 0;            // of the batch's documents
};

struct WorkerStats {
  uint64_t batches = 0, documents = 0, text_bytes = 0, tokens = 0;
  double busy_seconds = 0;  // encoding
};

struct PipelineOptions {
  int workers = 1;
  size_t batch_bytes = 256 << 10;  // a batch closes at this much text (a longer document is one batch)
  int in_flight_per_worker = 4;
};

/// Reads `range` of the corpus (counts continued from `read`), encodes on options.workers threads
/// with the encoders make_encoder(worker) returns, and calls consume(batch) on this thread in
/// input order. An error in any stage stops the others and is rethrown here. Returns the workers'
/// and the reader's statistics. on_bytes(bytes read so far) comes from the reader thread.
struct PipelineResult {
  std::vector<WorkerStats> workers;
  CorpusStats read;
};
PipelineResult run_encode_pipeline(const std::vector<std::string>& files, const CorpusOptions& corpus,
                                             const CorpusRange& range, const CorpusStats& read,
                                             const PipelineOptions& options,
                                             const std::function<std::unique_ptr<BatchEncoder>(int)>& make_encoder,
                                             const std::function<void(EncodedBatch&)>& consume,
                                             const std::function<void(uint64_t)>& on_bytes = nullptr);

}  // namespace moe::trainer
