// The safetensors format (huggingface/safetensors), which Python's `safetensors` and torch read:
//   8 bytes   N, the header's length (uint64, little endian)
//   N bytes   JSON: {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//             "__metadata__": {"<key>": "<string>", ...}}, padded with spaces to a multiple of 8
//   ...       the tensors' bytes, row-major, little endian; offsets count from the header's end and
//             the tensors tile the data without gaps or overlaps.
// Nothing in it executes code when read. The reader validates the whole header against the file's
// real size before anything is allocated from it; the writer fsyncs. No LibTorch here (the fuzz
// targets build this alone).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/durable_file.h"

namespace moe {

/// Bytes per element of a safetensors dtype name ("F32", "BF16", "I64", ...); 0 if unknown.
size_t safetensors_dtype_bytes(const std::string& dtype);

struct SafetensorsEntry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data section
};

struct SafetensorsHeader {
  uint64_t data_start = 0;  // file offset of the data section: 8 + N
  std::vector<SafetensorsEntry> tensors;  // in file order (ascending offsets)
  std::map<std::string, std::string> metadata;
};

/// Header size limit: larger headers are refused before they are read.
constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t(100) << 20;

/// Validates a header: `bytes` holds the file's first `available` bytes (at least 8 + N of them),
/// file_size is the whole file's. Refuses, naming `what` (the file): a length beyond the file or
/// the limit, malformed JSON, an unknown dtype, a negative or overflowing shape, offsets that
/// disagree with the shape, leave the file, overlap or leave gaps, a data section whose size is
/// not the file's rest, duplicate names.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t available, uint64_t file_size,
                                           const std::string& what);

/// An opened, validated file; tensors are read on demand with pread.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const SafetensorsHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  /// The header's bytes (8 + N), e.g. for a checksum.
  const std::string& header_bytes() const { return header_bytes_; }
  /// nullptr if absent.
  const SafetensorsEntry* find(const std::string& name) const;
  /// Copies the entry's end - begin bytes into out.
  void read(const SafetensorsEntry& entry, void* out) const;

 private:
  std::string path_;
  UniqueFd fd_;
  uint64_t file_size_ = 0;
  std::string header_bytes_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

struct SafetensorsTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // shape's product x dtype bytes
};

struct WrittenSafetensors {
  uint64_t size = 0;
  uint32_t crc32 = 0;         // of the whole file
  uint32_t header_crc32 = 0;  // of its first 8 + N bytes
  std::vector<uint32_t> tensor_crc32;  // per tensor, in the order given
};

/// Writes the tensors in the order given, fsyncs and closes the file.
WrittenSafetensors write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                                     const std::map<std::string, std::string>& metadata = {});

}  // namespace moe
