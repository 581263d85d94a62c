// The tokenizer: a SentencePiece BPE model, trained by moe-prepare or given as a .model file.
// Ids follow MiniMind's layout: 0 = <unk>, 1 = BOS <s>, 2 = EOS </s>. Text is kept as is (identity
// normalisation, whitespace preserved, newline a token of its own, unknown characters as bytes), so
// decoding gives back the original text.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moe::trainer {

class Tokenizer {
 public:
  /// Loads a SentencePiece .model file; refuses a missing or invalid one naming the file.
  explicit Tokenizer(const std::string& model_path);
  ~Tokenizer();

  /// Trains a BPE model of at most vocab_size pieces on the lines that next_line yields (it
  /// returns false at the end) and writes it to model_path. Deterministic for the same input.
  static void train(const std::function<bool(std::string&)>& next_line, int64_t vocab_size,
                    const std::string& model_path, int threads);

  std::vector<int> encode(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;
  int64_t vocab_size() const;
  int64_t eos_id() const;
  int64_t bos_id() const;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
};

}  // namespace moe::trainer
