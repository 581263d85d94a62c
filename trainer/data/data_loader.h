// Training data: the token shards of one split, read as one stream and cut into packed windows of
// seq_len + 1 tokens (inputs and next-token targets; documents are separated by EOS, not padded).
// Each epoch visits the windows in a permutation fixed by (seed, epoch); every global micro-batch
// takes the next world * batch windows of it and each data-parallel rank reads its own rows, so
// ranks never share data and a position (epoch, window) resumes exactly.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/data/loader_position.h"
#include "trainer/data/token_shard.h"

namespace moe::trainer {

/// The shards "<dir>/<split>-*.bin", in name order, read as one token stream.
class TokenDataset {
 public:
  /// Refuses a directory with no such shard, or shards of different tokenizers.
  TokenDataset(const std::string& dir, const std::string& split);
  uint64_t tokens() const { return total_; }
  uint32_t vocab_size() const { return shards_.front().header().vocab_size; }
  uint32_t eos_id() const { return shards_.front().header().eos_id; }
  size_t shard_count() const { return shards_.size(); }
  /// Tokens [first, first + n) of the stream, crossing shard boundaries as needed.
  void read(uint64_t first, uint64_t n, int64_t* out) const;

 private:
  std::vector<TokenShard> shards_;
  std::vector<uint64_t> starts_;  // first stream token of each shard
  uint64_t total_ = 0;
};

struct TokenBatch {
  torch::Tensor inputs;   // [batch, seq_len] int64
  torch::Tensor targets;  // [batch, seq_len] int64, inputs shifted by one
};

class PackedLoader {
 public:
  /// shuffle = false: windows in stream order (evaluation).
  PackedLoader(std::shared_ptr<const TokenDataset> data, int64_t seq_len, uint64_t seed, int rank, int world,
               bool shuffle = true);
  /// Windows per epoch: (tokens - 1) / seq_len.
  uint64_t windows() const { return windows_; }
  /// This rank's `batch` windows of the next global micro-batch of world * batch windows. A global
  /// micro-batch never straddles epochs: the remainder of an epoch is skipped.
  TokenBatch next(int64_t batch);
  LoaderPosition position() const { return position_; }
  void seek(LoaderPosition position);

 private:
  uint64_t window_at(uint64_t i);  // the i-th window of the current epoch's order
  std::shared_ptr<const TokenDataset> data_;
  int64_t seq_len_;
  uint64_t seed_;
  int rank_, world_;
  bool shuffle_;
  uint64_t windows_;
  LoaderPosition position_;
  uint64_t order_epoch_ = UINT64_MAX;
  std::vector<uint64_t> order_;
};

/// The permutation of [0, n) for (seed, epoch): Fisher-Yates over splitmix64, the same on every
/// platform and standard library.
std::vector<uint64_t> epoch_permutation(uint64_t n, uint64_t seed, uint64_t epoch);

}  // namespace moe::trainer
