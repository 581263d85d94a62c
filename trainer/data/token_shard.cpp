#include "trainer/data/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/check.h"

namespace moe::trainer {

namespace {

template <typename T>
void put(unsigned char* at, T value) {
  std::memcpy(at, &value, sizeof(T));  // NOTE: the format is little endian, like every host we target
}

template <typename T>
T get(const unsigned char* at) {
  T value;
  std::memcpy(&value, at, sizeof(T));
  return value;
}

}  // namespace

std::string shard_path(const std::string& dir, const std::string& split, uint64_t index) {
  char name[32];
  std::snprintf(name, sizeof(name), "-%05llu.bin", static_cast<unsigned long long>(index));
  return (std::filesystem::path(dir) / (split + name)).string();
}

std::vector<std::string> list_shards(const std::string& dir, const std::string& split) {
  std::vector<std::string> paths;
  if (!std::filesystem::is_directory(dir)) return paths;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.rfind(split + "-", 0) == 0 && e.path().extension() == ".bin") paths.push_back(e.path().string());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

TokenShardWriter::TokenShardWriter(std::string path, uint32_t vocab_size, uint32_t eos_id) : path_(std::move(path)) {
  header_.token_bytes = vocab_size <= 65536 ? 2 : 4;
  header_.vocab_size = vocab_size;
  header_.eos_id = eos_id;
  file_ = std::fopen((path_ + ".tmp").c_str(), "wb");
  MOE_CHECK(file_ != nullptr, "cannot create '", path_, ".tmp': ", std::strerror(errno));
  unsigned char blank[ShardHeader::kBytes] = {};
  std::fwrite(blank, 1, sizeof(blank), file_);
}

TokenShardWriter::TokenShardWriter(std::string path, uint32_t vocab_size, uint32_t eos_id, uint64_t count)
    : path_(std::move(path)) {
  header_.token_bytes = vocab_size <= 65536 ? 2 : 4;
  header_.vocab_size = vocab_size;
  header_.eos_id = eos_id;
  header_.count = count;
  const auto tmp = path_ + ".tmp";
  const uint64_t bytes = ShardHeader::kBytes + count * header_.token_bytes;
  std::error_code error;
  const auto size = std::filesystem::file_size(tmp, error);
  MOE_CHECK(!error && size >= bytes, "cannot continue '", tmp, "': it holds ", error ? 0 : size, " bytes, ",
            bytes, " were written before the interruption");
  std::filesystem::resize_file(tmp, bytes);
  file_ = std::fopen(tmp.c_str(), "r+b");
  MOE_CHECK(file_ != nullptr, "cannot open '", tmp, "': ", std::strerror(errno));
  std::fseek(file_, 0, SEEK_END);
}

void TokenShardWriter::flush() {
  MOE_CHECK(std::fflush(file_) == 0 && !std::ferror(file_), "writing '", path_, ".tmp' failed: ", std::strerror(errno));
}

TokenShardWriter::~TokenShardWriter() {
  if (file_ == nullptr) return;
  std::fclose(file_);
  std::remove((path_ + ".tmp").c_str());  // never leave a half-written shard under the real name
}

template <typename Token>
void TokenShardWriter::write_tokens(const std::vector<int>& tokens) {  // the document and its EOS, one write
  std::vector<Token> narrow(tokens.begin(), tokens.end());
  narrow.push_back(static_cast<Token>(header_.eos_id));
  std::fwrite(narrow.data(), sizeof(Token), narrow.size(), file_);
  header_.count += narrow.size();
}

void TokenShardWriter::append_document(const std::vector<int>& tokens) {
  for (const int t : tokens)
    MOE_CHECK(t >= 0 && static_cast<uint32_t>(t) < header_.vocab_size, "token ", t, " outside the vocabulary of ",
              header_.vocab_size, " while writing '", path_, "'");
  if (header_.token_bytes == 2)
    write_tokens<uint16_t>(tokens);
  else
    write_tokens<uint32_t>(tokens);
}

void TokenShardWriter::close() {
  unsigned char h[ShardHeader::kBytes] = {};
  std::memcpy(h, ShardHeader::kMagic, 8);
  put<uint32_t>(h + 8, ShardHeader::kVersion);
  put<uint32_t>(h + 12, header_.token_bytes);
  put<uint64_t>(h + 16, header_.count);
  put<uint32_t>(h + 24, header_.vocab_size);
  put<uint32_t>(h + 28, header_.eos_id);
  std::fseek(file_, 0, SEEK_SET);
  std::fwrite(h, 1, sizeof(h), file_);
  const bool ok = std::fflush(file_) == 0 && !std::ferror(file_);
  std::fclose(file_);
  file_ = nullptr;
  MOE_CHECK(ok, "writing '", path_, ".tmp' failed: ", std::strerror(errno));
  std::filesystem::rename(path_ + ".tmp", path_);
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOE_CHECK(fd >= 0, "cannot open token shard '", path, "': ", std::strerror(errno));
  struct stat st {};
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  map_bytes_ = regular ? static_cast<size_t>(st.st_size) : 0;
  if (map_bytes_ >= ShardHeader::kBytes) map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
  const int map_error = errno;
  ::close(fd);
  MOE_CHECK(regular, "token shard '", path, "' is not a regular file");
  MOE_CHECK(map_bytes_ >= ShardHeader::kBytes, "'", path, "' is not a token shard: ", map_bytes_,
            " bytes, shorter than the 32-byte header");
  MOE_CHECK(map_ != MAP_FAILED, "cannot map '", path, "': ", std::strerror(map_error));
  try {
    validate();
  } catch (...) {
    ::munmap(map_, map_bytes_);  // the destructor does not run for a constructor that throws
    map_ = nullptr;
    throw;
  }
}

void TokenShard::validate() {
  const auto& path = path_;
  const auto* h = static_cast<const unsigned char*>(map_);
  MOE_CHECK(std::memcmp(h, ShardHeader::kMagic, 8) == 0, "'", path,
            "' is not a token shard (wrong magic; expected MOETOKS from moe-prepare)");
  const auto version = get<uint32_t>(h + 8);
  MOE_CHECK(version == ShardHeader::kVersion, "'", path, "' has shard format version ", version,
            "; this build reads version ", ShardHeader::kVersion);
  header_.token_bytes = get<uint32_t>(h + 12);
  header_.count = get<uint64_t>(h + 16);
  header_.vocab_size = get<uint32_t>(h + 24);
  header_.eos_id = get<uint32_t>(h + 28);
  MOE_CHECK(header_.token_bytes == 2 || header_.token_bytes == 4, "'", path, "' has ", header_.token_bytes,
            " bytes per token (expected 2 or 4)");
  // Overflow-safe: a count that lies about the size must not wrap around to the real one.
  const uint64_t payload = map_bytes_ - ShardHeader::kBytes;
  uint64_t promised = 0;
  const bool fits = !__builtin_mul_overflow(header_.count, uint64_t(header_.token_bytes), &promised);
  MOE_CHECK(fits && promised == payload, "token shard '", path, "' is truncated or damaged: ", map_bytes_,
            " bytes, the header promises ", header_.count, " tokens of ", header_.token_bytes, " bytes",
            fits ? "" : " (more than any file holds)");
  MOE_CHECK(header_.vocab_size > 0 && header_.eos_id < header_.vocab_size, "token shard '", path, "' has EOS id ",
            header_.eos_id, " outside its vocabulary of ", header_.vocab_size);
  if (header_.token_bytes == 2 && header_.vocab_size > 65536) {
    MOE_CHECK(false, "token shard '", path, "' stores 2-byte tokens for a vocabulary of ", header_.vocab_size);
  }
  check_ids();
}

namespace {

// The largest token of a little-endian array: a plain loop the compiler vectorizes.
template <typename T>
uint32_t largest_token(const unsigned char* data, uint64_t count) {
  T largest = 0;
  for (uint64_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, data + i * sizeof(T), sizeof(T));
    largest = v > largest ? v : largest;
  }
  return largest;
}

}  // namespace

void TokenShard::check_ids() const {
  // One pass over the tokens: an id beyond the vocabulary would fail deep inside the model.
  const auto* data = static_cast<const unsigned char*>(map_) + ShardHeader::kBytes;
  const bool narrow = header_.token_bytes == 2;
  const uint32_t largest = narrow ? largest_token<uint16_t>(data, header_.count)
                                  : largest_token<uint32_t>(data, header_.count);
  if (header_.count == 0 || largest < header_.vocab_size) return;
  uint64_t at = 0;  // where, for the message (a second pass, on the error path only)
  while ((narrow ? get<uint16_t>(data + 2 * at) : get<uint32_t>(data + 4 * at)) != largest) ++at;
  MOE_CHECK(false, "token shard '", path_, "' holds token id ", largest, " (token ", at, ") beyond its vocabulary of ",
            header_.vocab_size);
}

TokenShard::TokenShard(TokenShard&& o) noexcept
    : path_(std::move(o.path_)), header_(o.header_), map_(o.map_), map_bytes_(o.map_bytes_) {
  o.map_ = nullptr;
}

TokenShard::~TokenShard() {
  if (map_ != nullptr && map_ != MAP_FAILED) ::munmap(map_, map_bytes_);
}

void TokenShard::read(uint64_t first, uint64_t n, int64_t* out) const {
  MOE_CHECK(first + n <= header_.count, "read of tokens [", first, ", ", first + n, ") past the end of '", path_,
            "' (", header_.count, " tokens)");
  const auto* data = static_cast<const unsigned char*>(map_) + ShardHeader::kBytes;
  if (header_.token_bytes == 2) {
    for (uint64_t i = 0; i < n; ++i) out[i] = get<uint16_t>(data + 2 * (first + i));
  } else {
    for (uint64_t i = 0; i < n; ++i) out[i] = get<uint32_t>(data + 4 * (first + i));
  }
}

}  // namespace moe::trainer
