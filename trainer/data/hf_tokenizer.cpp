#include "trainer/data/hf_tokenizer.h"

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/check.h"
#if MOE_NATIVE_BPE
#include "trainer/data/byte_level_bpe.h"
#endif

namespace moe::trainer {

HfTokenizer::HfTokenizer(const std::string& tokenizer_json)
    : path_(tokenizer_json),
      helper_(std::make_unique<PythonCoprocess>("hf_tokenizer.py", std::vector<std::string>{"serve", tokenizer_json})) {
  const auto hello = nlohmann::json::parse(helper_->read_line());
  vocab_size_ = hello.at("vocab_size").get<int64_t>();
  eos_id_ = hello.at("eos_id").get<int64_t>();
  bos_id_ = hello.at("bos_id").get<int64_t>();
}

std::vector<int> HfTokenizer::encode(const std::string& text) const {
  // Invalid UTF-8 is replaced (JSON carries text), as the corpus reader has refused it already.
  const auto request = nlohmann::json{{"encode", text}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return nlohmann::json::parse(helper_->request(request)).get<std::vector<int>>();
}

std::string HfTokenizer::decode(const std::vector<int>& ids) const {
  return nlohmann::json::parse(helper_->request(nlohmann::json{{"decode", ids}}.dump())).get<std::string>();
}

const ByteLevelBpe* HfTokenizer::native() const {
  std::call_once(native_once_, [&] {
    const char* choice = std::getenv("MOE_HF_ENCODER");  // "library": the escape hatch, and the benchmark's
    if (choice != nullptr && std::string(choice) == "library") {
      native_unsupported_ = "anything: MOE_HF_ENCODER=library asks for the library";
      return;
    }
    MOE_CHECK(choice == nullptr || std::string(choice).empty() || std::string(choice) == "native",
              "MOE_HF_ENCODER='", choice, "': expected native or library");
#if MOE_NATIVE_BPE
    native_ = ByteLevelBpe::load(path_, native_unsupported_);
#else
    native_unsupported_ = "this build has no native encoder (Oniguruma or ICU was missing)";
#endif
  });
  return native_.get();
}

std::unique_ptr<BatchEncoder> HfTokenizer::batch_encoder() const {
#if MOE_NATIVE_BPE
  if (native() != nullptr) return native_->encoder();
#endif
  return std::make_unique<HfBatchEncoder>(path_);
}

std::string HfTokenizer::batch_path() const {
  if (native() != nullptr)
    return "the native byte-level BPE (C++; the `tokenizers` library's ids, its regex engine), one per worker";
  return "Hugging Face `tokenizers` (encode_batch), one helper process per worker, batches in a binary framing "
         "(the native byte-level BPE does not reproduce " + native_unsupported_ + ")";
}

HfBatchEncoder::HfBatchEncoder(const std::string& tokenizer_json)
    : helper_("hf_tokenizer.py", std::vector<std::string>{"encode-batches", tokenizer_json}) {
  helper_.read_line();  // the greeting: the file loaded
}

std::vector<std::vector<int>> HfBatchEncoder::encode_batch(const std::vector<std::string>& documents) {
  std::vector<uint32_t> header{uint32_t(documents.size())};
  for (const auto& d : documents) {
    MOE_CHECK(d.size() <= std::numeric_limits<uint32_t>::max(), "a document of ", d.size(),
              " bytes: the tokenizer helper takes documents below 4 GiB");
    header.push_back(uint32_t(d.size()));
  }
  helper_.write_all(header.data(), header.size() * sizeof(uint32_t));
  for (const auto& d : documents) helper_.write_all(d.data(), d.size());

  uint32_t n = 0;
  helper_.read_exact(&n, sizeof n);
  MOE_CHECK(n == documents.size(), "the tokenizer helper answered ", n, " documents for ", documents.size());
  std::vector<uint32_t> counts(n);
  helper_.read_exact(counts.data(), counts.size() * sizeof(uint32_t));
  std::vector<std::vector<int>> ids(n);
  for (uint32_t i = 0; i < n; ++i) {
    ids[i].resize(counts[i]);
    helper_.read_exact(ids[i].data(), counts[i] * sizeof(int));  // uint32 ids below 2^31: a vocabulary
  }
  return ids;
}

}  // namespace moe::trainer
