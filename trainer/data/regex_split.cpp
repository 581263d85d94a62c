#include "trainer/data/regex_split.h"

#include <oniguruma.h>

#include "common/check.h"
#include "trainer/data/utf8.h"

namespace moe::trainer {

namespace {

std::string onig_message(int code, OnigErrorInfo* info) {
  OnigUChar text[ONIG_MAX_ERROR_MESSAGE_LEN];
  onig_error_code_to_str(text, code, info);
  return reinterpret_cast<const char*>(text);
}

}  // namespace

RegexSplit::RegexSplit(const std::string& pattern, bool hand_written) : pattern_(pattern) {
  initialize_oniguruma();
  OnigErrorInfo info;
  const auto* begin = reinterpret_cast<const OnigUChar*>(pattern.data());
  const int rc = onig_new(&regex_, begin, begin + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                          ONIG_SYNTAX_DEFAULT, &info);
  MOE_CHECK(rc == ONIG_NORMAL, "the split pattern '", pattern, "' does not compile: ", onig_message(rc, &info));
  region_ = onig_region_new();
  if (const auto known = known_split(pattern); known && hand_written) known_ = std::make_unique<KnownSplitter>(*known);
}

RegexSplit::~RegexSplit() {
  if (region_ != nullptr) onig_region_free(region_, 1);
  if (regex_ != nullptr) onig_free(regex_);
}

void RegexSplit::split(std::string_view text, std::vector<std::string_view>& pieces) {
  if (known_) return known_->split(text, pieces);
  const auto* begin = reinterpret_cast<const OnigUChar*>(text.data());
  const auto* end = begin + text.size();
  size_t gap_start = 0, search_from = 0;
  bool matched_before = false;
  size_t last_match_end = 0;
  while (search_from <= text.size()) {
    const int at = onig_search(regex_, begin, end, begin + search_from, end, region_, ONIG_OPTION_NONE);
    if (at == ONIG_MISMATCH) break;
    MOE_CHECK(at >= 0, "the split pattern '", pattern_, "' failed on a document: ", onig_message(at, nullptr));
    const auto match_start = size_t(region_->beg[0]), match_end = size_t(region_->end[0]);
    if (match_start == match_end && matched_before && last_match_end == match_end) {
      // No empty match twice at one place: step over a character (past the end: out of the loop).
      search_from += search_from < text.size() ? utf8_length(static_cast<unsigned char>(text[search_from])) : 1;
      continue;
    }
    search_from = last_match_end = match_end;
    matched_before = true;
    if (match_start > gap_start) pieces.push_back(text.substr(gap_start, match_start - gap_start));
    if (match_end > match_start) pieces.push_back(text.substr(match_start, match_end - match_start));
    gap_start = match_end;
  }
  if (gap_start < text.size()) pieces.push_back(text.substr(gap_start));
}

}  // namespace moe::trainer
