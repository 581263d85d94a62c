// safetensors <-> LibTorch: dtype names and tensors read from a validated file.
#pragma once
#include <torch/types.h>

#include <string>

#include "common/safetensors.h"

namespace moe {

/// "F32", "BF16", ... of a scalar type; refuses one safetensors has no name for.
const char* safetensors_dtype(torch::ScalarType type);
/// The scalar type of a safetensors dtype name; refuses, naming `what`, one we do not read.
torch::ScalarType torch_dtype_of(const std::string& dtype, const std::string& what);
/// The entry's tensor (CPU) read from the file.
torch::Tensor read_tensor(const SafetensorsFile& file, const SafetensorsEntry& entry);

}  // namespace moe
