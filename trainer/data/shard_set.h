// One split of moe-prepare's output: "<dir>/<split>-00000.bin", ... of at most shard_tokens tokens
// each. A document is never cut: a shard closes after the document that fills it. Resumable: its
// State, taken at a checkpoint, lets a later run continue the same files.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/data/token_shard.h"

namespace moe::trainer {

class ShardSet {
 public:
  struct State {
    uint64_t shards = 0;       // closed shards
    uint64_t tokens = 0;       // in all shards, the open one included
    uint64_t open_tokens = 0;  // in the open shard (its .tmp); 0 = none open
  };

  /// Continues from `resume` ({} for a new split): shards past it are removed, the open shard's
  /// .tmp is cut back to what the checkpoint counted.
  ShardSet(std::string dir, std::string split, uint64_t shard_tokens, uint32_t vocab, uint32_t eos,
           const State& resume);
  /// Appends a document and EOS; true when that closed a shard.
  bool add(const std::vector<int>& tokens);
  /// The state to resume from, with the open shard's tokens handed to the system.
  State checkpoint();
  /// Closes the open shard, if any.
  void close();
  uint64_t shards() const { return state_.shards; }
  uint64_t tokens() const { return state_.tokens; }

 private:
  std::string dir_, split_;
  uint64_t shard_tokens_;
  uint32_t vocab_, eos_;
  State state_;
  std::unique_ptr<TokenShardWriter> writer_;
};

}  // namespace moe::trainer
