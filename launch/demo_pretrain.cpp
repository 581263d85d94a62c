// moe-demo: a short single-process pretraining run of a tiny MiniMind MoE on real text, bytes as
// tokens (until the data pipeline exists), printing a falling loss and then a generated sample.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/check.h"
#include "common/log.h"
#include "launch/cli.h"
#include "model/causal_lm.h"
#include "model/generate.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using namespace moe;

namespace {

struct DemoOptions {
  std::string corpus = "/usr/share/games/fortunes";  // Debian's `fortunes` package
  int64_t steps = 600, batch = 16, seq_len = 128, log_every = 50;
  double lr = 3e-3, min_lr = 3e-4;
  int64_t warmup = 30;
  uint64_t seed = 1234;
  std::string prompt = "The ";
  int64_t sample_tokens = 240;
};

DemoOptions parse(int argc, char** argv) {
  DemoOptions o;
  po::options_description desc("moe-demo: train a tiny MoE on a byte-level text corpus");
  desc.add_options()("help", "show this help")
      ("corpus", po::value(&o.corpus)->default_value(o.corpus), "text file or directory of text files")
      ("steps", po::value(&o.steps)->default_value(o.steps), "optimiser steps")
      ("batch", po::value(&o.batch)->default_value(o.batch), "sequences per step")
      ("seq-len", po::value(&o.seq_len)->default_value(o.seq_len), "tokens per sequence")
      ("lr", po::value(&o.lr)->default_value(o.lr), "peak learning rate")
      ("seed", po::value(&o.seed)->default_value(o.seed), "random seed")
      ("prompt", po::value(&o.prompt)->default_value(o.prompt), "prompt of the generated sample")
      ("sample-tokens", po::value(&o.sample_tokens)->default_value(o.sample_tokens), "length of the sample");
  launch::parse_or_exit(argc, argv, desc);
  MOE_CHECK(o.steps > 0 && o.batch > 0 && o.seq_len > 1, "--steps, --batch must be > 0 and --seq-len > 1");
  return o;
}

// Bytes of the corpus: one file, or every plain file of a directory (skipping fortune's .dat/.u8 indexes).
std::string read_corpus(const std::string& path) {
  MOE_CHECK(fs::exists(path), "corpus '", path, "' not found (launch/setup.sh installs Debian's fortunes)");
  std::vector<fs::path> files;
  if (fs::is_directory(path)) {
    for (const auto& e : fs::directory_iterator(path)) {
      if (e.is_regular_file() && e.path().extension().empty()) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  std::string text;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    text.append(std::istreambuf_iterator<char>(in), {});
  }
  MOE_CHECK(text.size() > 10000, "corpus '", path, "' has only ", text.size(), " bytes");
  return text;
}

model::ModelConfig tiny_moe() {
  model::ModelConfig c;
  c.vocab_size = 256;  // bytes
  c.hidden_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 512;
  c.use_moe = true;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  return c;
}

// Random windows of seq_len + 1 bytes: inputs and next-byte targets.
std::pair<torch::Tensor, torch::Tensor> sample_batch(const torch::Tensor& data, int64_t batch, int64_t seq_len) {
  const auto starts = torch::randint(data.size(0) - seq_len - 1, {batch}, torch::kInt64);
  const auto windows = data.index({starts.unsqueeze(1) + torch::arange(seq_len + 1).unsqueeze(0)});
  return {windows.narrow(1, 0, seq_len), windows.narrow(1, 1, seq_len)};
}

double lr_at(const DemoOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * (step + 1) / o.warmup;
  const double progress = double(step - o.warmup) / std::max<int64_t>(1, o.steps - o.warmup);
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + std::cos(M_PI * progress));
}

}  // namespace

int main(int argc, char** argv) try {
  const auto opt = parse(argc, argv);
  torch::manual_seed(opt.seed);
  const auto text = read_corpus(opt.corpus);
  auto bytes = torch::from_blob(const_cast<char*>(text.data()), {int64_t(text.size())}, torch::kUInt8).to(torch::kInt64);
  const auto n_val = bytes.size(0) / 20;
  const auto train_data = bytes.narrow(0, 0, bytes.size(0) - n_val), val_data = bytes.narrow(0, bytes.size(0) - n_val, n_val);
  log("data", "corpus " + opt.corpus + ": " + std::to_string(text.size()) + " bytes (5% held out)");

  model::CausalLM lm(tiny_moe());
  int64_t n_params = 0;
  for (const auto& p : lm->parameters()) n_params += p.numel();
  log("model", "tiny MoE: " + std::to_string(n_params) + " parameters, 2 layers, 4 experts top-2 + 1 shared");

  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : lm->named_parameters()) (p.value().dim() < 2 ? no_decay : decay).push_back(p.value());
  torch::optim::AdamW optim({torch::optim::OptimizerParamGroup(decay), torch::optim::OptimizerParamGroup(no_decay)},
                            torch::optim::AdamWOptions(opt.lr).betas({0.9, 0.95}).weight_decay(0.1));
  static_cast<torch::optim::AdamWOptions&>(optim.param_groups()[1].options()).weight_decay(0.0);

  const auto t0 = std::chrono::steady_clock::now();
  double first_loss = 0, last_loss = 0;
  for (int64_t step = 0; step < opt.steps; ++step) {
    for (auto& g : optim.param_groups()) g.options().set_lr(lr_at(opt, step));
    auto [x, y] = sample_batch(train_data, opt.batch, opt.seq_len);
    auto out = lm(x, y);
    optim.zero_grad();
    out.loss.backward();
    torch::nn::utils::clip_grad_norm_(lm->parameters(), 1.0);
    optim.step();
    const double ce = out.ce_loss.item<double>();
    if (step == 0) first_loss = ce;
    last_loss = ce;
    if (step % opt.log_every == 0 || step == opt.steps - 1) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::ostringstream os;
      os << "step " << step << "/" << opt.steps << "  loss " << out.loss.item<double>() << "  ce " << ce << "  aux "
         << out.aux_loss.item<double>() << "  lr " << lr_at(opt, step) << "  tok/s "
         << int64_t((step + 1) * opt.batch * opt.seq_len / secs);
      log_rank0("train", os.str());
    }
  }

  lm->eval();
  double val_loss = 0;
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(opt.seed + 1);
    for (int i = 0; i < 8; ++i) {
      auto [x, y] = sample_batch(val_data, opt.batch, opt.seq_len);
      val_loss += lm(x, y).ce_loss.item<double>() / 8;
    }
  }
  std::ostringstream summary;
  summary << "train ce " << first_loss << " -> " << last_loss << "; held-out ce " << val_loss << " (uniform bytes: "
          << std::log(256.0) << ")";
  log_rank0("eval", summary.str());

  model::SamplingConfig sampling;
  sampling.max_new_tokens = opt.sample_tokens;
  sampling.temperature = 0.8;
  sampling.top_k = 40;
  sampling.repetition_penalty = 1.1;
  sampling.seed = opt.seed;
  std::vector<int64_t> prompt;
  for (unsigned char ch : opt.prompt) prompt.push_back(ch);
  std::cout << "\n--- sample ---\n" << opt.prompt << std::flush;
  model::generate(lm, {prompt}, sampling, [](int64_t, int64_t token) { std::cout << char(token) << std::flush; });
  std::cout << "\n--- end of sample ---\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
