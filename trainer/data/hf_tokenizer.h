// A Hugging Face tokenizer.json, run by the `tokenizers` package in Python co-processes
// (tools/hf_tokenizer.py): one library for both sides makes our ids those of transformers by
// construction, for every tokenizer.json. Single documents (generation's prompts) go as JSON lines.
// moe-prepare's workers encode with the native byte-level BPE (trainer/data/byte_level_bpe.h) where
// it covers the file (6.3x the library's speed on 2 cores, measured); otherwise each drives its own helper with
// large batches in a binary framing (HfBatchEncoder), which takes the pipe round trip and JSON off
// every document.
#pragma once
#include <memory>
#include <mutex>

#include "common/python_tool.h"
#include "trainer/data/tokenizer.h"

namespace moe::trainer {
class ByteLevelBpe;
}

namespace moe::trainer {

class HfTokenizer final : public Tokenizer {
 public:
  /// Starts the helper; refuses a file the `tokenizers` package cannot load, or one without EOS.
  explicit HfTokenizer(const std::string& tokenizer_json);

  std::vector<int> encode(const std::string& text) const override;
  std::string decode(const std::vector<int>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int64_t eos_id() const override { return eos_id_; }
  int64_t bos_id() const override { return bos_id_; }
  std::unique_ptr<BatchEncoder> batch_encoder() const override;
  std::string batch_path() const override;

 private:
  /// Loads the native byte-level BPE once, for the first batch encoder; nullptr (with the reason in
  /// native_unsupported_) where it does not cover the file.
  const ByteLevelBpe* native() const;

  std::string path_;
  std::unique_ptr<PythonCoprocess> helper_;
  int64_t vocab_size_ = 0, eos_id_ = -1, bos_id_ = -1;
  mutable std::once_flag native_once_;
  mutable std::shared_ptr<const ByteLevelBpe> native_;
  mutable std::string native_unsupported_;
};

/// One helper process (`hf_tokenizer.py encode-batches`) that encodes whole batches with the
/// library's encode_batch on one thread (the workers are the parallelism). A request is
/// uint32 n, n x uint32 byte lengths, the UTF-8 texts; the answer uint32 n, n x uint32 token counts,
/// the ids as uint32 (little endian).
class HfBatchEncoder final : public BatchEncoder {
 public:
  explicit HfBatchEncoder(const std::string& tokenizer_json);
  std::vector<std::vector<int>> encode_batch(const std::vector<std::string>& documents) override;

 private:
  PythonCoprocess helper_;
};

}  // namespace moe::trainer
