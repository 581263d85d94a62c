// A Hugging Face tokenizer.json, run by the `tokenizers` package in a Python co-process
// (tools/hf_tokenizer.py serve): no C++ implementation of it is packaged, and one library for both
// sides makes our ids those of transformers by construction. Requests are JSON lines.
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

 private:
  std::unique_ptr<PythonCoprocess> helper_;
  int64_t vocab_size_ = 0, eos_id_ = -1, bos_id_ = -1;
};

}  // namespace moe::trainer
