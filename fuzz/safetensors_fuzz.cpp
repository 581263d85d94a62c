// Fuzzes the safetensors reader (common/safetensors.h) with whole files: every input is either
// refused with moe::InvalidArgument or yields tensors that lie inside the file and tile its data.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "common/check.h"
#include "common/safetensors.h"
#include "fuzz/fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = moe::fuzz::write_input(data, size);
  try {
    const moe::SafetensorsFile file(path);
    uint64_t end = 0;
    for (const auto& t : file.header().tensors) {
      if (t.begin != end || file.header().data_start + t.end > size) __builtin_trap();
      end = t.end;
      std::string bytes(t.end - t.begin, '\0');
      file.read(t, bytes.data());
    }
    if (file.header().data_start + end != size) __builtin_trap();
  } catch (const moe::InvalidArgument&) {
  }
  return 0;
}
