#include "trainer/data/shard_set.h"

#include <filesystem>

namespace moe::trainer {

ShardSet::ShardSet(std::string dir, std::string split, uint64_t shard_tokens, uint32_t vocab, uint32_t eos,
                   const State& resume)
    : dir_(std::move(dir)), split_(std::move(split)), shard_tokens_(shard_tokens), vocab_(vocab), eos_(eos),
      state_(resume) {
  // Shards closed after the checkpoint (a kill between a shard's rename and the journal) are redone.
  for (const auto& path : list_shards(dir_, split_)) {
    if (path >= shard_path(dir_, split_, state_.shards)) std::filesystem::remove(path);
  }
  if (state_.open_tokens > 0) {
    writer_ = std::make_unique<TokenShardWriter>(shard_path(dir_, split_, state_.shards), vocab_, eos_,
                                                 state_.open_tokens);
  }
}

bool ShardSet::add(const std::vector<int>& tokens) {
  if (!writer_) writer_ = std::make_unique<TokenShardWriter>(shard_path(dir_, split_, state_.shards), vocab_, eos_);
  writer_->append_document(tokens);
  state_.tokens += tokens.size() + 1;
  if (writer_->count() < shard_tokens_) return false;
  close();
  return true;
}

ShardSet::State ShardSet::checkpoint() {
  if (writer_) writer_->flush();
  state_.open_tokens = writer_ ? writer_->count() : 0;
  return state_;
}

void ShardSet::close() {
  if (!writer_) return;
  writer_->close();
  writer_.reset();
  ++state_.shards;
  state_.open_tokens = 0;
}

}  // namespace moe::trainer
