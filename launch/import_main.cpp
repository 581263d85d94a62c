// moe-import: a Hugging Face directory or a MiniMind2 .pth -> a checkpoint of ours (model only).
//   build/bin/moe-import --from path/to/hf-or.pth --out_dir runs/imported
//   then: moe-train --checkpoint.init_from runs/imported ...   or   moe-generate --checkpoint runs/imported
#include <iostream>

#include "common/check.h"
#include "interop/import.h"
#include "launch/cli.h"

namespace po = boost::program_options;
using namespace moe;

int main(int argc, char** argv) try {
  interop::ImportOptions o;
  po::options_description desc(
      "moe-import: make a checkpoint (step 0, model only) of a model from transformers or MiniMind\n"
      "  --from a directory: config.json (llama, qwen2_moe, granitemoeshared) + safetensors [+ tokenizer.json]\n"
      "  --from a .pth: MiniMind2's state dict (read without executing code) [+ config.json, tokenizer beside it]");
  desc.add_options()("help", "show this help")
      ("from", po::value(&o.source)->required(), "Hugging Face directory or MiniMind2 .pth")
      ("out_dir", po::value(&o.out_dir)->required(), "run directory to create (checkpoints/step_00000000)")
      ("config", po::value(&o.config), ".pth: MiniMind config.json or our .ini for heads, routing, constants")
      ("tokenizer", po::value(&o.tokenizer), "tokenizer.model or tokenizer.json to use instead of the source's");
  launch::parse_or_exit(argc, argv, desc);
  const auto s = interop::import_model(o);
  std::cerr << "[import] " << o.source << " (" << s.kind << ", " << s.parameters << " parameters) -> " << s.step_dir
            << "\n[import] model: hidden_size " << s.config.hidden_size << ", layers " << s.config.num_hidden_layers
            << ", heads " << s.config.num_attention_heads << "/" << s.config.num_key_value_heads << ", vocab "
            << s.config.vocab_size;
  if (s.config.use_moe) {
    std::cerr << ", experts " << s.config.n_routed_experts << " routed (top " << s.config.num_experts_per_tok << ") + "
              << s.config.n_shared_experts << " shared";
  }
  std::cerr << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
