#include "common/safetensors_torch.h"

#include <map>

#include "common/check.h"

namespace moe {

const char* safetensors_dtype(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return "F32";
    case torch::kFloat64: return "F64";
    case torch::kBFloat16: return "BF16";
    case torch::kFloat16: return "F16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kUInt8: return "U8";
    default: throw InvalidArgument(std::string("no safetensors dtype for ") + c10::toString(type));
  }
}

torch::ScalarType torch_dtype_of(const std::string& dtype, const std::string& what) {
  static const std::map<std::string, torch::ScalarType> types = {
      {"F32", torch::kFloat32}, {"F64", torch::kFloat64}, {"BF16", torch::kBFloat16}, {"F16", torch::kFloat16},
      {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"U8", torch::kUInt8}};
  const auto it = types.find(dtype);
  MOE_CHECK(it != types.end(), what, ": dtype ", dtype, " is not one this program reads");
  return it->second;
}

torch::Tensor read_tensor(const SafetensorsFile& file, const SafetensorsEntry& entry) {
  auto value = torch::empty(entry.shape, torch_dtype_of(entry.dtype, file.path()));
  file.read(entry, value.data_ptr());
  return value;
}

}  // namespace moe
