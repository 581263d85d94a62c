// A Hugging Face tokenizer.json, run by the `tokenizers` package in Python co-processes
// (tools/hf_tokenizer.py): no C++ implementation of it is packaged, and one library for both sides
// makes our ids those of transformers by construction, for every tokenizer.json (byte-level BPE of
// MiniMind, GPT-2, Llama-3, Qwen2, and the rest). Single documents (generation's prompts) go as JSON
// lines; moe-prepare's workers each drive their own helper with large batches in a binary framing
// (HfBatchEncoder), which takes the pipe round trip and JSON off every document.
#pragma once
#include <memory>

#include "common/python_tool.h"
#include "trainer/data/tokenizer.h"

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
  std::string path_;
  std::unique_ptr<PythonCoprocess> helper_;
  int64_t vocab_size_ = 0, eos_id_ = -1, bos_id_ = -1;
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
