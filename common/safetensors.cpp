#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/durable_file.h"

namespace moe {

size_t safetensors_dtype_bytes(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},   {"BOOL", 1}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

namespace {

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// The non-negative integer a JSON value holds, or a refusal naming the field.
uint64_t unsigned_field(const nlohmann::json& v, const std::string& what, const std::string& field) {
  MOE_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), what, ": ", field,
            " is not a non-negative integer");
  return v.get<uint64_t>();
}

SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& v, const std::string& what) {
  const auto where = what + ": tensor '" + name + "'";
  MOE_CHECK(v.is_object(), where, " is not an object");
  MOE_CHECK(v.contains("dtype") && v["dtype"].is_string(), where, " has no dtype");
  MOE_CHECK(v.contains("shape") && v["shape"].is_array(), where, " has no shape");
  MOE_CHECK(v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2, where,
            " has no data_offsets [begin, end]");
  SafetensorsEntry e;
  e.name = name;
  e.dtype = v["dtype"].get<std::string>();
  const uint64_t element = safetensors_dtype_bytes(e.dtype);
  MOE_CHECK(element > 0, where, " has an unknown dtype '", e.dtype, "'");
  MOE_CHECK(v["shape"].size() <= 64, where, " has ", v["shape"].size(), " dimensions");
  uint64_t bytes = element;
  for (const auto& d : v["shape"]) {
    const uint64_t n = unsigned_field(d, where, "a shape entry");
    MOE_CHECK(n <= uint64_t(INT64_MAX) && !__builtin_mul_overflow(bytes, n, &bytes), where,
              " has a shape whose size overflows");
    e.shape.push_back(int64_t(n));
  }
  e.begin = unsigned_field(v["data_offsets"][0], where, "data_offsets[0]");
  e.end = unsigned_field(v["data_offsets"][1], where, "data_offsets[1]");
  MOE_CHECK(e.begin <= e.end && e.end - e.begin == bytes, where, " has data_offsets [", e.begin, ", ", e.end,
            "] for ", bytes, " bytes of data");
  return e;
}

}  // namespace

namespace {

// The header length the first 8 bytes give, checked against the file before anything is read.
uint64_t header_length(const uint8_t* bytes, uint64_t available, uint64_t file_size, const std::string& what) {
  MOE_CHECK(available >= 8 && file_size >= 8, what, ": not a safetensors file (", file_size,
            " bytes, shorter than the 8-byte header length)");
  const uint64_t n = read_le64(bytes);
  MOE_CHECK(n <= kMaxSafetensorsHeaderBytes, what, ": header length ", n, " exceeds the ",
            kMaxSafetensorsHeaderBytes, "-byte limit (corrupt or not a safetensors file)");
  MOE_CHECK(n <= file_size - 8, what, ": header length ", n, " runs past the end of the ", file_size, "-byte file");
  return n;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t available, uint64_t file_size,
                                           const std::string& what) {
  const uint64_t n = header_length(bytes, available, file_size, what);
  MOE_CHECK(available >= 8 + n, what, ": header of ", n, " bytes was not read whole");
  const auto* text = reinterpret_cast<const char*>(bytes + 8);
  const auto json = nlohmann::json::parse(text, text + n, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!json.is_discarded() && json.is_object(), what, ": the header is not a JSON object");
  SafetensorsHeader h;
  h.data_start = 8 + n;
  for (const auto& [key, value] : json.items()) {
    if (key == "__metadata__") {
      MOE_CHECK(value.is_object(), what, ": __metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        MOE_CHECK(mv.is_string(), what, ": __metadata__ entry '", mk, "' is not a string");
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_entry(key, value, what));
  }
  std::sort(h.tensors.begin(), h.tensors.end(),
            [](const auto& a, const auto& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  const uint64_t data_bytes = file_size - h.data_start;
  uint64_t expected = 0;
  for (const auto& e : h.tensors) {
    MOE_CHECK(e.begin == expected, what, ": tensor '", e.name, "' starts at data byte ", e.begin, ", expected ",
              expected, " (tensors must tile the data without gaps or overlaps)");
    expected = e.end;
  }
  MOE_CHECK(expected == data_bytes, what, ": the tensors cover ", expected, " data bytes but the file has ", data_bytes,
            " (truncated, or bytes appended)");
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path)
    : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
  if (fd_.get() < 0) {
    const int error = errno;
    throw InvalidArgument("cannot open '" + path + "': " + std::strerror(error));
  }
  struct stat st {};
  MOE_CHECK(::fstat(fd_.get(), &st) == 0 && S_ISREG(st.st_mode), "'", path, "' is not a regular file");
  file_size_ = uint64_t(st.st_size);
  uint8_t length[8] = {};
  const uint64_t got = file_size_ >= 8 && ::pread(fd_.get(), length, 8, 0) == 8 ? 8 : 0;
  const uint64_t n = header_length(length, got, file_size_, path);  // before anything of that size exists
  header_bytes_.resize(8 + n);
  std::memcpy(header_bytes_.data(), length, 8);
  MOE_CHECK(n == 0 || ::pread(fd_.get(), header_bytes_.data() + 8, n, 8) == ssize_t(n), path,
            ": cannot read its header");
  header_ = parse_safetensors_header(reinterpret_cast<const uint8_t*>(header_bytes_.data()), header_bytes_.size(),
                                     file_size_, path);
  for (size_t i = 0; i < header_.tensors.size(); ++i) {
    MOE_CHECK(index_.emplace(header_.tensors[i].name, i).second, path, ": tensor '", header_.tensors[i].name,
              "' appears twice");
  }
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

void SafetensorsFile::read(const SafetensorsEntry& entry, void* out) const {
  auto* p = static_cast<char*>(out);
  uint64_t offset = header_.data_start + entry.begin, left = entry.end - entry.begin;
  while (left > 0) {
    const ssize_t n = ::pread(fd_.get(), p, left, off_t(offset));
    if (n < 0 && errno == EINTR) continue;
    MOE_CHECK(n > 0, path_, ": cannot read tensor '", entry.name, "' (", n < 0 ? std::strerror(errno) : "end of file",
              ")");
    p += n;
    offset += uint64_t(n);
    left -= uint64_t(n);
  }
}

WrittenSafetensors write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) {
    uint64_t bytes = safetensors_dtype_bytes(t.dtype);
    MOE_CHECK(bytes > 0, path, ": unknown dtype '", t.dtype, "' for '", t.name, "'");
    for (const auto d : t.shape) bytes *= uint64_t(d);
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    sizes.push_back(bytes);
    offset += bytes;
  }
  auto text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  WrittenSafetensors written;
  DurableFile file(path);
  file.write(length, 8);
  file.write(text.data(), text.size());
  written.header_crc32 = file.crc32();
  for (size_t i = 0; i < tensors.size(); ++i) {
    file.write(tensors[i].data, sizes[i]);
    written.tensor_crc32.push_back(crc32_of(tensors[i].data, sizes[i]));
  }
  file.close();
  written.size = file.size();
  written.crc32 = file.crc32();
  return written;
}

}  // namespace moe
