// moe-bench-model: training throughput of the MiniMind MoE with the trainer's own step (bf16
// autocast forward on GPUs, backward, global gradient norm, clipping, fused AdamW), on random
// tokens, for the configs the PyTorch baseline (shared/peers/torch_grouped_moe.py) runs:
//   a: hidden 512, 8 layers, 4 experts top-2 + 1 shared, batch 32 x 512
//   b: hidden 768, 16 layers, 8 experts top-2 + 1 shared, batch 16 x 1024
//   c: hidden 1024, 16 layers, 16 experts top-2 + 1 shared, batch 8 x 1024
//   tiny: hidden 128, 2 layers, 4 experts (the CPU default), batch 8 x 256
// Per config: median/min/max step time, tokens/s, MFU (trainer/mfu.h), peak memory; with
// --breakdown, a second run times the regions of the step with CUDA events. --proxies instead
// counts one step's GPU-cost proxies (bench/step_proxies.h: launches, host syncs, bytes) by region,
// on any machine; on the CPU the step follows the GPU's path (bf16 autocast, grouped experts).
// --layer times one Mixtral-shaped MoE layer (hidden 4096, FFN 14336, 8 experts top-2, bf16)
// forward and backward. Prints a table and one JSON line per result.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#ifdef MOE_TORCH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <torch/csrc/autograd/profiler_kineto.h>

#include "common/check.h"
#include "common/step_regions.h"
#include "bench/bench_stats.h"
#include "bench/kernel_bench.h"
#include "bench/step_proxies.h"
#include "launch/cli.h"
#include "model/causal_lm.h"
#include "model/feed_forward.h"
#include "model/fused_kernels.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "parallel/topology.h"
#include "trainer/device.h"
#include "trainer/graphed_step.h"
#include "trainer/mfu.h"
#include "trainer/optim/optimizer.h"
#include "trainer/peak_memory.h"

namespace po = boost::program_options;
using moe::model::ModelConfig;
using Clock = std::chrono::steady_clock;

namespace {

struct Case {
  std::string name;
  ModelConfig config;
  int64_t batch, seq;
};

Case make_case(const std::string& name) {
  ModelConfig c;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.vocab_size = 6400;
  c.use_moe = true;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  c.aux_loss_alpha = 0.01;
  auto set = [&](int64_t hidden, int64_t layers, int64_t experts) {
    c.hidden_size = hidden;
    c.num_hidden_layers = layers;
    c.n_routed_experts = experts;
  };
  if (name == "a") return set(512, 8, 4), Case{name, c, 32, 512};
  if (name == "b") return set(768, 16, 8), Case{name, c, 16, 1024};
  if (name == "c") return set(1024, 16, 16), Case{name, c, 8, 1024};
  if (name == "tiny") {
    set(128, 2, 4);
    c.num_attention_heads = 4;
    c.vocab_size = 256;
    return Case{name, c, 8, 256};
  }
  throw std::invalid_argument("unknown config '" + name + "' (a, b, c or tiny)");
}

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

#ifdef MOE_TORCH_CUDA
// Times regions with CUDA events on the current stream; read after a synchronisation.
class CudaRegionTimer : public moe::RegionRecorder {
 public:
  void begin(const char* name) override {
    open_.insert_or_assign(name, at::cuda::CUDAEvent(cudaEventDefault));  // timing events
    open_.at(name).record();
  }
  void end(const char* name) override {
    auto& start = open_.at(name);
    at::cuda::CUDAEvent stop(cudaEventDefault);
    stop.record();
    spans_[name].emplace_back(std::move(start), std::move(stop));
    open_.erase(name);
  }
  /// Milliseconds per region, summed over every span so far.
  std::map<std::string, double> totals() {
    std::map<std::string, double> ms;
    for (auto& [name, spans] : spans_) {
      for (auto& [a, b] : spans) ms[name] += a.elapsed_time(b);
    }
    return ms;
  }

 private:
  std::map<std::string, at::cuda::CUDAEvent> open_;
  std::map<std::string, std::vector<std::pair<at::cuda::CUDAEvent, at::cuda::CUDAEvent>>> spans_;
};
#endif

struct Options {
  int64_t steps = 20, warmup = 10, batch = 0, seq = 0, top_ops = 8;
  bool breakdown = false, unfused_adamw = false, unfused_kernels = false, cuda_graph = false, proxies = false,
       kernels = false;
  std::string expert_compute = "auto", recompute = "none", profile_dir;
};

using moe::bench::median;

// One step after a warm-up step (AdamW's state exists then), counted by region.
template <typename Step>
void count_proxies(const Case& k, const torch::Device& device, int64_t b, int64_t t, Step& step, bool& read_loss,
                   const std::string& recompute, int64_t top_ops) {
  step();
  sync(device);
  read_loss = false;
  moe::bench::StepProxies p;
  {
    moe::bench::ProxyRecorder recorder(device);
    moe::set_region_recorder(&recorder);
    step();
    sync(device);
    moe::set_region_recorder(nullptr);
    p = recorder.result();
  }
  std::printf("proxies of one training step, config %s (%ldx%ld, %s, experts %s, recompute %s):\n%s", k.name.c_str(),
              long(b), long(t), device.is_cuda() ? "cuda" : "cpu as a GPU: bf16 autocast", k.config.expert_compute.c_str(),
              recompute.c_str(), moe::bench::format_proxies(p, static_cast<int>(top_ops)).c_str());
  std::printf("{\"bench\":\"step_proxies\",\"config\":\"%s\",\"device\":\"%s\",\"expert_compute\":\"%s\",\"recompute\":\"%s\","
              "\"batch\":%ld,\"seq\":%ld,%s}\n",
              k.name.c_str(), device.is_cuda() ? "cuda" : "cpu", k.config.expert_compute.c_str(), recompute.c_str(),
              long(b), long(t), moe::bench::proxies_json_fields(p).c_str());
  std::fflush(stdout);
}

void run_case(const Case& k, const torch::Device& device, const Options& o) {
  const auto& c = k.config;
  const int64_t b = o.batch > 0 ? o.batch : k.batch, t = o.seq > 0 ? o.seq : k.seq;
  torch::manual_seed(0);
  moe::model::CausalLM lm(c);
  moe::model::set_recompute(*lm, moe::model::parse_recompute(o.recompute));
  lm->to(device);
  lm->train();
  auto groups = moe::parallel::make_groups(moe::parallel::make_single_communicator(), 1, c.n_routed_experts);
  moe::trainer::OptimOptions optim;
  optim.lr = 1e-4;
  optim.grad_clip = 1.0;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (o.unfused_adamw) {
    optimizer = std::make_unique<torch::optim::AdamW>(lm->parameters(), torch::optim::AdamWOptions(optim.lr));
  } else {
    optimizer = moe::trainer::make_adamw(lm, optim);
  }
  const auto ids = torch::randint(c.vocab_size, {b, t + 1}, torch::TensorOptions(torch::kInt64).device(device));
  const auto x = ids.narrow(1, 0, t), y = ids.narrow(1, 1, t);
  // Proxies on the CPU follow a GPU step: bf16 autocast there too (main() picks grouped experts).
  const bool bf16 = device.is_cuda() || o.proxies;
  bool read_loss = true;  // the proxies' step leaves it on the device, as the trainer does between logs
  double loss = 0;
  std::unique_ptr<moe::trainer::GraphedStep> graphed;
  if (o.cuda_graph) graphed = std::make_unique<moe::trainer::GraphedStep>(lm, b, t, bf16);
  auto step = [&] {
    if (graphed) {  // forward and backward replayed as one graph; the update as in the trainer
      const auto& out = graphed->run(x, y);
      moe::trainer::apply_update(lm, groups, *optimizer, optim, optim.lr);
      if (read_loss) loss = out.loss.item<double>();
      return;
    }
    optimizer->zero_grad();
    moe::model::CausalLMOutput out;
    {
      moe::ScopedRegion fwd("forward");
      moe::trainer::AutocastScope autocast(bf16, device.type());
      out = lm(x, y);
    }
    {
      moe::ScopedRegion bwd("backward");
      out.loss.backward();
    }
    moe::ScopedRegion opt("optimizer");
    moe::trainer::apply_update(lm, groups, *optimizer, optim, optim.lr);
    opt.close();
    if (read_loss) loss = out.loss.item<double>();
  };
  if (o.proxies) return count_proxies(k, device, b, t, step, read_loss, o.recompute, o.top_ops);
  for (int64_t i = 0; i < o.warmup; ++i) step();
  sync(device);
  moe::trainer::reset_peak_memory(device);
  std::vector<double> times_ms;
  for (int64_t i = 0; i < o.steps; ++i) {
    sync(device);
    const auto t0 = Clock::now();
    step();
    sync(device);
    times_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  const double median_ms = median(times_ms);
  const double tok_s = double(b * t) / (median_ms / 1000.0);
  const double peak = moe::trainer::known_peak_flops(device);
  const double mfu = peak > 0 ? moe::trainer::training_flops_per_token(c, t) * tok_s / peak : -1;
  const auto [lo, hi] = std::minmax_element(times_ms.begin(), times_ms.end());
  const auto mem = moe::trainer::peak_memory(device);
  const std::string mode = o.expert_compute + (o.cuda_graph ? "+graph" : "") + (o.recompute == "none" ? "" : "+" + o.recompute) +
                           (o.unfused_kernels ? "+unfused" : "");
  std::printf("%-5s %-5s %-18s %6ldx%-5ld %8.1f %8.1f %9.1f %9.1f %11.0f %6.1f %7.2f %7.2f %8.3f\n", k.name.c_str(),
              device.is_cuda() ? "cuda" : "cpu", mode.c_str(), long(b), long(t),
              moe::trainer::total_parameters(c) / 1e6, moe::trainer::active_parameters(c) / 1e6, median_ms, *hi, tok_s,
              mfu >= 0 ? 100 * mfu : 0.0, mem.allocated_gib, mem.reserved_gib, loss);
  std::printf("{\"config\":\"%s\",\"device\":\"%s\",\"expert_compute\":\"%s\",\"recompute\":\"%s\",\"cuda_graph\":%s,\"adamw\":\"%s\",\"kernels\":\"%s\",\"batch\":%ld,"
              "\"seq\":%ld,\"params_total\":%ld,\"params_active\":%ld,\"step_ms\":%.3f,\"step_ms_min\":%.3f,"
              "\"step_ms_max\":%.3f,\"tokens_per_s\":%.1f,\"mfu\":%.4f,\"peak_allocated_gib\":%.3f,\"peak_reserved_gib\":%.3f,\"loss_last\":%.4f}\n",
              k.name.c_str(), device.is_cuda() ? "cuda" : "cpu", o.expert_compute.c_str(), o.recompute.c_str(),
              o.cuda_graph ? "true" : "false", o.unfused_adamw ? "torch::optim" : "fused",
              device.is_cuda() && moe::model::fused_kernels_enabled() ? "fused" : "aten", long(b), long(t), long(moe::trainer::total_parameters(c)),
              long(moe::trainer::active_parameters(c)), median_ms, *lo, *hi, tok_s, mfu, mem.allocated_gib,
              mem.reserved_gib, loss);
  std::fflush(stdout);
  if (!o.profile_dir.empty()) {
    // Three steps under the kineto profiler (CPU ops and CUDA kernels): a Chrome trace per config
    // that bench/trace_summary.py tabulates.
    namespace prof = torch::autograd::profiler;
    using torch::profiler::impl::ActivityType;
    const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
    const std::set<ActivityType> activities = {ActivityType::CPU, ActivityType::CUDA};
    prof::prepareProfiler(config, activities);
    prof::enableProfiler(config, activities);
    for (int i = 0; i < 3; ++i) step();
    sync(device);
    const auto trace = o.profile_dir + "/trace_" + k.name + ".json";
    prof::disableProfiler()->save(trace);
    MOE_CHECK(std::filesystem::exists(trace), "--profile: the profiler did not write ", trace);
  }
#ifdef MOE_TORCH_CUDA
  if (o.breakdown && device.is_cuda() && !graphed) {
    CudaRegionTimer timer;
    moe::set_region_recorder(&timer);
    for (int64_t i = 0; i < o.steps; ++i) step();
    sync(device);
    moe::set_region_recorder(nullptr);
    auto ms = timer.totals();
    for (auto& [_, v] : ms) v /= double(o.steps);
    double inside = 0;
    for (const auto& [name, v] : ms) {
      if (name != "forward" && name != "backward" && name != "optimizer") inside += v;
    }
    ms["forward_other"] = ms["forward"] - inside;  // embedding, final norm, casts between regions
    std::ostringstream json;
    json << "{\"config\":\"" << k.name << "\",\"breakdown_ms_per_step\":{";
    bool first = true;
    std::printf("  breakdown (ms per step, CUDA events; forward regions, then backward and optimizer whole):\n");
    for (const auto& [name, v] : ms) {
      std::printf("    %-18s %8.2f\n", name.c_str(), v);
      json << (first ? "" : ",") << "\"" << name << "\":" << v;
      first = false;
    }
    json << "}}";
    std::printf("%s\n", json.str().c_str());
    std::fflush(stdout);
  }
#endif
}

// One Mixtral-shaped MoE layer in bf16 (parameters too, as Megatron measures it): forward and
// backward TFLOP/s of the expert matrix products and the gate.
void run_layer(const torch::Device& device, int64_t tokens, const Options& o) {
  ModelConfig c;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.use_moe = true;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 0;
  c.aux_loss_alpha = 0.01;
  c.expert_compute = o.expert_compute;
  torch::manual_seed(0);
  moe::model::MoEFeedForward layer(c);
  moe::model::set_recompute(*layer, moe::model::parse_recompute(o.recompute));
  layer->to(device, torch::kBFloat16);
  layer->train();
  const auto x = torch::randn({1, tokens, c.hidden_size}, torch::TensorOptions(torch::kBFloat16).device(device))
                     .requires_grad_(true);
  const auto g = torch::randn_like(x);
  std::vector<double> fwd_ms, bwd_ms;
  for (int64_t i = 0; i < o.warmup + o.steps; ++i) {
    layer->zero_grad();
    sync(device);
    const auto t0 = Clock::now();
    auto out = layer(x);
    sync(device);
    const auto t1 = Clock::now();
    torch::autograd::backward({out.hidden, out.aux_loss}, {g, torch::ones_like(out.aux_loss)});
    sync(device);
    const auto t2 = Clock::now();
    if (i < o.warmup) continue;
    fwd_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    bwd_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
  }
  const double f = median(fwd_ms), bw = median(bwd_ms);
  const double h = double(c.hidden_size), ffn = double(c.intermediate_size);
  const double fwd_flops = 2.0 * tokens * (c.num_experts_per_tok * 3 * h * ffn + h * c.n_routed_experts);
  std::printf("mixtral-layer %s %s: %ld tokens, forward %.2f ms = %.0f TFLOP/s, backward %.2f ms = %.0f TFLOP/s, "
              "forward+backward %.0f TFLOP/s\n",
              device.is_cuda() ? "cuda" : "cpu", o.expert_compute.c_str(), long(tokens), f, fwd_flops / f / 1e9, bw,
              2 * fwd_flops / bw / 1e9, 3 * fwd_flops / (f + bw) / 1e9);
  std::printf("{\"bench\":\"mixtral_layer\",\"expert_compute\":\"%s\",\"tokens\":%ld,\"forward_ms\":%.3f,"
              "\"backward_ms\":%.3f,\"forward_tflops\":%.1f,\"backward_tflops\":%.1f,\"total_tflops\":%.1f}\n",
              o.expert_compute.c_str(), long(tokens), f, bw, fwd_flops / f / 1e9, 2 * fwd_flops / bw / 1e9,
              3 * fwd_flops / (f + bw) / 1e9);
  std::fflush(stdout);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) try {
  Options o;
  std::string device_opt = "auto", configs;
  int64_t layer_tokens = 0;
  po::options_description desc("moe-bench-model: training-step throughput of the MiniMind MoE (trainer's step)");
  desc.add_options()("help", "show this help")
      ("device", po::value(&device_opt)->default_value(device_opt), "auto, cpu or cuda")
      ("configs", po::value(&configs), "comma-separated of a, b, c, tiny (default: a,b,c on CUDA, tiny on CPU)")
      ("steps", po::value(&o.steps)->default_value(o.steps), "timed steps (median reported)")
      ("warmup", po::value(&o.warmup)->default_value(o.warmup), "untimed steps first")
      ("batch", po::value(&o.batch)->default_value(0), "sequences per step (0: the config's)")
      ("seq-len", po::value(&o.seq)->default_value(0), "tokens per sequence (0: the config's)")
      ("expert-compute", po::value(&o.expert_compute)->default_value(o.expert_compute), "auto, grouped or loop")
      ("recompute", po::value(&o.recompute)->default_value(o.recompute),
       "none, act, weights, act,weights or block: what the backward recomputes instead of keeping "
       "(train.recompute): act(gate) * up of each feed-forward, the routed experts' bf16 weights, whole blocks")
      ("unfused-adamw", po::bool_switch(&o.unfused_adamw), "LibTorch's torch::optim::AdamW instead of the fused one")
      ("unfused-kernels", po::bool_switch(&o.unfused_kernels),
       "ATen's operators instead of our fused CUDA kernels (SwiGLU, RoPE, combine, RMSNorm, router, grouping, aux loss, cross entropy; model/fused_kernels.h)")
      ("cuda-graph", po::bool_switch(&o.cuda_graph), "forward+backward replayed as one CUDA graph (trainer/graphed_step.h)")
      ("breakdown", po::bool_switch(&o.breakdown), "also time the step's regions with CUDA events (not with --cuda-graph)")
      ("proxies", po::bool_switch(&o.proxies),
       "instead of timing: count one step's launches, host syncs and bytes by region (default configs a,b,c,tiny)")
      ("kernels", po::bool_switch(&o.kernels),
       "instead of a step: our fused kernels against the ATen operators they replace, on each config's shapes "
       "(time per call, bandwidth)")
      ("top-ops", po::value(&o.top_ops)->default_value(o.top_ops), "--proxies: how many operators each 'most ...' line names")
      ("profile", po::value(&o.profile_dir), "also write a kineto trace of 3 steps per config into this directory")
      ("layer", po::value(&layer_tokens)->default_value(0),
       "instead: one Mixtral-shaped MoE layer (bf16) on this many tokens, e.g. 4096");
  moe::launch::parse_or_exit(argc, argv, desc);
  MOE_CHECK(o.top_ops > 0, "--top-ops ", o.top_ops, " must be positive");
  moe::model::parse_recompute(o.recompute);  // refuses an unknown value, naming it
  const auto device = moe::trainer::choose_device(device_opt);
  moe::model::set_fused_kernels_enabled(!o.unfused_kernels);
  if (!o.profile_dir.empty()) {
    // Before any step runs: the profiler only logs a write it cannot make, and the trace is lost.
    std::error_code error;
    std::filesystem::create_directories(o.profile_dir, error);
    MOE_CHECK(!error, "--profile ", o.profile_dir, ": cannot create the directory: ", error.message());
  }
  if (layer_tokens > 0) {
    run_layer(device, layer_tokens, o);
    moe::parallel::finalize_mpi();
    return 0;
  }
  if (o.proxies) {
    moe::bench::track_cpu_allocations();
    MOE_CHECK(!o.cuda_graph, "--proxies counts an eager step: drop --cuda-graph");
    if (configs.empty()) configs = "a,b,c,tiny";
    // On the CPU, the path a GPU takes (runs_grouped would choose the loop for a CPU tensor).
    if (!device.is_cuda() && o.expert_compute == "auto") o.expert_compute = "grouped";
    moe::model::set_fused_kernels_on_cpu(true);  // and our fused operators, as on a GPU
  }
  if (configs.empty()) configs = device.is_cuda() ? "a,b,c" : "tiny";
  if (o.kernels) {
    moe::model::set_fused_kernels_on_cpu(true);  // on the CPU: their loops, to exercise them
    std::printf("%-5s %-18s %-22s %10s %10s %8s %10s\n", "cfg", "kernel", "shape", "fused(us)", "aten(us)", "speedup",
                "fused GB/s");
    for (const auto& name : split(configs)) {
      const auto k = make_case(name);
      moe::bench::run_kernel_bench(name, k.config, k.batch, k.seq, device, static_cast<int>(o.steps));
    }
    moe::parallel::finalize_mpi();
    return 0;
  }
  if (!o.proxies) std::printf("%-5s %-5s %-18s %12s %8s %8s %9s %9s %11s %6s %7s %7s %8s\n", "cfg", "dev", "experts", "batch",
              "params", "active", "step(ms)", "max(ms)", "tokens/s", "MFU%", "allocGB", "resvGB", "loss");
  for (const auto& name : split(configs)) {
    auto k = make_case(name);
    k.config.expert_compute = o.expert_compute;
    k.config.validate();
    run_case(k, device, o);
#ifdef MOE_TORCH_CUDA
    if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  }
  moe::parallel::finalize_mpi();
  return 0;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
