// A pre-tokenizer's regular-expression split, as the `tokenizers` library runs it: the same engine
// (Oniguruma, its default syntax, UTF-8), the same walk over the matches (an empty match right
// after the previous one is skipped), and the "Isolated" behaviour: the text is cut into the
// matches and the gaps between them, in order, empty pieces dropped.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/data/known_splits.h"

struct re_pattern_buffer;
struct re_registers;

namespace moe::trainer {

class RegexSplit {
 public:
  /// Compiles the pattern; throws naming it if Oniguruma refuses it. The patterns of
  /// known_splits.h run by their hand-written matchers unless `hand_written` is false.
  explicit RegexSplit(const std::string& pattern, bool hand_written = true);
  ~RegexSplit();
  RegexSplit(const RegexSplit&) = delete;
  RegexSplit& operator=(const RegexSplit&) = delete;

  /// Appends text's pieces to `pieces` (views into text).
  void split(std::string_view text, std::vector<std::string_view>& pieces);

 private:
  std::string pattern_;
  re_pattern_buffer* regex_ = nullptr;
  re_registers* region_ = nullptr;  // one per splitter: a splitter belongs to one thread
  std::unique_ptr<KnownSplitter> known_;
};

}  // namespace moe::trainer
