// Hand-written matchers for the three split patterns of the byte-level BPE family (GPT-2's, which
// MiniMind's tokenizer uses too, Llama-3's and Qwen2's), giving exactly Oniguruma's pieces for them
// at several times its speed. Each pattern's alternatives are decided at the current character from
// its class (letter \p{L}, number \p{N}, space \s, or other), which Oniguruma's own Unicode tables
// provide, so the classes cannot drift from the regex engine's. RegexSplit uses them for these
// patterns; tests/trainer/data/byte_level_bpe_test.cpp compares them with Oniguruma on random text.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe::trainer {

enum class KnownSplit { kGpt2, kLlama3, kQwen2 };

/// Oniguruma's one-time set-up (UTF-8), before its first regex or table lookup; thread-safe.
void initialize_oniguruma();

/// The hand-written matcher for this exact pattern, if there is one.
std::optional<KnownSplit> known_split(const std::string& pattern);

extern const char* const kGpt2SplitPattern;
extern const char* const kLlama3SplitPattern;
extern const char* const kQwen2SplitPattern;

/// Cuts text into the pattern's matches (every character starts one, so there are no gaps).
class KnownSplitter {
 public:
  explicit KnownSplitter(KnownSplit split);
  void split(std::string_view text, std::vector<std::string_view>& pieces);

 private:
  size_t gpt2_match(size_t i) const;
  size_t llama3_match(size_t i, size_t max_digits) const;
  size_t run(size_t i, uint8_t cls) const;

  KnownSplit split_;
  const uint8_t* classes_;              // per code point, shared
  std::vector<uint8_t> cls_;            // per character of the text being split
  std::vector<uint32_t> cp_, offset_;  // its code points, and byte offsets (one more)
};

}  // namespace moe::trainer
