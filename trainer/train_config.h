// Everything a training run is configured by, in the command line's groups:
//   [model] (the seeds' MiniMindConfig field names), [parallel], [data], [optim], [train], [checkpoint].
// trainer/config_cli.h maps these to --group.key options and INI files.
#pragma once
#include <cstdint>
#include <string>

#include "model/model_config.h"

namespace moe::trainer {

struct ParallelOptions {
  std::string backend = "auto";  // auto | mpi | nccl | single
  int64_t ep_size = 0;           // ranks per expert-parallel group; 0 = the whole world
  double comm_timeout = 300;     // seconds a collective may take before every rank aborts
  bool global_batch_aux = false;  // with model.seq_aux = false: aux loss shares over the global batch
  bool overlap_grad_sync = false;  // start each gradient bucket's all-reduce during backward
  double bucket_mb = 32;           // gradient bucket size
  // With model.capacity_factor: expert parallelism sends `capacity` rows per expert, the kept copies
  // padded with zeros (parallel/expert_dispatch.h): no count exchange or host synchronisation, the
  // same shapes every step, for more all-to-all and expert products (the padding).
  bool pad_to_capacity = false;
};

struct DataOptions {
  std::string dir;        // moe-prepare's output: tokenizer.model, train-*.bin, val-*.bin
  int64_t seq_len = 256;  // tokens per training sequence
  uint64_t seed = 1234;   // shuffle order of each epoch
};

struct OptimOptions {
  double lr = 1e-3;            // peak learning rate
  double min_lr = 1e-4;        // end of the cosine decay
  int64_t warmup_steps = 100;  // linear warm-up from lr / warmup_steps
  double weight_decay = 0.1;   // decoupled; none on norms and biases
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;      // global gradient-norm limit; 0 = off
  // The distributed optimiser (trainer/optim/sharded_adamw.h): AdamW's moments and update split over
  // each parameter's replicas, gradients reduce-scattered. Off by default: with one rank, or experts
  // not replicated and few ranks, there is little to save, and the weights' all-gather is not yet
  // overlapped with the next forward (a latency a fast interconnect notices).
  bool shard_state = false;
  bool shard_grads = false;  // with shard_state: release each full gradient once its bucket is packed (ZeRO-2)
  std::string state_dtype = "fp32";  // fp32 | bf16 (with shard_state): the moments' storage; the update runs in fp32
};

struct TrainOptions {
  int64_t steps = 1000;
  int64_t micro_batch = 8;   // sequences per rank per micro-batch
  int64_t grad_accum = 1;    // micro-batches per optimiser step
  int64_t log_every = 10;
  int64_t eval_every = 100;  // 0 = only at the end
  int64_t eval_batches = 10;  // micro-batches per rank per evaluation
  std::string out_dir = "runs/default";
  std::string device = "auto";  // auto | cpu | cuda
  std::string dtype = "auto";   // auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
  uint64_t seed = 42;           // model initialisation
  int64_t max_bad_steps = 5;    // consecutive non-finite steps before aborting
  double peak_tflops = 0;       // per GPU, for MFU; 0 = from the device name when known
  bool cuda_graph = false;      // forward+backward as one replayed CUDA graph (one rank, no accumulation)
  std::string recompute = "none";  // none | act | weights | act,weights (model::parse_recompute)
  bool fused_kernels = true;  // our fused kernels (SwiGLU, RoPE, combine, RMSNorm, routing, loss: model/fused_kernels.h); false: ATen's operators
};

struct CheckpointOptions {
  int64_t every = 0;  // save every N steps (0 = only at the end)
  bool save_final = true;
  int64_t keep = 3;             // newest checkpoints kept (the one `latest` names always is)
  std::string resume = "auto";  // auto (the run directory's latest, if any) | none | a checkpoint path
  std::string init_from;        // a new run's parameters from this checkpoint (moe-import's, another
                                // run's); a fresh optimizer, schedule and data position
};

struct TrainConfig {
  model::ModelConfig model;
  ParallelOptions parallel;
  DataOptions data;
  OptimOptions optim;
  TrainOptions train;
  CheckpointOptions checkpoint;
  /// Throws moe::InvalidArgument naming the --group.key and value of the first bad setting.
  void validate() const;
};

}  // namespace moe::trainer
