#include "trainer/train_config.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"
#include "model/recompute_choice.h"

namespace moe::trainer {

namespace {

// inf passes "> 0" and NaN fails every comparison: both are refused by name.
bool finite(double x) { return std::isfinite(x); }

}  // namespace

void TrainConfig::validate() const {
  try {
    auto resolved = model;  // vocab_size 0 is the data's, known only to the trainer
    if (resolved.vocab_size == 0) resolved.vocab_size = std::max(model.bos_token_id, model.eos_token_id) + 1;
    resolved.validate();
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("model.") + e.what());
  }
  const auto& p = parallel;
  MOE_CHECK(p.backend == "auto" || p.backend == "mpi" || p.backend == "nccl" || p.backend == "single",
            "--parallel.backend '", p.backend, "' is not one of auto, mpi, nccl, single");
  MOE_CHECK(p.ep_size >= 0, "--parallel.ep_size must be >= 0 (0 = the world), got ", p.ep_size);
  MOE_CHECK(finite(p.comm_timeout) && p.comm_timeout > 0, "--parallel.comm_timeout must be a finite positive number of "
            "seconds, got ", p.comm_timeout);
  MOE_CHECK(finite(p.bucket_mb) && p.bucket_mb > 0, "--parallel.bucket_mb must be a finite positive number, got ",
            p.bucket_mb);
  MOE_CHECK(!p.global_batch_aux || !model.seq_aux, "--parallel.global_batch_aux needs --model.seq_aux false");
  MOE_CHECK(!p.pad_to_capacity || model.capacity_factor > 0,
            "--parallel.pad_to_capacity needs --model.capacity_factor > 0 (the rows per expert it pads to)");
  MOE_CHECK(!data.dir.empty(), "--data.dir is not set (the directory moe-prepare wrote)");
  MOE_CHECK(data.seq_len > 0 && data.seq_len <= model.max_position_embeddings, "--data.seq_len ", data.seq_len,
            " must be in [1, model.max_position_embeddings = ", model.max_position_embeddings, "]");
  const auto& o = optim;
  MOE_CHECK(finite(o.lr) && o.lr > 0, "--optim.lr must be a finite positive number, got ", o.lr);
  MOE_CHECK(o.min_lr >= 0 && o.min_lr <= o.lr, "--optim.min_lr ", o.min_lr, " must be in [0, optim.lr = ", o.lr, "]");
  MOE_CHECK(o.warmup_steps >= 0, "--optim.warmup_steps must be >= 0, got ", o.warmup_steps);
  MOE_CHECK(finite(o.weight_decay) && o.weight_decay >= 0, "--optim.weight_decay must be finite and >= 0, got ",
            o.weight_decay);
  MOE_CHECK(o.beta1 >= 0 && o.beta1 < 1, "--optim.beta1 must be in [0, 1), got ", o.beta1);
  MOE_CHECK(o.beta2 >= 0 && o.beta2 < 1, "--optim.beta2 must be in [0, 1), got ", o.beta2);
  MOE_CHECK(finite(o.eps) && o.eps > 0, "--optim.eps must be a finite positive number, got ", o.eps);
  MOE_CHECK(finite(o.grad_clip) && o.grad_clip >= 0, "--optim.grad_clip must be finite and >= 0 (0 = off), got ",
            o.grad_clip);
  MOE_CHECK(!o.shard_grads || o.shard_state, "--optim.shard_grads needs --optim.shard_state true");
  MOE_CHECK(o.state_dtype == "fp32" || o.state_dtype == "bf16", "--optim.state_dtype '", o.state_dtype,
            "' is not one of fp32, bf16");
  MOE_CHECK(o.state_dtype == "fp32" || o.shard_state, "--optim.state_dtype ", o.state_dtype,
            " needs --optim.shard_state true (the replicated optimizer keeps fp32 moments)");
  const auto& t = train;
  MOE_CHECK(t.steps > 0, "--train.steps must be positive, got ", t.steps);
  MOE_CHECK(t.micro_batch > 0, "--train.micro_batch must be positive, got ", t.micro_batch);
  MOE_CHECK(t.grad_accum > 0, "--train.grad_accum must be positive, got ", t.grad_accum);
  MOE_CHECK(t.log_every > 0, "--train.log_every must be positive, got ", t.log_every);
  MOE_CHECK(t.eval_every >= 0, "--train.eval_every must be >= 0, got ", t.eval_every);
  MOE_CHECK(t.eval_batches >= 0, "--train.eval_batches must be >= 0, got ", t.eval_batches);
  MOE_CHECK(!t.out_dir.empty(), "--train.out_dir is empty");
  MOE_CHECK(t.device == "auto" || t.device == "cpu" || t.device == "cuda", "--train.device '", t.device,
            "' is not one of auto, cpu, cuda");
  MOE_CHECK(t.dtype == "auto" || t.dtype == "fp32" || t.dtype == "bf16", "--train.dtype '", t.dtype,
            "' is not one of auto, fp32, bf16");
  try {
    model::parse_recompute(t.recompute);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("--train.") + e.what());
  }
  MOE_CHECK(!model::parse_recompute(t.recompute).block || model.dropout == 0.0, "--train.recompute block needs "
            "--model.dropout 0 (the recomputed forward would draw other dropout masks), got ", model.dropout);
  MOE_CHECK(!(t.cuda_graph && o.shard_state), "--train.cuda_graph runs one rank, which has no replicas to shard the "
            "optimizer over: leave --optim.shard_state false");
  MOE_CHECK(t.max_bad_steps > 0, "--train.max_bad_steps must be positive, got ", t.max_bad_steps);
  MOE_CHECK(finite(t.peak_tflops) && t.peak_tflops >= 0, "--train.peak_tflops must be finite and >= 0, got ",
            t.peak_tflops);
  MOE_CHECK(checkpoint.every >= 0, "--checkpoint.every must be >= 0, got ", checkpoint.every);
  MOE_CHECK(checkpoint.keep >= 1, "--checkpoint.keep must be >= 1, got ", checkpoint.keep);
  MOE_CHECK(!checkpoint.resume.empty(), "--checkpoint.resume is empty (auto, none or a checkpoint path)");
}

}  // namespace moe::trainer
