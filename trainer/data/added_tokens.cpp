#include "trainer/data/added_tokens.h"

#include <algorithm>

namespace moe::trainer {

void AddedTokens::add(std::string content, int32_t id) {
  if (content.empty()) return;  // matches nothing
  auto& bucket = by_first_byte_[static_cast<unsigned char>(content[0])];
  tokens_.push_back({std::move(content), id});
  bucket.push_back(tokens_.size() - 1);
  std::stable_sort(bucket.begin(), bucket.end(),
                   [&](size_t a, size_t b) { return tokens_[a].content.size() > tokens_[b].content.size(); });
}

const AddedTokens::Token* AddedTokens::longest_at(std::string_view text, size_t at) const {
  for (size_t i : by_first_byte_[static_cast<unsigned char>(text[at])]) {
    const auto& content = tokens_[i].content;
    if (text.compare(at, content.size(), content) == 0) return &tokens_[i];
  }
  return nullptr;
}

void AddedTokens::split(std::string_view text, std::vector<Piece>& pieces) const {
  size_t text_start = 0;
  for (size_t at = 0; at < text.size();) {
    const Token* token = by_first_byte_[static_cast<unsigned char>(text[at])].empty() ? nullptr : longest_at(text, at);
    if (token == nullptr) {
      ++at;
      continue;
    }
    if (at > text_start) pieces.push_back({text.substr(text_start, at - text_start), -1});
    pieces.push_back({text.substr(at, token->content.size()), token->id});
    at += token->content.size();
    text_start = at;
  }
  if (text_start < text.size()) pieces.push_back({text.substr(text_start), -1});
}

}  // namespace moe::trainer
