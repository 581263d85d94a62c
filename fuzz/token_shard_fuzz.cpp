// Fuzzes the token-shard reader (trainer/data/token_shard.h) with whole files: every input is either
// refused with moe::InvalidArgument or yields a shard whose every token can be read and lies inside
// its vocabulary.
#include <cstdint>
#include <vector>

#include "common/check.h"
#include "fuzz/fuzz_file.h"
#include "trainer/data/token_shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = moe::fuzz::write_input(data, size);
  try {
    const moe::trainer::TokenShard shard(path);
    std::vector<int64_t> tokens(shard.size());
    if (!tokens.empty()) shard.read(0, tokens.size(), tokens.data());
    for (const auto t : tokens) {
      if (t < 0 || t >= int64_t(shard.header().vocab_size)) __builtin_trap();
    }
  } catch (const moe::InvalidArgument&) {
  }
  return 0;
}
