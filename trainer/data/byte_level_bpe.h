// A native encoder for the byte-level BPE family of Hugging Face tokenizer.json files (MiniMind's,
// GPT-2's, Llama-3's, Qwen2's and the like), with the `tokenizers` library's ids: added tokens cut
// out first, then NFC where the file asks for it, the pre-tokenizer's regular-expression splits
// (Oniguruma, as in the library), bytes to their single-byte tokens, the ranked merges. Each worker
// keeps a cache of the words it has merged, so that a common word costs one lookup.
//
// A file outside the family (another model, normalizer or pre-tokenizer, options this encoder does
// not reproduce) is refused with the reason, and moe-prepare runs the library instead.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "trainer/data/added_tokens.h"
#include "trainer/data/bpe_merges.h"
#include "trainer/data/tokenizer.h"

namespace moe::trainer {

class ByteLevelBpe : public std::enable_shared_from_this<ByteLevelBpe> {
 public:
  /// The model of a tokenizer.json, or nullptr with `unsupported` saying what this encoder does
  /// not reproduce. Throws naming the file if it is not valid JSON.
  static std::shared_ptr<const ByteLevelBpe> load(const std::string& tokenizer_json, std::string& unsupported);

  /// An encoder for one worker thread (its own regexes and word cache).
  std::unique_ptr<BatchEncoder> encoder() const;

  bool nfc = false;                         // the normalizer: NFC, or none
  std::vector<std::string> split_patterns;  // the pre-tokenizer's splits, in order
  bool ignore_merges = false;               // a word that is a token is that token (Llama-3)
  std::array<int32_t, 256> byte_token{};    // -1: the vocabulary lacks the byte, which is dropped
  std::unordered_map<std::string, int32_t> vocab;  // token bytes -> id
  BpeMerges merges;
  AddedTokens raw_added, normalized_added;  // matched before and after normalization
};

}  // namespace moe::trainer
