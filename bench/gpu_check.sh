#!/usr/bin/env bash
# The GPU bring-up and benchmark procedure, in stages, logs under LOG_DIR:
#   bench/gpu_check.sh LOG_DIR [build] [test] [bench] [graph] [proxies] [layer] [peer PEER.py] [ckpt] [shard] [train DATA_DIR]
# On the lent GPU machine the build needs Boost.Program_options, nlohmann-json and zlib carried in
# the device bundle: ../shared/gpu/make-bundle.sh nlohmann-json3-dev zlib1g-dev
#   build  launch/setup.sh (MOE_NO_APT=1 where apt is missing), tests included
#   test   the whole ctest suite (CUDA tests run instead of skipping where a GPU is visible)
#   bench  moe-bench-model on configs a, b, c with the CUDA-event breakdown
#   graph  the same with forward+backward replayed as a CUDA graph
#   layer  one Mixtral-shaped MoE layer, grouped and loop experts
#   proxies  the step's proxies (launches, syncs, bytes) on the GPU, beside the CPU's prediction
#   peer   the PyTorch baseline script given, same configs, same GPU, right after ours
#   ckpt   moe-bench-checkpoint on the GPU: save/load of the training state, sharded start-up
#   shard  the distributed optimizer on the GPU: sharded_optimizer_test on 2 ranks sharing it (MPI),
#          then moe-bench-scaling on gpu-768, replicated and sharded, one rank (NCCL) and 2 (MPI)
#   train  launch/run_gpus.sh 1 configs/minimind2-moe.ini on DATA_DIR (200 steps; more moe-train
#          options in $MOE_TRAIN_ARGS), then moe-generate --device cuda from its checkpoint
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log_dir="$1"; shift
mkdir -p "$log_dir"
bin="$root/build/bin"
stage() { echo "=== $1 ($(date +%T))"; }
while [ $# -gt 0 ]; do
  case "$1" in
    build) stage build; "$root/launch/setup.sh" > "$log_dir/build.log" 2>&1 || { tail -30 "$log_dir/build.log"; exit 1; }
           grep -E "CUDA/NCCL code compiled" "$log_dir/build.log" || true ;;
    test) stage test
          ctest --test-dir "$root/build" -j8 --output-on-failure > "$log_dir/ctest.log" 2>&1
          grep -E "tests passed|tests failed|Failed|\*\*\*|Timeout" "$log_dir/ctest.log" | tail -25
          "$bin/cuda_model_test" 2>&1 | grep -E "OK|FAILED|SKIPPED|Failure" | head -20 ;;
    bench) stage bench; "$bin/moe-bench-model" --device cuda --breakdown 2>&1 | tee "$log_dir/bench.log" ;;
    graph) stage graph; "$bin/moe-bench-model" --device cuda --cuda-graph 2>&1 | tee "$log_dir/bench_graph.log" ;;
    proxies) stage proxies; "$bin/moe-bench-model" --device cuda --proxies --configs tiny,a,b,c 2>&1 | tee "$log_dir/proxies.log" ;;
    layer) stage layer
           for compute in grouped loop; do
             "$bin/moe-bench-model" --device cuda --layer 4096 --expert-compute $compute --steps 10 --warmup 3
           done 2>&1 | tee "$log_dir/layer.log" ;;
    peer) stage peer; python3 "$2" 2>&1 | tee "$log_dir/peer.log"; shift ;;
    ckpt) stage ckpt
          "$bin/moe-bench-checkpoint" --device cuda --dir "$log_dir/ckpt-bench" \
            --configs "$root/configs/minimind2-moe.ini,$root/configs/gpu-768.ini,$root/configs/gpu-1024.ini" \
            2>&1 | tee "$log_dir/ckpt.log" | grep -v '^{' ;;
    shard) stage shard
           export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
           mpirun -np 2 --oversubscribe "$bin/sharded_optimizer_test" --device=cuda 2>&1 | tee "$log_dir/shard_test.log" |
             grep -E "OK|PASSED|FAILED|SKIPPED|Failure" | head -20
           "$bin/moe-bench-scaling" --config "$root/configs/gpu-768.ini" --device cuda --backend nccl --shard_state both \
             --steps 5 --warmup 2 2>&1 | tee "$log_dir/shard_bench.log" | grep -v '^{'
           mpirun -np 2 --oversubscribe "$bin/moe-bench-scaling" --config "$root/configs/gpu-768.ini" --device cuda \
             --backend mpi --ep_sizes 1 --shard_state both --steps 3 --warmup 1 2>&1 | tee -a "$log_dir/shard_bench.log" |
             grep -v '^{' ;;
    train) stage train
           OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "$root/launch/run_gpus.sh" 1 \
             "$root/configs/minimind2-moe.ini" --data.dir "$2" --train.steps 200 --train.log_every 20 \
             --train.eval_every 100 --optim.warmup_steps 20 --train.out_dir "$log_dir/run" \
             --model.vocab_size 6400 ${MOE_TRAIN_ARGS:-} > "$log_dir/train.log" 2>&1
           grep -E "\[train\] (step|done|model)|\[eval\]|error" "$log_dir/train.log" | head -30
           "$bin/moe-generate" --checkpoint "$log_dir/run" --prompt "Q: What" --device cuda --max_new_tokens 40 \
             2>&1 | tee "$log_dir/generate.log"
           shift ;;
    *) echo "unknown stage '$1'" >&2; exit 2 ;;
  esac
  shift
done
