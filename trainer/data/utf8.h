// Walking text that is valid UTF-8 (the corpus reader refuses the rest: invalid_utf8_at): the
// length of the character at a byte, and its code point.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace moe::trainer {

/// The byte length of the character that starts with `lead`.
inline size_t utf8_length(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

/// The code point of the character at `at`; `length` receives its byte length. A character cut
/// off by the end of the text decodes from the bytes there are.
inline uint32_t decode_utf8(std::string_view text, size_t at, size_t& length) {
  const auto lead = static_cast<unsigned char>(text[at]);
  length = utf8_length(lead);
  uint32_t c = length == 1 ? lead : lead & (0xFF >> (length + 1));
  for (size_t k = 1; k < length && at + k < text.size(); ++k) c = c << 6 | (text[at + k] & 0x3F);
  return c;
}

}  // namespace moe::trainer
