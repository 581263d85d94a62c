#include "trainer/config_cli.h"

#include <boost/any.hpp>
#include <boost/program_options.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "common/check.h"

namespace po = boost::program_options;

namespace moe::trainer {

namespace {

// Shortest text that reads back to the same double.
std::string format_double(double v) {
  for (int precision = 6; precision <= 17; ++precision) {
    std::ostringstream os;
    os.precision(precision);
    os << v;
    if (std::stod(os.str()) == v) return os.str();
  }
  return std::to_string(v);
}

template <typename T>
po::typed_value<T>* bound(T& field) {
  return po::value<T>(&field)->default_value(field);
}

po::typed_value<double>* bound(double& field) { return po::value<double>(&field)->default_value(field, format_double(field)); }

// bool options print as true/false in --help and take true/false/1/0/yes/no/on/off.
po::typed_value<bool>* bound(bool& field) {
  return po::value<bool>(&field)->default_value(field, field ? "true" : "false");
}

std::vector<po::options_description> option_groups(TrainConfig& c) {
  auto& m = c.model;
  po::options_description model("model (the seeds' MiniMindConfig fields)");
  model.add_options()
      ("model.hidden_size", bound(m.hidden_size), "hidden size")
      ("model.num_hidden_layers", bound(m.num_hidden_layers), "transformer blocks")
      ("model.num_attention_heads", bound(m.num_attention_heads), "query heads")
      ("model.num_key_value_heads", bound(m.num_key_value_heads), "key/value heads (GQA)")
      ("model.intermediate_size", bound(m.intermediate_size), "FFN size; 0 = 64*ceil(int(8h/3)/64)")
      ("model.vocab_size", bound(m.vocab_size), "vocabulary size (>= the tokenizer's; 0 = the data's)")
      ("model.max_position_embeddings", bound(m.max_position_embeddings), "longest sequence")
      ("model.hidden_act", bound(m.hidden_act), "silu | gelu | relu")
      ("model.rms_norm_eps", bound(m.rms_norm_eps), "RMSNorm epsilon")
      ("model.rope_theta", bound(m.rope_theta), "rotary base")
      ("model.dropout", bound(m.dropout), "dropout probability")
      ("model.flash_attn", bound(m.flash_attn), "fused attention kernel")
      ("model.bos_token_id", bound(m.bos_token_id), "BOS id")
      ("model.eos_token_id", bound(m.eos_token_id), "EOS id")
      ("model.use_moe", bound(m.use_moe), "mixture-of-experts feed-forward")
      ("model.n_routed_experts", bound(m.n_routed_experts), "routed experts per MoE layer")
      ("model.num_experts_per_tok", bound(m.num_experts_per_tok), "experts per token (top-k)")
      ("model.n_shared_experts", bound(m.n_shared_experts), "shared experts (every token)")
      ("model.scoring_func", bound(m.scoring_func), "gate scores: softmax (MiniMind) | sigmoid (DeepSeek-V3)")
      ("model.aux_loss_alpha", bound(m.aux_loss_alpha), "load-balancing loss weight; 0 = off")
      ("model.seq_aux", bound(m.seq_aux), "sequence-level aux loss (false = batch-level)")
      ("model.norm_topk_prob", bound(m.norm_topk_prob), "renormalise the top-k weights")
      ("model.routed_scaling_factor", bound(m.routed_scaling_factor), "multiplies the chosen experts' weights")
      ("model.bias_update_rate", bound(m.bias_update_rate),
       "auxiliary-loss-free balancing: per-step move of each expert's routing bias (1e-3 typical); 0 = off")
      ("model.router_z_loss_coef", bound(m.router_z_loss_coef), "router z-loss weight (1e-3 typical); 0 = off")
      ("model.n_group", bound(m.n_group), "expert groups (consecutive ids; = parallel.ep_size: a group per rank)")
      ("model.topk_group", bound(m.topk_group), "groups a token may use (< n_group limits its all-to-all)")
      ("model.capacity_factor", bound(m.capacity_factor), "expert capacity in training; 0 = dropless")
      ("model.expert_compute", bound(m.expert_compute),
       "local experts: auto (grouped GEMM for bf16 on CUDA) | grouped | loop");
  po::options_description parallel("parallel");
  parallel.add_options()
      ("parallel.backend", bound(c.parallel.backend), "auto | mpi | nccl | single")
      ("parallel.ep_size", bound(c.parallel.ep_size), "ranks per expert-parallel group; 0 = world")
      ("parallel.comm_timeout", bound(c.parallel.comm_timeout), "seconds before a stuck collective aborts all ranks")
      ("parallel.global_batch_aux", bound(c.parallel.global_batch_aux),
       "batch-level aux loss over the global batch (with model.seq_aux = false)")
      ("parallel.overlap_grad_sync", bound(c.parallel.overlap_grad_sync),
       "start gradient all-reduces during backward (MPI: in the background)")
      ("parallel.bucket_mb", bound(c.parallel.bucket_mb), "gradient bucket size in MiB")
      ("parallel.pad_to_capacity", bound(c.parallel.pad_to_capacity),
       "with model.capacity_factor: expert parallelism sends capacity rows per expert, padded (no count exchange, "
       "no host sync, fixed shapes)");
  po::options_description data("data");
  data.add_options()
      ("data.dir", bound(c.data.dir), "moe-prepare output directory")
      ("data.seq_len", bound(c.data.seq_len), "tokens per sequence")
      ("data.seed", bound(c.data.seed), "shuffle seed");
  po::options_description optim("optim (AdamW)");
  optim.add_options()
      ("optim.lr", bound(c.optim.lr), "peak learning rate")
      ("optim.min_lr", bound(c.optim.min_lr), "final learning rate of the cosine decay")
      ("optim.warmup_steps", bound(c.optim.warmup_steps), "linear warm-up steps")
      ("optim.weight_decay", bound(c.optim.weight_decay), "decoupled weight decay (not on norms/biases)")
      ("optim.beta1", bound(c.optim.beta1), "Adam beta1")
      ("optim.beta2", bound(c.optim.beta2), "Adam beta2")
      ("optim.eps", bound(c.optim.eps), "Adam epsilon")
      ("optim.grad_clip", bound(c.optim.grad_clip), "global gradient-norm limit; 0 = off")
      ("optim.shard_state", bound(c.optim.shard_state),
       "split AdamW's moments and update over each parameter's replicas (dense: world, experts: edp)")
      ("optim.shard_grads", bound(c.optim.shard_grads),
       "with optim.shard_state: free each full gradient once reduce-scattered (ZeRO-2)")
      ("optim.state_dtype", bound(c.optim.state_dtype),
       "fp32 | bf16 (with optim.shard_state): how AdamW's moments are stored; the update computes in fp32");
  po::options_description train("train");
  train.add_options()
      ("train.steps", bound(c.train.steps), "optimiser steps")
      ("train.micro_batch", bound(c.train.micro_batch), "sequences per rank per micro-batch")
      ("train.grad_accum", bound(c.train.grad_accum), "micro-batches per step")
      ("train.log_every", bound(c.train.log_every), "steps between progress lines")
      ("train.eval_every", bound(c.train.eval_every), "steps between evaluations; 0 = at the end only")
      ("train.eval_batches", bound(c.train.eval_batches), "micro-batches per rank per evaluation")
      ("train.out_dir", bound(c.train.out_dir), "run directory: metrics.jsonl, config.ini, checkpoints/")
      ("train.device", bound(c.train.device), "auto | cpu | cuda")
      ("train.dtype", bound(c.train.dtype), "auto | fp32 | bf16 (autocast, fp32 master weights; GPU)")
      ("train.seed", bound(c.train.seed), "initialisation seed")
      ("train.max_bad_steps", bound(c.train.max_bad_steps), "consecutive non-finite steps before aborting")
      ("train.peak_tflops", bound(c.train.peak_tflops), "per-GPU peak for MFU; 0 = known devices")
      ("train.cuda_graph", bound(c.train.cuda_graph),
       "forward+backward replayed as one CUDA graph (GPU, one rank, grad_accum 1)")
      ("train.recompute", bound(c.train.recompute),
       "none | act | weights | act,weights | block: what the backward recomputes instead of keeping: act, "
       "each feed-forward's act(gate) * up; weights, the routed experts' bf16 weight stacks (cast again); "
       "block, every block from its input (one more forward per step; needs model.dropout 0). Less memory "
       "for some time, same values")
      ("train.fused_kernels", bound(c.train.fused_kernels),
       "our fused kernels for SwiGLU, RoPE, the MoE combine, RMSNorm, the router, the grouping, the aux loss and the cross entropy (model/fused_kernels.h); false runs ATen's operators instead "
       "(same values; to compare or to diagnose)");
  po::options_description checkpoint("checkpoint");
  checkpoint.add_options()
      ("checkpoint.every", bound(c.checkpoint.every), "steps between checkpoints; 0 = at the end only")
      ("checkpoint.save_final", bound(c.checkpoint.save_final), "save a checkpoint at the end")
      ("checkpoint.keep", bound(c.checkpoint.keep), "newest checkpoints to keep (latest always kept)")
      ("checkpoint.resume", bound(c.checkpoint.resume),
       "auto (continue from out_dir's latest checkpoint if any) | none | PATH (a run or step directory)")
      ("checkpoint.init_from", bound(c.checkpoint.init_from),
       "a new run starts from this checkpoint's parameters (moe-import's output, another run): continued "
       "pretraining with a fresh optimizer and data position");
  return {model, parallel, data, optim, train, checkpoint};
}

po::options_description all_options(TrainConfig& c) {
  po::options_description all;
  for (const auto& g : option_groups(c)) all.add(g);
  return all;
}

// --help, --config, --dump-config; config_file (may be null) receives --config.
po::options_description general_options(std::string* config_file) {
  po::options_description general("general");
  general.add_options()("help", "show this help")
      ("config", po::value(config_file)->value_name("FILE"), "INI file of options (the command line overrides it)")
      ("dump-config", "print the resulting configuration as an INI file and exit");
  return general;
}

std::string format_value(const boost::any& v) {
  if (const auto* x = boost::any_cast<int64_t>(&v)) return std::to_string(*x);
  if (const auto* x = boost::any_cast<uint64_t>(&v)) return std::to_string(*x);
  if (const auto* x = boost::any_cast<double>(&v)) return format_double(*x);
  if (const auto* x = boost::any_cast<bool>(&v)) return *x ? "true" : "false";
  if (const auto* x = boost::any_cast<std::string>(&v)) return *x;
  throw std::logic_error("config option of an unexpected type");
}

void store_config_stream(std::istream& in, const std::string& path, const po::options_description& options,
                         po::variables_map& vm) {
  try {
    po::store(po::parse_config_file(in, options, /*allow_unregistered=*/false), vm);
  } catch (const po::error& e) {
    throw InvalidArgument(path + ": " + e.what());
  }
}

void store_config_file(const std::string& path, const po::options_description& options, po::variables_map& vm) {
  MOE_CHECK(!std::filesystem::is_directory(path), "config file '", path, "' is a directory, not an INI file");
  std::ifstream in(path);
  MOE_CHECK(in.good(), "config file '", path, "' not found");
  store_config_stream(in, path, options, vm);
}

}  // namespace

TrainCommandLine parse_train_command_line(int argc, const char* const* argv) {
  TrainCommandLine cli;
  auto options = all_options(cli.config);
  po::options_description command_line;
  command_line.add(general_options(&cli.config_file)).add(options);
  po::variables_map vm;
  try {
    // NOTE: the first store of an option wins over later ones except over defaults, so the
    // command line is stored before the file: defaults < file < command line.
    po::store(po::parse_command_line(argc, argv, command_line), vm);
    if (vm.count("config")) store_config_file(vm["config"].as<std::string>(), options, vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw InvalidArgument(e.what());
  }
  cli.help = vm.count("help") > 0;
  cli.dump_config = vm.count("dump-config") > 0;
  if (!cli.help) cli.config.validate();
  return cli;
}

std::string usage() {
  TrainConfig defaults;
  std::ostringstream os;
  os << "Usage: mpirun -np N moe-train [--config FILE.ini] [--group.key value ...]\n\n"
     << general_options(nullptr) << "\n";
  for (const auto& g : option_groups(defaults)) os << g << "\n";
  return os.str();
}

namespace {

std::vector<std::pair<std::string, std::string>> config_entries(const TrainConfig& config) {
  auto copy = config;
  const auto all = all_options(copy);
  po::variables_map vm;
  const char* argv0[] = {"moe-train"};
  po::store(po::parse_command_line(1, argv0, all), vm);  // every option at its (= config's) value
  std::vector<std::pair<std::string, std::string>> entries;
  for (const auto& option : all.options()) {
    entries.emplace_back(option->long_name(), format_value(vm[option->long_name()].value()));
  }
  return entries;
}

std::string ini_text(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::ostringstream os;
  std::string section;
  for (const auto& [name, value] : entries) {
    const auto dot = name.find('.');
    if (name.substr(0, dot) != section) {
      section = name.substr(0, dot);
      os << (os.tellp() > 0 ? "\n" : "") << "[" << section << "]\n";
    }
    os << name.substr(dot + 1) << " = " << value << "\n";
  }
  return os.str();
}

}  // namespace

std::string dump_config(const TrainConfig& config) { return ini_text(config_entries(config)); }

std::map<std::string, std::string> config_values(const TrainConfig& config) {
  const auto entries = config_entries(config);
  return {entries.begin(), entries.end()};
}

TrainConfig config_from_values(const std::map<std::string, std::string>& values, const std::string& what) {
  TrainConfig config;
  const auto options = all_options(config);
  // Keys this build does not know (an older or newer version's) are reported, not guessed.
  for (const auto& [key, value] : values) {
    MOE_CHECK(options.find_nothrow(key, false) != nullptr, what, ": unknown configuration key '", key, "'");
  }
  std::istringstream in(ini_text({values.begin(), values.end()}));
  po::variables_map vm;
  store_config_stream(in, what, options, vm);
  po::notify(vm);
  return config;
}

TrainConfig load_config_file(const std::string& path) {
  TrainConfig config;
  const auto options = all_options(config);
  po::variables_map vm;
  store_config_file(path, options, vm);
  po::notify(vm);
  return config;
}

}  // namespace moe::trainer
