// moe-bench-model: forward+backward throughput (tokens/s) and peak memory of the MiniMind MoE model,
// for the tiny config and MiniMind2-MoE sizes, on CPU and on CUDA when present. Prints a table and
// one JSON line per case.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#ifdef MOE_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "launch/cli.h"
#include "model/causal_lm.h"

namespace po = boost::program_options;
using moe::model::ModelConfig;

namespace {

struct Case {
  std::string name;
  ModelConfig config;
};

ModelConfig moe_config(int64_t hidden, int64_t layers, int64_t heads, int64_t kv_heads, int64_t vocab) {
  ModelConfig c;
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = 4096;
  c.use_moe = true;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  return c;
}

// Peak resident memory since the last reset (Linux: writing 5 to clear_refs resets VmHWM).
void reset_cpu_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }
double cpu_peak_mib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

void reset_peak(const torch::Device& d) {
#ifdef MOE_TORCH_CUDA
  if (d.is_cuda()) return c10::cuda::CUDACachingAllocator::resetPeakStats(d.index());
#endif
  reset_cpu_peak();
}
double peak_mib(const torch::Device& d) {
#ifdef MOE_TORCH_CUDA
  if (d.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(d.index());
    return stats.allocated_bytes[0].peak / (1024.0 * 1024.0);  // [0] = aggregate pool
  }
#endif
  return cpu_peak_mib();
}

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

int main(int argc, char** argv) try {
  std::string device_opt = "all";
  int64_t iters = 5, warmup = 2, batch = 0, seq = 0;
  po::options_description desc("moe-bench-model: forward+backward tokens/s and peak memory");
  desc.add_options()("help", "show this help")
      ("device", po::value(&device_opt)->default_value(device_opt), "cpu, cuda or all (cuda when present)")
      ("iters", po::value(&iters)->default_value(iters), "timed iterations")
      ("warmup", po::value(&warmup)->default_value(warmup), "untimed iterations first")
      ("batch", po::value(&batch)->default_value(0), "sequences per step (0: 8 on CPU, 32 on CUDA)")
      ("seq-len", po::value(&seq)->default_value(0), "tokens per sequence (0: 256 on CPU, 1024 on CUDA)");
  moe::launch::parse_or_exit(argc, argv, desc);

  std::vector<torch::Device> devices;
  if (device_opt == "cpu" || device_opt == "all") devices.emplace_back(torch::kCPU);
  if (device_opt == "cuda" || (device_opt == "all" && torch::cuda::is_available())) {
    if (!torch::cuda::is_available()) throw std::runtime_error("--device cuda: no CUDA device is available");
    devices.emplace_back(torch::kCUDA, 0);
  }
  ModelConfig tiny = moe_config(128, 2, 4, 2, 256);
  const std::vector<Case> cases = {{"tiny-moe", tiny}, {"minimind2-moe", moe_config(512, 8, 8, 2, 6400)}};

  std::printf("%-14s %-6s %5s %5s %10s %12s %12s %12s\n", "case", "device", "batch", "seq", "params(M)",
              "step(ms)", "tokens/s", "peak(MiB)");
  for (const auto& device : devices) {
    for (const auto& c : cases) {
      torch::manual_seed(0);
      moe::model::CausalLM lm(c.config);
      lm->to(device);
      lm->train();
      int64_t params = 0;
      for (const auto& p : lm->parameters()) params += p.numel();
      const int64_t b = batch > 0 ? batch : (device.is_cuda() ? 32 : 8);
      const int64_t t = seq > 0 ? seq : (device.is_cuda() ? 1024 : 256);
      const auto x = torch::randint(c.config.vocab_size, {b, t}, torch::TensorOptions(torch::kInt64).device(device));
      const auto y = torch::randint(c.config.vocab_size, {b, t}, torch::TensorOptions(torch::kInt64).device(device));
      auto step = [&] {
        lm->zero_grad();
        lm(x, y).loss.backward();
      };
      for (int64_t i = 0; i < warmup; ++i) step();
      sync(device);
      reset_peak(device);
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < iters; ++i) step();
      sync(device);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double ms = 1000 * secs / iters, tps = b * t * iters / secs, peak = peak_mib(device);
      const std::string dev = device.is_cuda() ? "cuda" : "cpu";
      std::printf("%-14s %-6s %5ld %5ld %10.2f %12.1f %12.0f %12.1f\n", c.name.c_str(), dev.c_str(), long(b), long(t),
                  params / 1e6, ms, tps, peak);
      std::printf("{\"case\":\"%s\",\"device\":\"%s\",\"batch\":%ld,\"seq_len\":%ld,\"params\":%ld,\"step_ms\":%.2f,"
                  "\"tokens_per_s\":%.1f,\"peak_mib\":%.1f,\"threads\":%d}\n",
                  c.name.c_str(), dev.c_str(), long(b), long(t), long(params), ms, tps, peak, torch::get_num_threads());
      std::fflush(stdout);
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
