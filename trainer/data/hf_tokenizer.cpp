#include "trainer/data/hf_tokenizer.h"

#include <nlohmann/json.hpp>

#include "common/check.h"

namespace moe::trainer {

HfTokenizer::HfTokenizer(const std::string& tokenizer_json)
    : helper_(std::make_unique<PythonCoprocess>("hf_tokenizer.py", std::vector<std::string>{"serve", tokenizer_json})) {
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

}  // namespace moe::trainer
