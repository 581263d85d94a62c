// Token shards: the binary files moe-prepare writes and the loader memory-maps.
//
// Layout (little endian), version 1:
//   offset  size  field
//   0       8     magic "MOETOKS\0"
//   8       4     version (uint32, 1)
//   12      4     bytes per token (uint32: 2 = uint16 tokens, 4 = uint32 tokens)
//   16      8     token count (uint64)
//   24      4     vocabulary size of the tokenizer (uint32)
//   28      4     EOS id (uint32), written after every document
//   32      ...   the tokens
// A file whose size is not 32 + count * bytes_per_token is refused as truncated.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace moe::trainer {

struct ShardHeader {
  static constexpr char kMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', 'S', '\0'};
  static constexpr uint32_t kVersion = 1;
  static constexpr size_t kBytes = 32;
  uint32_t token_bytes = 2;
  uint64_t count = 0;
  uint32_t vocab_size = 0;
  uint32_t eos_id = 0;
};

/// "<dir>/<split>-00003.bin": the name of a split's index-th shard.
std::string shard_path(const std::string& dir, const std::string& split, uint64_t index);

/// The shards "<dir>/<split>-*.bin" that exist, in name (= index) order; empty if none.
std::vector<std::string> list_shards(const std::string& dir, const std::string& split);

/// Streams tokens into `path` through `path.tmp`, renamed into place by close(): a shard that
/// exists is complete.
class TokenShardWriter {
 public:
  /// token_bytes = 2 when vocab_size fits in uint16, else 4.
  TokenShardWriter(std::string path, uint32_t vocab_size, uint32_t eos_id);
  /// Continues `path.tmp` after its first `count` tokens (a resumed moe-prepare): the rest, written
  /// after the last flush() that counted, is cut off. Refuses a file shorter than that.
  TokenShardWriter(std::string path, uint32_t vocab_size, uint32_t eos_id, uint64_t count);
  ~TokenShardWriter();
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;

  /// Appends a document's tokens and then EOS.
  void append_document(const std::vector<int>& tokens);
  uint64_t count() const { return header_.count; }
  /// Hands what was appended to the system, so that a resumed writer finds it after a kill.
  void flush();
  /// Writes the header and renames the file into place.
  void close();

 private:
  template <typename Token>
  void write_tokens(const std::vector<int>& tokens);
  std::string path_;
  ShardHeader header_;
  std::FILE* file_ = nullptr;
};

/// A read-only memory-mapped shard. Refuses (moe::InvalidArgument naming the file) a missing,
/// foreign (wrong magic or version), truncated or padded file, a header whose count does not fit
/// the file (checked without overflow), and a token id or EOS id beyond the vocabulary (one pass
/// over the tokens when opened).
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  TokenShard(TokenShard&& other) noexcept;

  const ShardHeader& header() const { return header_; }
  uint64_t size() const { return header_.count; }
  const std::string& path() const { return path_; }
  /// Copies tokens [first, first + n) into out as int64.
  void read(uint64_t first, uint64_t n, int64_t* out) const;

 private:
  void validate();
  void check_ids() const;
  std::string path_;
  ShardHeader header_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
};

}  // namespace moe::trainer
