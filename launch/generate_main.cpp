// moe-generate: loads a checkpoint written by moe-train and streams the continuation of a prompt.
//   build/bin/moe-generate --checkpoint runs/tiny --prompt "The meaning of life" [--max_new_tokens 200]
#include <torch/torch.h>

#include <iostream>

#include "common/check.h"
#include "launch/cli.h"
#include "model/generate.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/data/tokenizer.h"

namespace po = boost::program_options;
using namespace moe;

int main(int argc, char** argv) try {
  std::string checkpoint, prompt, tokenizer_path, device = "cpu";
  model::SamplingConfig s;
  s.max_new_tokens = 200;
  s.temperature = 0.8;
  s.top_k = 40;
  s.top_p = 0.95;
  s.repetition_penalty = 1.1;
  po::options_description desc("moe-generate: continue a prompt with a trained model");
  desc.add_options()("help", "show this help")
      ("checkpoint", po::value(&checkpoint)->required(), "run directory, or checkpoints/step_N")
      ("prompt", po::value(&prompt)->required(), "text to continue")
      ("tokenizer", po::value(&tokenizer_path), "SentencePiece .model or HF tokenizer.json (default: the checkpoint's)")
      ("max_new_tokens", po::value(&s.max_new_tokens)->default_value(s.max_new_tokens), "tokens to generate")
      ("temperature", po::value(&s.temperature)->default_value(s.temperature), "0 = greedy")
      ("top_k", po::value(&s.top_k)->default_value(s.top_k), "keep the k most likely tokens; 0 = all")
      ("top_p", po::value(&s.top_p)->default_value(s.top_p), "nucleus sampling mass; 1 = off")
      ("repetition_penalty", po::value(&s.repetition_penalty)->default_value(s.repetition_penalty), "1 = off")
      ("seed", po::value(&s.seed)->default_value(s.seed), "sampling seed")
      ("device", po::value(&device)->default_value(device), "cpu | cuda");
  launch::parse_or_exit(argc, argv, desc);
  MOE_CHECK(device == "cpu" || device == "cuda", "--device '", device, "' is not cpu or cuda");
  MOE_CHECK(device == "cpu" || torch::cuda::is_available(), "--device cuda: no CUDA device is visible");
  try {
    s.validate();  // before anything is loaded or printed
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("--") + e.what());
  }
  auto loaded = trainer::load_model_for_inference(checkpoint);
  loaded.lm->to(torch::Device(device));
  MOE_CHECK(!tokenizer_path.empty() || !loaded.tokenizer_path.empty(), "checkpoint '", loaded.step_dir,
            "' has no tokenizer: give --tokenizer");
  const auto tokenizer_ptr = trainer::Tokenizer::open(tokenizer_path.empty() ? loaded.tokenizer_path : tokenizer_path);
  const auto& tokenizer = *tokenizer_ptr;
  const auto ids = tokenizer.encode(prompt);
  // Training data separates documents by EOS, so EOS first makes the prompt a document's start.
  std::vector<int64_t> prompt_ids{tokenizer.eos_id()};
  prompt_ids.insert(prompt_ids.end(), ids.begin(), ids.end());
  s.eos_token_id = tokenizer.eos_id();
  std::cerr << "[generate] " << loaded.step_dir << ": " << prompt_ids.size() << " prompt tokens\n";
  std::cout << prompt << std::flush;
  // Decode the whole continuation each time and print what is new, so multi-token characters
  // and word-boundary spaces come out right.
  std::vector<int> generated;
  std::string shown;
  const auto prefix = tokenizer.decode(ids);
  model::generate(loaded.lm, {prompt_ids}, s, [&](int64_t, int64_t token) {
    generated.push_back(int(token));
    auto all = ids;
    all.insert(all.end(), generated.begin(), generated.end());
    const auto decoded = tokenizer.decode(all);
    const auto text = decoded.substr(std::min(prefix.size(), decoded.size()));
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
      std::cout << text.substr(shown.size()) << std::flush;
      shown = text;
    }
  });
  std::cout << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
