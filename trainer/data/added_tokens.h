// The added tokens of a tokenizer.json (its special tokens, and any other added ones): the
// `tokenizers` library cuts them out of the text before pre-tokenization, leftmost first and the
// longest at one place, whether or not the caller asks for special tokens.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::trainer {

class AddedTokens {
 public:
  struct Piece {
    std::string_view text;
    int32_t token = -1;  // the added token's id, or -1 for text between them
  };

  void add(std::string content, int32_t id);
  bool empty() const { return tokens_.empty(); }

  /// Appends text cut at the added tokens: tokens and the (non-empty) text between them, in order.
  void split(std::string_view text, std::vector<Piece>& pieces) const;

 private:
  struct Token {
    std::string content;
    int32_t id;
  };
  /// The longest token that starts at `at`, or nullptr.
  const Token* longest_at(std::string_view text, size_t at) const;

  std::vector<Token> tokens_;
  std::array<std::vector<size_t>, 256> by_first_byte_;  // indices into tokens_, longest first
};

}  // namespace moe::trainer
