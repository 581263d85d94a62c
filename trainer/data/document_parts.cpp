#include "trainer/data/document_parts.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>

#include "common/check.h"

namespace fs = std::filesystem;

namespace moe::trainer {

std::string chunk_path(const std::string& dir, uint64_t index) {
  char name[32];
  std::snprintf(name, sizeof name, "chunk-%05llu.bin", static_cast<unsigned long long>(index));
  return (fs::path(dir) / name).string();
}

PartWriter::PartWriter(std::string dir, uint64_t chunk_tokens, uint64_t chunks)
    : dir_(std::move(dir)), chunk_tokens_(chunk_tokens), chunks_(chunks) {
  fs::create_directories(dir_);
  for (const auto& e : fs::directory_iterator(dir_)) {  // written after the last checkpoint
    const auto name = e.path().filename().string();
    if (name.rfind("chunk-", 0) == 0 && e.path().string() >= chunk_path(dir_, chunks_)) fs::remove(e.path());
  }
}

PartWriter::~PartWriter() {
  if (file_ != nullptr) std::fclose(file_);  // an error path: the open chunk is not counted
}

bool PartWriter::add(const std::vector<int>& ids) {
  const auto path = chunk_path(dir_, chunks_);
  if (file_ == nullptr) {
    file_ = std::fopen(path.c_str(), "wb");
    MOE_CHECK(file_ != nullptr, "cannot create '", path, "': ", std::strerror(errno));
  }
  const auto count = static_cast<uint32_t>(ids.size());
  const bool ok = std::fwrite(&count, sizeof count, 1, file_) == 1 &&
                  std::fwrite(ids.data(), sizeof(int), ids.size(), file_) == ids.size();
  MOE_CHECK(ok, "writing '", path, "' failed: ", std::strerror(errno));
  open_tokens_ += ids.size() + 1;
  if (open_tokens_ < chunk_tokens_) return false;
  close();
  return true;
}

void PartWriter::close() {
  if (file_ == nullptr) return;
  const auto path = chunk_path(dir_, chunks_);
  const bool ok = std::fflush(file_) == 0 && !std::ferror(file_);
  std::fclose(file_);
  file_ = nullptr;
  MOE_CHECK(ok, "writing '", path, "' failed: ", std::strerror(errno));
  ++chunks_;
  open_tokens_ = 0;
}

void read_part(const std::string& dir, uint64_t chunks,
               const std::function<void(const std::vector<int>&)>& on_document) {
  std::vector<int> ids;
  for (uint64_t c = 0; c < chunks; ++c) {
    const auto path = chunk_path(dir, c);
    std::vector<char> buffer(1 << 20);  // outlives the stream that uses it
    const std::unique_ptr<std::FILE, int (*)(std::FILE*)> owner(std::fopen(path.c_str(), "rb"), &std::fclose);
    std::FILE* file = owner.get();
    MOE_CHECK(file != nullptr, "cannot read '", path, "' (is --out_dir on a file system every rank shares?): ",
              std::strerror(errno));
    std::setvbuf(file, buffer.data(), _IOFBF, buffer.size());
    uint32_t count = 0;
    while (std::fread(&count, sizeof count, 1, file) == 1) {
      ids.resize(count);
      MOE_CHECK(std::fread(ids.data(), sizeof(int), count, file) == count, "'", path,
                "' is truncated: a record of ", count, " ids ends early");
      on_document(ids);
    }
  }
}

}  // namespace moe::trainer
