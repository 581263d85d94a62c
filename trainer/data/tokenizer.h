// The tokenizer of a run, of one of two kinds, chosen by the file moe-prepare was given or trained:
//   tokenizer.model  a SentencePiece BPE model (trained by moe-prepare: ids follow MiniMind's layout,
//                    0 = <unk>, 1 = BOS <s>, 2 = EOS </s>; text is kept as is: identity
//                    normalisation, whitespace preserved, newline a token of its own, unknown
//                    characters as bytes, so decoding gives back the original text)
//   tokenizer.json   a Hugging Face tokenizer (MiniMind's own 6400-piece byte-level BPE, ...), run
//                    by the `tokenizers` package in a Python co-process (trainer/data/hf_tokenizer.h);
//                    its BOS/EOS come from a tokenizer_config.json beside it
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

/// Encodes batches of documents on one worker thread of moe-prepare (Tokenizer::batch_encoder).
class BatchEncoder {
 public:
  virtual ~BatchEncoder() = default;
  virtual std::vector<std::vector<int>> encode_batch(const std::vector<std::string>& documents) = 0;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// The tokenizer of a file: a .json is a Hugging Face tokenizer, anything else a SentencePiece
  /// model. Refuses a missing or invalid file, naming it.
  static std::unique_ptr<Tokenizer> open(const std::string& path);

  virtual std::vector<int> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t bos_id() const = 0;
  /// An encoder for one more worker thread, with the same ids as encode().
  virtual std::unique_ptr<BatchEncoder> batch_encoder() const = 0;
  /// How batch encoders run, for the log ("SentencePiece, shared by the worker threads", ...).
  virtual std::string batch_path() const = 0;
};

/// The files that make up the tokenizer in a directory (moe-prepare's output, a checkpoint):
/// {tokenizer.model}, or {tokenizer.json[, tokenizer_config.json]}; empty if it has none. The
/// first is the one Tokenizer::open takes.
std::vector<std::string> tokenizer_files(const std::string& dir);

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  /// Trains a BPE model of at most vocab_size pieces on the lines that next_line yields (it
  /// returns false at the end) and writes it to model_path. Deterministic for the same input.
  static void train(const std::function<bool(std::string&)>& next_line, int64_t vocab_size,
                    const std::string& model_path, int threads);

  std::vector<int> encode(const std::string& text) const override;
  std::string decode(const std::vector<int>& ids) const override;
  int64_t vocab_size() const override;
  int64_t eos_id() const override;
  int64_t bos_id() const override;
  std::unique_ptr<BatchEncoder> batch_encoder() const override;
  std::string batch_path() const override;

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
};

}  // namespace moe::trainer
