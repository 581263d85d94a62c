// Fuzzes the checkpoint manifest parser (trainer/checkpoint/checkpoint_manifest.h): every input is either
// refused with moe::InvalidArgument or parses to a manifest that writes and parses back the same.
#include <cstdint>
#include <string>

#include "common/check.h"
#include "trainer/checkpoint/checkpoint_manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto m = moe::trainer::CheckpointManifest::parse(text, "fuzz");
    const auto json = m.to_json();
    if (moe::trainer::CheckpointManifest::parse(json, "fuzz (written back)").to_json() != json) __builtin_trap();
  } catch (const moe::InvalidArgument&) {
  }
  return 0;
}
