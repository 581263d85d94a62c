#include "trainer/data/known_splits.h"

#include <oniguruma.h>

#include <memory>
#include <mutex>

#include "trainer/data/utf8.h"

namespace moe::trainer {

const char* const kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

// Character classes: exactly one of letter, number, space, other; CR and LF also carry kLineBreak.
constexpr uint8_t kLetter = 1, kNumber = 2, kSpace = 4, kOther = 8, kLineBreak = 16;
constexpr uint32_t kCodePoints = 0x110000;

// The class of every code point, from Oniguruma's tables (its \p{L}, \p{N} and \s), built once.
const uint8_t* code_point_classes() {
  static std::unique_ptr<uint8_t[]> table;
  static std::once_flag once;
  std::call_once(once, [] {
    initialize_oniguruma();
    const OnigEncoding utf8 = ONIG_ENCODING_UTF8;
    auto ctype_of = [&](const char* name) {
      const auto* p = reinterpret_cast<const OnigUChar*>(name);
      return ONIGENC_PROPERTY_NAME_TO_CTYPE(utf8, const_cast<OnigUChar*>(p), const_cast<OnigUChar*>(p) + 1);
    };
    const int letter = ctype_of("L"), number = ctype_of("N");
    table.reset(new uint8_t[kCodePoints]);
    for (uint32_t c = 0; c < kCodePoints; ++c) {
      table[c] = ONIGENC_IS_CODE_CTYPE(utf8, c, letter)                ? kLetter
                 : ONIGENC_IS_CODE_CTYPE(utf8, c, number)              ? kNumber
                 : ONIGENC_IS_CODE_CTYPE(utf8, c, ONIGENC_CTYPE_SPACE) ? kSpace
                                                                        : kOther;
    }
    table['\r'] |= kLineBreak;
    table['\n'] |= kLineBreak;
  });
  return table.get();
}

// The letters that (?i:...) matches for each ASCII letter of the contractions: their case, and
// for s the long s (U+017F), which case-folds to it.
bool folds_to(uint32_t c, char lower) {
  return c == uint32_t(lower) || c == uint32_t(lower - 'a' + 'A') || (lower == 's' && c == 0x17F);
}

}  // namespace

void initialize_oniguruma() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

std::optional<KnownSplit> known_split(const std::string& pattern) {
  if (pattern == kGpt2SplitPattern) return KnownSplit::kGpt2;
  if (pattern == kLlama3SplitPattern) return KnownSplit::kLlama3;
  if (pattern == kQwen2SplitPattern) return KnownSplit::kQwen2;
  return std::nullopt;
}

KnownSplitter::KnownSplitter(KnownSplit split) : split_(split), classes_(code_point_classes()) {}

size_t KnownSplitter::run(size_t i, uint8_t cls) const {
  while (i < cls_.size() && (cls_[i] & cls)) ++i;
  return i;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+  at character i.
size_t KnownSplitter::gpt2_match(size_t i) const {
  const size_t n = cls_.size();
  if (cp_[i] == '\'' && i + 1 < n) {
    const uint32_t a = cp_[i + 1], b = i + 2 < n ? cp_[i + 2] : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  }
  const size_t after_space = cp_[i] == ' ' && i + 1 < n ? i + 1 : i;
  for (uint8_t cls : {kLetter, kNumber, kOther}) {
    if (cls_[after_space] & cls) return run(after_space, cls);
    if (cls_[i] & cls) return run(i, cls);
  }
  const size_t end = run(i, kSpace);  // a space: all of the run, but leave the last to the next word
  return end < n && end - i >= 2 ? end - 1 : end;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*
// |\s*[\r\n]+|\s+(?!\S)|\s+  at character i.
size_t KnownSplitter::llama3_match(size_t i, size_t max_digits) const {
  const size_t n = cls_.size();
  if (cp_[i] == '\'' && i + 1 < n) {
    const uint32_t a = cp_[i + 1], b = i + 2 < n ? cp_[i + 2] : 0;
    if (folds_to(a, 's') || folds_to(a, 't') || folds_to(a, 'm') || folds_to(a, 'd')) return i + 2;
    if ((folds_to(a, 'r') && folds_to(b, 'e')) || (folds_to(a, 'v') && folds_to(b, 'e')) ||
        (folds_to(a, 'l') && folds_to(b, 'l')))
      return i + 3;
  }
  if (cls_[i] & kLetter) return run(i, kLetter);
  if (!(cls_[i] & (kLineBreak | kNumber)) && i + 1 < n && (cls_[i + 1] & kLetter)) return run(i + 1, kLetter);
  if (cls_[i] & kNumber) return std::min(run(i, kNumber), i + max_digits);
  const size_t after_space = cp_[i] == ' ' && i + 1 < n && (cls_[i + 1] & kOther) ? i + 1 : i;
  if (cls_[after_space] & kOther) return run(run(after_space, kOther), kLineBreak);
  const size_t end = run(i, kSpace);
  for (size_t j = end; j > i; --j)  // \s*[\r\n]+: up to the run's last line break
    if (cls_[j - 1] & kLineBreak) return j;
  return end < n && end - i >= 2 ? end - 1 : end;
}

void KnownSplitter::split(std::string_view text, std::vector<std::string_view>& pieces) {
  cls_.clear(), cp_.clear(), offset_.clear();
  for (size_t at = 0; at < text.size();) {  // valid UTF-8: the corpus reader refuses the rest
    size_t length = 0;
    uint32_t c = decode_utf8(text, at, length);
    c = c < kCodePoints ? c : 0xFFFD;
    offset_.push_back(uint32_t(at));
    cp_.push_back(c);
    cls_.push_back(classes_[c]);
    at += length;
  }
  offset_.push_back(uint32_t(text.size()));
  for (size_t i = 0; i < cls_.size();) {
    const size_t end = split_ == KnownSplit::kGpt2    ? gpt2_match(i)
                       : split_ == KnownSplit::kLlama3 ? llama3_match(i, 3)
                                                       : llama3_match(i, 1);
    pieces.push_back(text.substr(offset_[i], offset_[end] - offset_[i]));
    i = end;
  }
}

}  // namespace moe::trainer
