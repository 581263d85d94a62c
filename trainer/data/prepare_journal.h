// moe-prepare's journals. The run's: <out_dir>/.prepare.tmp/journal.json, replaced (durably) at every
// checkpoint, i.e. whenever a shard has closed. A run that was killed and is started again with the
// same command reads it and continues from there; the result is byte-identical to an uninterrupted
// run. A different command (other inputs, options, or changed input files) starts over.
#pragma once
#include <optional>
#include <string>

#include "trainer/data/corpus_reader.h"
#include "trainer/data/shard_set.h"

namespace moe::trainer {

struct PrepareJournal {
  std::string command;  // prepare_fingerprint() of the run
  bool tokenizer_ready = false;
  CorpusPosition position;  // reading goes on here
  CorpusStats read;         // the reader's counts up to there
  uint64_t train_documents = 0, val_documents = 0;
  ShardSet::State train, val;
};

/// Writes the journal into the staging directory `dir`.
void write_journal(const std::string& dir, const PrepareJournal& journal);

/// The journal in `dir`, if there is a readable one.
std::optional<PrepareJournal> read_journal(const std::string& dir);

/// The journal of one rank's part under mpirun (trainer/data/document_parts.h), in the part's
/// directory: written whenever a chunk has closed, and when the part is complete.
struct PartJournal {
  std::string command;  // the run's fingerprint and the number of ranks
  CorpusPosition position;
  CorpusStats read;  // of this rank's range
  uint64_t chunks = 0;
  uint64_t documents = 0;  // in the closed chunks
  bool complete = false;
};

void write_part_journal(const std::string& dir, const PartJournal& journal);
std::optional<PartJournal> read_part_journal(const std::string& dir);

}  // namespace moe::trainer
