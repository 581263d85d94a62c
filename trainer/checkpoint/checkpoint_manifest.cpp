#include "trainer/checkpoint/checkpoint_manifest.h"

#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/safetensors.h"

namespace moe::trainer {

using Json = nlohmann::json;

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (const unsigned char c : bytes) {
    hex.push_back(digits[c >> 4]);
    hex.push_back(digits[c & 15]);
  }
  return hex;
}

std::string from_hex(const std::string& hex, const std::string& what) {
  MOE_CHECK(hex.size() % 2 == 0, what, ": odd-length hex string");
  auto value = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw InvalidArgument(what + ": '" + std::string(1, c) + "' is not a lowercase hex digit");
  };
  std::string bytes(hex.size() / 2, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = char(value(hex[2 * i]) * 16 + value(hex[2 * i + 1]));
  return bytes;
}

std::string CheckpointManifest::to_json() const {
  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["format_version"] = kFormatVersion;
  j["step"] = step;
  j["tokens"] = tokens;
  j["state"] = {{"data_epoch", state.data.epoch},          {"data_window", state.data.window},
                {"train_tokens", train_tokens},            {"seq_len", seq_len},
                {"bad_steps_in_a_row", state.bad_steps_in_a_row}, {"last_lr", state.last_lr}};
  j["topology"] = {{"world", world}, {"ep", ep}, {"edp", edp}};
  j["config"] = config;
  j["rng"] = Json::array();
  for (const auto& r : rng) j["rng"].push_back({{"cpu", to_hex(r.cpu)}, {"cuda", to_hex(r.cuda)}});
  j["files"] = Json::object();
  for (const auto& [name, f] : files) {
    j["files"][name] = {{"size", f.size}, {"crc32", f.crc32}, {"header_crc32", f.header_crc32}, {"rank", f.rank}};
  }
  j["tensors"] = Json::object();
  for (const auto& [name, t] : tensors) {
    j["tensors"][name] = {{"file", t.file}, {"dtype", t.dtype}, {"shape", t.shape}, {"crc32", t.crc32}};
  }
  return j.dump(1);
}

namespace {

// Typed access to a field of an object, refusing (naming the manifest and the field) anything else.
struct Fields {
  const Json& object;
  std::string what, where;

  const Json& at(const char* key, Json::value_t type) const {
    MOE_CHECK(object.contains(key), what, ": ", where, key, " is missing");
    const auto& v = object[key];
    const bool ok = type == Json::value_t::number_integer ? v.is_number_integer()
                    : type == Json::value_t::number_float ? v.is_number()
                                                          : v.type() == type;
    MOE_CHECK(ok, what, ": ", where, key, " has the wrong type (", v.type_name(), ")");
    return v;
  }
  int64_t integer(const char* key, int64_t lo, int64_t hi) const {
    const auto& v = at(key, Json::value_t::number_integer);
    MOE_CHECK(!v.is_number_unsigned() || v.get<uint64_t>() <= uint64_t(INT64_MAX), what, ": ", where, key,
              " is out of range");
    const auto x = v.get<int64_t>();
    MOE_CHECK(x >= lo && x <= hi, what, ": ", where, key, " = ", x, " is outside [", lo, ", ", hi, "]");
    return x;
  }
  uint64_t natural(const char* key) const {
    const auto& v = at(key, Json::value_t::number_integer);
    MOE_CHECK(v.is_number_unsigned() || v.get<int64_t>() >= 0, what, ": ", where, key, " is negative");
    return v.get<uint64_t>();
  }
  std::string text(const char* key) const { return at(key, Json::value_t::string).get<std::string>(); }
  Fields child(const char* key, Json::value_t type = Json::value_t::object) const {
    return {at(key, type), what, where + key + "."};
  }
};

}  // namespace

CheckpointManifest CheckpointManifest::parse(const std::string& text, const std::string& what) {
  const auto json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!json.is_discarded() && json.is_object(), what, ": not a JSON object (corrupt manifest)");
  const Fields root{json, what, ""};
  MOE_CHECK(root.text("format") == kFormat, what, ": format '", root.text("format"), "' is not '", kFormat, "'");
  const auto version = root.integer("format_version", 0, INT32_MAX);
  MOE_CHECK(version == kFormatVersion, what, ": format version ", version, " is not supported (this build reads ",
            kFormatVersion, ")");
  CheckpointManifest m;
  m.step = root.integer("step", 0, INT64_MAX);
  m.tokens = root.integer("tokens", 0, INT64_MAX);
  const auto state = root.child("state");
  m.state.step = m.step;
  m.state.tokens = m.tokens;
  m.state.data.epoch = state.natural("data_epoch");
  m.state.data.window = state.natural("data_window");
  m.train_tokens = state.natural("train_tokens");
  m.seq_len = state.integer("seq_len", 1, INT64_MAX);
  m.state.bad_steps_in_a_row = state.integer("bad_steps_in_a_row", 0, INT64_MAX);
  m.state.last_lr = state.at("last_lr", Json::value_t::number_float).get<double>();
  const auto topology = root.child("topology");
  m.world = int(topology.integer("world", 1, 1 << 24));
  m.ep = int(topology.integer("ep", 1, m.world));
  m.edp = int(topology.integer("edp", 1, m.world));
  MOE_CHECK(int64_t(m.ep) * m.edp == m.world, what, ": topology ep ", m.ep, " x edp ", m.edp, " is not world ",
            m.world);
  for (const auto& [key, value] : root.at("config", Json::value_t::object).items()) {
    MOE_CHECK(value.is_string(), what, ": config.", key, " is not a string");
    m.config[key] = value.get<std::string>();
  }
  const auto& rng = root.at("rng", Json::value_t::array);
  MOE_CHECK(rng.size() == size_t(m.world), what, ": rng has ", rng.size(), " entries for ", m.world, " ranks");
  for (size_t r = 0; r < rng.size(); ++r) {
    const Fields entry{rng[r], what, "rng[" + std::to_string(r) + "]."};
    MOE_CHECK(rng[r].is_object(), what, ": rng[", r, "] is not an object");
    m.rng.push_back({from_hex(entry.text("cpu"), what + ": rng"), from_hex(entry.text("cuda"), what + ": rng")});
  }
  for (const auto& [name, value] : root.at("files", Json::value_t::object).items()) {
    MOE_CHECK(value.is_object(), what, ": files.", name, " is not an object");
    MOE_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..", what,
              ": file name '", name, "' is not a plain name in the step directory");
    const Fields f{value, what, "files." + name + "."};
    ManifestFile file;
    file.size = f.natural("size");
    file.crc32 = uint32_t(f.integer("crc32", 0, UINT32_MAX));
    file.header_crc32 = uint32_t(f.integer("header_crc32", 0, UINT32_MAX));
    file.rank = int(f.integer("rank", 0, m.world - 1));
    m.files[name] = file;
  }
  for (const auto& [name, value] : root.at("tensors", Json::value_t::object).items()) {
    MOE_CHECK(value.is_object(), what, ": tensors.", name, " is not an object");
    const Fields t{value, what, "tensors." + name + "."};
    ManifestTensor tensor;
    tensor.file = t.text("file");
    MOE_CHECK(m.files.count(tensor.file), what, ": tensor ", name, " is in '", tensor.file,
              "', which the manifest does not list");
    tensor.dtype = t.text("dtype");
    uint64_t bytes = safetensors_dtype_bytes(tensor.dtype);
    MOE_CHECK(bytes > 0, what, ": tensor ", name, " has an unknown dtype '", tensor.dtype, "'");
    const auto& shape = t.at("shape", Json::value_t::array);
    MOE_CHECK(shape.size() <= 64, what, ": tensor ", name, " has ", shape.size(), " dimensions");
    for (const auto& d : shape) {
      MOE_CHECK(d.is_number_integer() && (d.is_number_unsigned() || d.get<int64_t>() >= 0), what, ": tensor ", name,
                " has a shape entry that is not a non-negative integer");
      const auto n = d.get<uint64_t>();
      MOE_CHECK(n <= uint64_t(INT64_MAX) && !__builtin_mul_overflow(bytes, n, &bytes), what, ": tensor ", name,
                " has a shape whose size overflows");
      tensor.shape.push_back(int64_t(n));
    }
    MOE_CHECK(bytes <= m.files[tensor.file].size, what, ": tensor ", name, " needs ", bytes, " bytes but its file '",
              tensor.file, "' has ", m.files[tensor.file].size);
    tensor.crc32 = uint32_t(t.integer("crc32", 0, UINT32_MAX));
    m.tensors[name] = tensor;
  }
  return m;
}

std::string optimizer_key(const std::string& param, const char* field) { return "optimizer." + param + "." + field; }

}  // namespace moe::trainer
