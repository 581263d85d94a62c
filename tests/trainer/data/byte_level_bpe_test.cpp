// The native byte-level BPE's parts against the `tokenizers` library's behaviour: the order of
// merges, the regex split's walk over empty matches, the added tokens' leftmost-longest cut. The
// whole encoder is checked id for id against the library by hf_prepare_check.py (four families of
// tokenizer.json on an adversarial corpus).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/check.h"
#include "trainer/data/added_tokens.h"
#include "trainer/data/bpe_merges.h"
#include "trainer/data/byte_level_bpe.h"
#include "trainer/data/regex_split.h"

namespace moe::trainer {
namespace {

std::vector<int32_t> merged(const BpeMerges& merges, std::vector<int32_t> ids) {
  BpeScratch scratch;
  merge_word(merges, ids, scratch);
  return ids;
}

TEST(BpeMerges, LowestRankFirstWhereverItIs) {
  BpeMerges merges;  // symbols a=0 b=1 c=2; ab=3 bc=4
  merges.add(1, 2, /*rank=*/0, /*merged=*/4);
  merges.add(0, 1, 1, 3);
  EXPECT_EQ(merged(merges, {0, 1, 2}), (std::vector<int32_t>{0, 4}));  // bc before ab
  EXPECT_EQ(merged(merges, {0, 1, 0, 1}), (std::vector<int32_t>{3, 3}));
}

TEST(BpeMerges, EqualRanksLeftmostFirstAndOverlapsOnce) {
  BpeMerges merges;  // a=0, aa=1, aaaa=2
  merges.add(0, 0, 0, 1);
  merges.add(1, 1, 1, 2);
  EXPECT_EQ(merged(merges, {0, 0, 0}), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(merged(merges, {0, 0, 0, 0, 0}), (std::vector<int32_t>{2, 0}));
  EXPECT_EQ(merged(merges, {0}), (std::vector<int32_t>{0}));
}

TEST(BpeMerges, APairListedTwiceKeepsItsLastEntry) {
  BpeMerges merges;
  merges.add(0, 1, 0, 5);
  merges.add(0, 1, 7, 6);
  ASSERT_NE(merges.find(0, 1), nullptr);
  EXPECT_EQ(merges.find(0, 1)->rank, 7);
  EXPECT_EQ(merges.find(0, 1)->merged, 6);
  EXPECT_EQ(merges.find(1, 0), nullptr);
  EXPECT_EQ(merges.size(), 1u);
  for (int i = 0; i < 1000; ++i) merges.add(i, i + 1, i, i + 2);  // grows past its first table
  EXPECT_EQ(merges.find(999, 1000)->merged, 1001);
}

std::vector<std::string> pieces(const std::string& pattern, std::string_view text) {
  RegexSplit split(pattern);
  std::vector<std::string_view> views;
  split.split(text, views);
  return {views.begin(), views.end()};
}

TEST(RegexSplit, MatchesAndGapsInOrderEmptyMatchesDropped) {
  // The library's answers: pre_tokenizers.Split(Regex("x*"), "isolated").pre_tokenize_str(...)
  EXPECT_EQ(pieces("x*", "axxb"), (std::vector<std::string>{"a", "xx", "b"}));
  EXPECT_EQ(pieces("x*", "a\xC3\xA9xxb"), (std::vector<std::string>{"a", "\xC3\xA9", "xx", "b"}));
  // pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str("I'm  here\n\n  ok")
  EXPECT_EQ(pieces(kGpt2SplitPattern, "I'm  here\n\n  ok"),
            (std::vector<std::string>{"I", "'m", " ", " here", "\n\n ", " ok"}));
  EXPECT_TRUE(pieces(kGpt2SplitPattern, "").empty());
}

std::string utf8(uint32_t c) {
  std::string out;
  if (c < 0x80) {
    out += char(c);
  } else if (c < 0x800) {
    out += char(0xC0 | c >> 6), out += char(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += char(0xE0 | c >> 12), out += char(0x80 | (c >> 6 & 0x3F)), out += char(0x80 | (c & 0x3F));
  } else {
    out += char(0xF0 | c >> 18), out += char(0x80 | (c >> 12 & 0x3F)), out += char(0x80 | (c >> 6 & 0x3F));
    out += char(0x80 | (c & 0x3F));
  }
  return out;
}

// Text made to reach every branch of the three patterns: the contractions' letters in both cases
// and their case-folding relatives (long s, Kelvin sign, sharp s, the st ligature), every Unicode
// space and line break, the characters Python calls spaces but Unicode does not, letters of each
// kind (Lt, Lm, one new in Unicode 16), numbers of each kind, combining marks, format characters,
// emoji, punctuation; and random code points.
std::string random_text(std::mt19937& rng) {
  static const std::vector<uint32_t> alphabet = {
      '\'', 's', 'S', 0x17F, 't', 'T', 'r', 'R', 'e', 'E', 'v', 'V', 'l', 'L', 'm', 'M', 'd', 'D', 'k', 0x212A,
      0xDF, 0xFB06, 0x130, ' ', ' ', ' ', '\t', '\n', '\n', '\r', 0x0B, 0x0C, 0x1C, 0x1F, 0x85, 0xA0, 0x1680, 0x2000,
      0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0x200B, 0xFEFF, 0x180E, 'a', 'z', 0xE9, 0x4E2D, 0x1C5, 0x2B0,
      0x139C0, '0', '9', 0x663, 0x2460, 0x216B, 0xBD, 0x301, 0x20DD, 0xAD, 0x200D, 0x1F600, 0x1F3FD, ',', '.', '-',
      '"', '#', '_', 0, 0x7F, 0xFFFD, 0xE000, 0x10FFFF};
  std::string text;
  const int length = int(rng() % 24);
  for (int i = 0; i < length; ++i) {
    uint32_t c = alphabet[rng() % alphabet.size()];
    if (rng() % 8 == 0) {
      do c = rng() % 0x110000;
      while (c >= 0xD800 && c <= 0xDFFF);  // surrogates are not text
    }
    text += utf8(c);
  }
  return text;
}

TEST(RegexSplit, HandWrittenMatchersEqualOnigurumaOnRandomText) {
  for (const char* pattern : {kGpt2SplitPattern, kLlama3SplitPattern, kQwen2SplitPattern}) {
    RegexSplit fast(pattern), engine(pattern, /*hand_written=*/false);
    std::mt19937 rng(20261202);
    std::vector<std::string_view> a, b;
    for (int i = 0; i < 200000; ++i) {
      const std::string text = random_text(rng);
      a.clear(), b.clear();
      fast.split(text, a);
      engine.split(text, b);
      ASSERT_EQ(a, b) << "pattern " << pattern << ", text " << nlohmann::json(text).dump() << " (case " << i << ")";
    }
  }
}

TEST(RegexSplit, ABadPatternIsRefusedNamingIt) {
  try {
    RegexSplit split("(unclosed");
    FAIL() << "compiled";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("(unclosed"), std::string::npos) << e.what();
  }
}

TEST(AddedTokens, LeftmostThenLongest) {
  AddedTokens tokens;
  tokens.add("<a>", 1);
  tokens.add("<a><b>", 2);
  tokens.add("b><", 3);
  std::vector<AddedTokens::Piece> out;
  tokens.split("x<a><b>y<a>b><", out);
  std::vector<std::pair<std::string, int32_t>> got;
  for (const auto& p : out) got.emplace_back(std::string(p.text), p.token);
  EXPECT_EQ(got, (std::vector<std::pair<std::string, int32_t>>{
                     {"x", -1}, {"<a><b>", 2}, {"y", -1}, {"<a>", 1}, {"b><", 3}}));
}

std::string write_tokenizer(const nlohmann::json& file) {
  const auto path = testing::TempDir() + "/byte_level_bpe_test_tokenizer.json";
  std::ofstream(path) << file.dump();
  return path;
}

nlohmann::json minimal_tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 33; b < 127; ++b) vocab[std::string(1, char(b))] = b - 33;  // printable ASCII only
  return {{"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"added_tokens", nlohmann::json::array()},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array({"a b"})}}}};
}

TEST(ByteLevelBpe, SaysWhatItDoesNotReproduce) {
  std::string why;
  ASSERT_EQ(ByteLevelBpe::load(write_tokenizer(minimal_tokenizer()), why), nullptr);  // "ab" is no token
  EXPECT_NE(why.find("a b"), std::string::npos) << why;
  struct Change {
    const char* key;
    nlohmann::json value;
    std::string reason;
  };
  for (const auto& change : std::vector<Change>{
           {"normalizer", nlohmann::json::object({{"type", "Lowercase"}}), "Lowercase"},
           {"pre_tokenizer", nlohmann::json::object({{"type", "Metaspace"}}), "Metaspace"},
           {"pre_tokenizer", nlohmann::json::object({{"type", "ByteLevel"}, {"add_prefix_space", true}}),
            "add_prefix_space"},
           {"truncation", nlohmann::json::object({{"max_length", 8}}), "truncation"}}) {
    auto file = minimal_tokenizer();
    file["model"]["merges"] = nlohmann::json::array();
    file[change.key] = change.value;
    const auto& reason = change.reason;
    EXPECT_EQ(ByteLevelBpe::load(write_tokenizer(file), why), nullptr) << reason;
    EXPECT_NE(why.find(reason), std::string::npos) << why;
  }
}

TEST(ByteLevelBpe, DropsBytesWithoutATokenAsTheLibraryDoes) {
  auto file = minimal_tokenizer();
  file["model"]["vocab"]["ab"] = 200;
  std::string why;
  const auto model = ByteLevelBpe::load(write_tokenizer(file), why);
  ASSERT_NE(model, nullptr) << why;
  // " ab" -> "Ġab": no token for the space (Ġ), so the library drops it; "a b" merges.
  EXPECT_EQ(model->encoder()->encode_batch({"xab ab"}), (std::vector<std::vector<int>>{{'x' - 33, 200, 200}}));
}

}  // namespace
}  // namespace moe::trainer
