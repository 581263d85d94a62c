#include "trainer/data/byte_level_bpe.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uniset.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/check.h"
#include "trainer/data/regex_split.h"
#include "trainer/data/utf8.h"
#include "trainer/data/word_cache.h"

namespace moe::trainer {

namespace {

using nlohmann::json;

// GPT-2's printable stand-ins for bytes: the code point of byte b's character in a byte-level
// vocabulary (printable Latin-1 bytes stand for themselves, the rest are shifted past 255).
std::array<uint32_t, 256> byte_characters() {
  std::array<uint32_t, 256> chars{};
  uint32_t shifted = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    chars[b] = printable ? b : shifted++;
  }
  return chars;
}

// The bytes a byte-level token stands for, or nothing if it has a character outside the alphabet
// (such a token, an added one for instance, never comes out of merging bytes).
std::optional<std::string> token_bytes(const std::string& token) {
  static const auto byte_of = [] {
    std::unordered_map<uint32_t, char> inverse;
    const auto chars = byte_characters();
    for (uint32_t b = 0; b < 256; ++b) inverse[chars[b]] = char(b);
    return inverse;
  }();
  std::string bytes;
  for (size_t i = 0; i < token.size();) {
    size_t length = 0;
    const uint32_t code = decode_utf8(token, i, length);
    if (i + length > token.size()) return std::nullopt;
    const auto it = byte_of.find(code);
    if (it == byte_of.end()) return std::nullopt;
    bytes += it->second;
    i += length;
  }
  return bytes;
}

bool is_null_or(const json& j, const char* key, const json& value) {
  return !j.contains(key) || j.at(key).is_null() || j.at(key) == value;
}

// NFC: "" if supported, else the reason.
std::string read_normalizer(const json& normalizer, ByteLevelBpe& model) {
  if (normalizer.is_null()) return "";
  const auto type = normalizer.value("type", "");
  if (type == "NFC") {
    model.nfc = true;
    return "";
  }
  if (type == "Sequence") {
    for (const auto& n : normalizer.at("normalizers"))
      if (auto why = read_normalizer(n, model); !why.empty()) return why;
    return "";
  }
  return "the normalizer " + type;
}

std::string read_pre_tokenizer(const json& pre, ByteLevelBpe& model, bool& byte_level) {
  const auto type = pre.is_null() ? std::string("none") : pre.value("type", "");
  if (byte_level) return "a pre-tokenizer after ByteLevel";
  if (type == "Sequence") {
    for (const auto& p : pre.at("pretokenizers"))
      if (auto why = read_pre_tokenizer(p, model, byte_level); !why.empty()) return why;
    return "";
  }
  if (type == "Split") {
    if (!pre.at("pattern").contains("Regex")) return "a Split on a string pattern";
    if (pre.value("behavior", "") != "Isolated") return "a Split with behavior " + pre.value("behavior", "");
    if (pre.value("invert", false)) return "an inverted Split";
    model.split_patterns.push_back(pre.at("pattern").at("Regex").get<std::string>());
    return "";
  }
  if (type == "ByteLevel") {
    if (pre.value("add_prefix_space", false)) return "ByteLevel with add_prefix_space";
    if (pre.value("use_regex", true)) model.split_patterns.push_back(kGpt2SplitPattern);
    byte_level = true;
    return "";
  }
  return "the pre-tokenizer " + type;
}

std::string read_bpe(const json& bpe, ByteLevelBpe& model) {
  if (bpe.value("type", "") != "BPE") return "the model " + bpe.value("type", std::string("(untyped)"));
  if (!is_null_or(bpe, "dropout", 0.0)) return "BPE dropout";
  if (!is_null_or(bpe, "continuing_subword_prefix", "")) return "a continuing_subword_prefix";
  if (!is_null_or(bpe, "end_of_word_suffix", "")) return "an end_of_word_suffix";
  if (bpe.value("byte_fallback", false)) return "byte_fallback";
  model.ignore_merges = bpe.value("ignore_merges", false);

  for (const auto& [token, id] : bpe.at("vocab").items())
    if (auto bytes = token_bytes(token)) model.vocab.emplace(std::move(*bytes), id.get<int32_t>());
  for (int b = 0; b < 256; ++b) {
    const auto it = model.vocab.find(std::string(1, char(b)));
    model.byte_token[size_t(b)] = it == model.vocab.end() ? -1 : it->second;
    // Without an unknown token the library drops a byte it has no token for, as we do; with one it
    // would emit it.
    if (it == model.vocab.end() && !is_null_or(bpe, "unk_token", nullptr))
      return "an unk_token, and no token for byte " + std::to_string(b);
  }

  const auto& merges = bpe.at("merges");
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    std::string left, right;
    if (merges[rank].is_string()) {  // "left right"
      const auto line = merges[rank].get<std::string>();
      const auto space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        return "a merge line '" + line + "'";
      left = line.substr(0, space), right = line.substr(space + 1);
    } else {  // ["left", "right"]
      left = merges[rank].at(0).get<std::string>(), right = merges[rank].at(1).get<std::string>();
    }
    const auto l = token_bytes(left), r = token_bytes(right);
    if (!l || !r) continue;  // outside the byte alphabet: never applies to bytes
    const auto a = model.vocab.find(*l), b = model.vocab.find(*r), merged = model.vocab.find(*l + *r);
    if (a == model.vocab.end() || b == model.vocab.end() || merged == model.vocab.end())
      return "a merge '" + left + " " + right + "' of tokens outside the vocabulary";
    model.merges.add(a->second, b->second, int32_t(rank), merged->second);
  }
  return "";
}

// NFC as the tokenizers library computes it: its tables are Unicode 9.0's (measured: it composes
// and reorders marks of 9.0, none of 10.0 or later, such as U+11935 U+11930 or U+1DF6). ICU's NFC
// filtered to the characters assigned by 9.0 is exactly that: a later character is left as it is
// and blocks composition and reordering around it, as an unassigned one does.
const icu::Normalizer2& library_nfc() {
  static const icu::Normalizer2* nfc = [] {
    UErrorCode status = U_ZERO_ERROR;
    const auto* full = icu::Normalizer2::getNFCInstance(status);
    auto* unicode9 = new icu::UnicodeSet(icu::UnicodeString("[:age=9.0:]"), status);
    MOE_CHECK(U_SUCCESS(status), "ICU's NFC or its Unicode 9.0 set is unavailable: ", u_errorName(status));
    unicode9->freeze();
    return new icu::FilteredNormalizer2(*full, *unicode9);
  }();
  return *nfc;
}

// Whether text changes under NFC; if so, `out` receives its NFC (most text is normal: no copy).
bool nfc_changes(std::string_view text, std::string& out) {
  const auto& nfc = library_nfc();
  const icu::StringPiece piece(text.data(), int32_t(text.size()));
  UErrorCode status = U_ZERO_ERROR;
  if (nfc.isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return false;
  out.clear();
  icu::StringByteSink<std::string> sink(&out);
  status = U_ZERO_ERROR;
  nfc.normalizeUTF8(0, piece, sink, nullptr, status);
  MOE_CHECK(U_SUCCESS(status), "NFC normalization failed: ", u_errorName(status));
  return true;
}

std::string read_added_tokens(const json& added, ByteLevelBpe& model) {
  for (const auto& token : added) {
    for (const char* option : {"single_word", "lstrip", "rstrip"})
      if (token.value(option, false)) return std::string("an added token with ") + option;
    auto content = token.at("content").get<std::string>();
    const auto id = token.at("id").get<int32_t>();
    if (token.value("normalized", false)) {
      if (std::string normal; model.nfc && nfc_changes(content, normal)) content = normal;
      model.normalized_added.add(content, id);
    } else {
      model.raw_added.add(content, id);
    }
  }
  return "";
}

std::string read_model(const json& file, ByteLevelBpe& model) {
  for (const char* option : {"truncation", "padding"})
    if (file.contains(option) && !file.at(option).is_null()) return std::string("its ") + option + " settings";
  bool byte_level = false;
  std::string why = read_normalizer(file.value("normalizer", json()), model);
  if (why.empty()) why = read_pre_tokenizer(file.value("pre_tokenizer", json()), model, byte_level);
  if (why.empty() && !byte_level) why = "a pre-tokenizer without ByteLevel";
  if (why.empty()) why = read_bpe(file.at("model"), model);
  if (why.empty()) why = read_added_tokens(file.value("added_tokens", json::array()), model);
  return why;
}

class ByteLevelBpeEncoder final : public BatchEncoder {
 public:
  explicit ByteLevelBpeEncoder(std::shared_ptr<const ByteLevelBpe> model) : model_(std::move(model)) {
    for (const auto& pattern : model_->split_patterns) splits_.push_back(std::make_unique<RegexSplit>(pattern));
  }

  std::vector<std::vector<int>> encode_batch(const std::vector<std::string>& documents) override {
    std::vector<std::vector<int>> ids(documents.size());
    for (size_t i = 0; i < documents.size(); ++i) encode(documents[i], ids[i]);
    return ids;
  }

 private:
  void encode(std::string_view text, std::vector<int>& out) {
    raw_pieces_.clear();
    model_->raw_added.split(text, raw_pieces_);
    for (const auto& raw : raw_pieces_) {
      if (raw.token >= 0) {
        out.push_back(raw.token);
        continue;
      }
      std::string_view normal = raw.text;
      if (model_->nfc && nfc_changes(raw.text, normalized_)) normal = normalized_;
      pieces_.clear();
      model_->normalized_added.split(normal, pieces_);
      for (const auto& piece : pieces_) {
        if (piece.token >= 0)
          out.push_back(piece.token);
        else
          encode_text(piece.text, out);
      }
    }
  }

  void encode_text(std::string_view text, std::vector<int>& out) {
    words_.assign(1, text);
    for (auto& split : splits_) {
      next_words_.clear();
      for (auto word : words_) split->split(word, next_words_);
      words_.swap(next_words_);
    }
    for (auto word : words_) encode_word(word, out);
  }

  void encode_word(std::string_view word, std::vector<int>& out) {
    if (cache_.find(word, out)) return;
    if (model_->ignore_merges) {
      key_.assign(word.data(), word.size());
      if (const auto it = model_->vocab.find(key_); it != model_->vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    symbols_.clear();
    for (unsigned char b : word)
      if (model_->byte_token[b] >= 0) symbols_.push_back(model_->byte_token[b]);
    merge_word(model_->merges, symbols_, scratch_);
    out.insert(out.end(), symbols_.begin(), symbols_.end());
    cache_.insert(word, symbols_);
  }

  std::shared_ptr<const ByteLevelBpe> model_;
  std::vector<std::unique_ptr<RegexSplit>> splits_;
  std::vector<AddedTokens::Piece> raw_pieces_, pieces_;
  std::vector<std::string_view> words_, next_words_;
  std::string normalized_, key_;
  std::vector<int32_t> symbols_;
  BpeScratch scratch_;
  WordCache cache_;
};

}  // namespace

std::shared_ptr<const ByteLevelBpe> ByteLevelBpe::load(const std::string& tokenizer_json, std::string& unsupported) {
  std::ifstream in(tokenizer_json);
  MOE_CHECK(in.good(), "cannot read tokenizer '", tokenizer_json, "'");
  json file;
  try {
    file = json::parse(in);
  } catch (const json::exception& e) {
    MOE_CHECK(false, "tokenizer '", tokenizer_json, "' is not valid JSON: ", e.what());
  }
  auto model = std::make_shared<ByteLevelBpe>();
  try {
    unsupported = read_model(file, *model);
  } catch (const json::exception& e) {
    unsupported = std::string("a field it cannot read (") + e.what() + ")";
  }
  if (!unsupported.empty()) return nullptr;
  for (const auto& pattern : model->split_patterns) {  // refused here, not in a worker
    try {
      RegexSplit compiles(pattern);
    } catch (const InvalidArgument& e) {
      unsupported = e.what();
      return nullptr;
    }
  }
  return model;
}

std::unique_ptr<BatchEncoder> ByteLevelBpe::encoder() const {
  return std::make_unique<ByteLevelBpeEncoder>(shared_from_this());
}

}  // namespace moe::trainer
