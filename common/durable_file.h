// Files that survive a crash: written through a descriptor, checked at every call, fsync'ed, and
// directories fsync'ed after a rename so that the new name is on disk too. Every error names the
// path and the system's reason (e.g. "No space left on device").
#pragma once
#include <cstdint>
#include <cstddef>
#include <string>
#include <utility>

namespace moe {

/// zlib's CRC-32 (the one Python's zlib.crc32 computes), continued from `crc`.
uint32_t crc32_of(const void* data, size_t bytes, uint32_t crc = 0);

/// An open file descriptor, closed when it goes out of scope (also when a constructor that holds
/// one throws half-way).
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd();
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  int get() const { return fd_; }

 private:
  int fd_;
};

/// A file opened for writing (created or truncated); write() checks every call and keeps the
/// running CRC-32 of everything written; close() fsyncs and closes. The destructor of a file that
/// was not closed closes it without fsync (an error path).
class DurableFile {
 public:
  explicit DurableFile(std::string path);
  ~DurableFile();
  DurableFile(const DurableFile&) = delete;
  DurableFile& operator=(const DurableFile&) = delete;
  void write(const void* data, size_t bytes);
  void close();
  uint64_t size() const { return size_; }
  uint32_t crc32() const { return crc_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint32_t crc_ = 0;
};

/// Writes `text` to path through path + ".tmp" (fsync'ed), renames it into place and fsyncs the
/// directory: readers see the old file or the new one, never a part.
void replace_file_durably(const std::string& path, const std::string& text);

/// fsync of a directory, so that the entries created or renamed in it are durable.
void fsync_directory(const std::string& dir);

/// rename(2) with an error naming both paths.
void rename_path(const std::string& from, const std::string& to);

/// The whole file as bytes; refuses (naming the file) one larger than max_bytes.
std::string read_small_file(const std::string& path, uint64_t max_bytes);

}  // namespace moe
