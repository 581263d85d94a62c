#include "trainer/data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <utility>
#include <fstream>
#include <unordered_map>

#include "common/check.h"
#include "trainer/data/hf_tokenizer.h"

namespace moe::trainer {

namespace {

class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::function<bool(std::string&)>& next) : next_(next) { advance(); }
  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  // util::Status in SentencePiece 0.1, absl::Status from 0.2.2: whichever the library declares.
  using Status = decltype(std::declval<const sentencepiece::SentenceIterator&>().status());
  Status status() const override { return {}; }

 private:
  void advance() { done_ = !next_(line_); }
  const std::function<bool(std::string&)>& next_;
  std::string line_;
  bool done_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::open(const std::string& path) {
  MOE_CHECK(std::filesystem::is_regular_file(path), "tokenizer '", path, "' is not a file");
  if (std::filesystem::path(path).extension() == ".json") return std::make_unique<HfTokenizer>(path);
  return std::make_unique<SentencePieceTokenizer>(path);
}

std::vector<std::string> tokenizer_files(const std::string& dir) {
  namespace fs = std::filesystem;
  const auto in = [&](const char* name) { return (fs::path(dir) / name).string(); };
  if (fs::exists(in("tokenizer.model"))) return {in("tokenizer.model")};
  if (!fs::exists(in("tokenizer.json"))) return {};
  if (fs::exists(in("tokenizer_config.json"))) return {in("tokenizer.json"), in("tokenizer_config.json")};
  return {in("tokenizer.json")};
}

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()), path_(model_path) {
  const auto status = sp_->Load(model_path);
  MOE_CHECK(status.ok(), "cannot load tokenizer '", model_path, "': ", status.ToString());
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

void SentencePieceTokenizer::train(const std::function<bool(std::string&)>& next_line, int64_t vocab_size,
                      const std::string& model_path, int threads) {
  MOE_CHECK(vocab_size >= 300, "--vocab_size ", vocab_size, " is too small: byte fallback alone needs 259 ids");
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"hard_vocab_limit", "false"},  // a small corpus gets a smaller vocabulary instead of an error
      {"character_coverage", "0.9995"},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"user_defined_symbols", "\n"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"shuffle_input_sentence", "false"},  // deterministic
      {"input_sentence_size", "4000000"},
      {"max_sentence_length", "16384"},
      {"num_threads", std::to_string(std::max(1, threads))},
      {"minloglevel", "2"},
  };
  LineIterator lines(next_line);
  std::string model;  // returned rather than written: the file then records no path, only the text decides it
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  MOE_CHECK(status.ok(), "training the tokenizer failed: ", status.ToString());
  std::ofstream out(model_path, std::ios::binary);
  out << model;
  out.close();
  MOE_CHECK(out.good(), "cannot write '", model_path, "'");
}

std::vector<int> SentencePieceTokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  MOE_CHECK(status.ok(), "tokenizer '", path_, "' cannot encode: ", status.ToString());
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int>& ids) const {
  std::string text;
#if __has_include(<absl/types/span.h>)  // SentencePiece 0.2.2 takes spans (vectors are deprecated)
  const auto status = sp_->Decode(absl::MakeConstSpan(ids), &text);
#else
  const auto status = sp_->Decode(ids, &text);
#endif
  MOE_CHECK(status.ok(), "tokenizer '", path_, "' cannot decode: ", status.ToString());
  return text;
}

namespace {

// SentencePiece's Encode is const and thread-safe: the workers share one model.
class SentencePieceBatchEncoder final : public BatchEncoder {
 public:
  explicit SentencePieceBatchEncoder(const SentencePieceTokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::vector<std::vector<int>> encode_batch(const std::vector<std::string>& documents) override {
    std::vector<std::vector<int>> ids;
    ids.reserve(documents.size());
    for (const auto& d : documents) ids.push_back(tokenizer_.encode(d));
    return ids;
  }

 private:
  const SentencePieceTokenizer& tokenizer_;
};

}  // namespace

std::unique_ptr<BatchEncoder> SentencePieceTokenizer::batch_encoder() const {
  return std::make_unique<SentencePieceBatchEncoder>(*this);
}

std::string SentencePieceTokenizer::batch_path() const {
  return "SentencePiece (libsentencepiece), one model shared by the worker threads";
}

int64_t SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }
int64_t SentencePieceTokenizer::eos_id() const { return sp_->eos_id(); }
int64_t SentencePieceTokenizer::bos_id() const { return sp_->bos_id(); }

}  // namespace moe::trainer
