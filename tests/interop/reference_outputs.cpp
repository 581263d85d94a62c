// Our model's outputs for the interoperability checks (tests/interop/check_interop.py): loads a
// checkpoint, runs random token batches and greedy generation, and writes inputs and outputs to a
// safetensors file the Python side compares transformers' results with.
//   reference_outputs CHECKPOINT OUT.safetensors [SEED]
//     tokens  [4, 24]  int64  random ids in [0, vocab)
//     logits  [4, 24, vocab]  float32, our forward pass (eval mode)
//     prompt  [1, 8]   int64, greedy  [1, 16] int64: argmax continuation with the KV cache
#include <torch/torch.h>

#include <iostream>

#include "common/safetensors.h"
#include "model/generate.h"
#include "trainer/checkpoint/checkpoint.h"

using namespace moe;

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::cerr << "usage: reference_outputs CHECKPOINT OUT.safetensors [SEED]\n";
    return 2;
  }
  torch::manual_seed(argc > 3 ? std::stoll(argv[3]) : 0);
  auto loaded = trainer::load_model_for_inference(argv[1]);
  const int64_t vocab = loaded.config.model.vocab_size;
  const auto tokens = torch::randint(vocab, {4, 24}, torch::kInt64);
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    logits = loaded.lm->forward(tokens).logits.to(torch::kFloat32).contiguous();
  }
  const auto prompt = torch::randint(vocab, {1, 8}, torch::kInt64);
  model::SamplingConfig greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 16;
  const std::vector<int64_t> prompt_ids(prompt.data_ptr<int64_t>(), prompt.data_ptr<int64_t>() + prompt.numel());
  const auto generated = model::generate(loaded.lm, {prompt_ids}, greedy).front();
  const auto continuation = torch::tensor(generated, torch::kInt64).reshape({1, -1}).contiguous();
  write_safetensors(argv[2], {{"tokens", "I64", tokens.sizes().vec(), tokens.data_ptr()},
                              {"logits", "F32", logits.sizes().vec(), logits.data_ptr()},
                              {"prompt", "I64", prompt.sizes().vec(), prompt.data_ptr()},
                              {"greedy", "I64", continuation.sizes().vec(), continuation.data_ptr()}});
  std::cerr << "reference_outputs: " << argv[2] << " (" << generated.size() << " greedy tokens)\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
