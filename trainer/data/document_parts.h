// A rank's part of a corpus prepared under mpirun: its documents' ids in input order, in chunk
// files "<dir>/chunk-00000.bin", ... of records (uint32 count, count x uint32 ids), little endian.
// Rank 0 reads the parts back in rank order and writes the shards one process would have written
// (the held-out documents and the shard boundaries depend on what came before, which no rank knows
// while encoding). A chunk closes after the document that fills it; a closed chunk is complete.
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace moe::trainer {

class PartWriter {
 public:
  /// Continues after `chunks` closed chunks (a resumed rank: later chunk files are removed).
  PartWriter(std::string dir, uint64_t chunk_tokens, uint64_t chunks);
  ~PartWriter();
  PartWriter(const PartWriter&) = delete;
  PartWriter& operator=(const PartWriter&) = delete;
  /// Appends a document; true when that closed a chunk.
  bool add(const std::vector<int>& ids);
  /// Closes the open chunk, if any.
  void close();
  uint64_t chunks() const { return chunks_; }

 private:
  std::string dir_;
  uint64_t chunk_tokens_, chunks_, open_tokens_ = 0;
  std::FILE* file_ = nullptr;
};

/// "<dir>/chunk-00003.bin".
std::string chunk_path(const std::string& dir, uint64_t index);

/// Calls on_document(ids) for every document of the part's `chunks` chunks, in order; refuses a
/// damaged chunk, naming it.
void read_part(const std::string& dir, uint64_t chunks, const std::function<void(const std::vector<int>&)>& on_document);

}  // namespace moe::trainer
