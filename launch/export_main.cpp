// moe-export: a checkpoint (any layout) -> a Hugging Face directory or MiniMind2's .pth.
//   build/bin/moe-export --checkpoint runs/tiny --out_dir runs/tiny-hf [--format hf|minimind] [--dtype bf16]
#include <iostream>

#include "common/check.h"
#include "interop/export.h"
#include "launch/cli.h"

namespace po = boost::program_options;
using namespace moe;

int main(int argc, char** argv) try {
  interop::ExportOptions o;
  double shard_gb = double(o.max_shard_bytes) / double(1 << 30);
  bool no_tokenizer = false;
  po::options_description desc(
      "moe-export: write a checkpoint as a model transformers or MiniMind's scripts load\n"
      "  hf: config.json, model*.safetensors, tokenizer.json: AutoModelForCausalLM.from_pretrained(OUT_DIR)\n"
      "  minimind: pretrain_<hidden>[_moe].pth (MiniMind2's state dict), config.json, tokenizer files");
  desc.add_options()("help", "show this help")
      ("checkpoint", po::value(&o.checkpoint)->required(), "run directory, or checkpoints/step_N")
      ("out_dir", po::value(&o.out_dir)->required(), "directory to write (an earlier export there is replaced)")
      ("format", po::value(&o.format)->default_value(o.format), "hf | minimind")
      ("dtype", po::value(&o.dtype)->default_value(o.dtype), "fp32 | bf16 | fp16 (MiniMind saves fp16)")
      ("max_shard_gb", po::value(&shard_gb)->default_value(shard_gb), "hf: safetensors shard size limit (GiB)")
      ("no_tokenizer", po::bool_switch(&no_tokenizer), "do not export the tokenizer (it needs the Python tools)");
  launch::parse_or_exit(argc, argv, desc);
  MOE_CHECK(shard_gb > 0 && shard_gb < 1e6, "--max_shard_gb must be positive, got ", shard_gb);
  o.max_shard_bytes = uint64_t(shard_gb * double(1 << 30));
  o.tokenizer = !no_tokenizer;
  const auto s = interop::export_checkpoint(o);
  std::cerr << "[export] " << s.step_dir << " -> " << o.out_dir << " (" << s.model_class << ", " << s.parameters
            << " parameters, " << o.dtype << ", " << s.tensor_bytes / 1e6 << " MB):";
  for (const auto& f : s.files) std::cerr << " " << f;
  std::cerr << "\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
