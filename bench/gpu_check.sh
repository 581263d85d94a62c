#!/usr/bin/env bash
# The GPU bring-up and benchmark procedure, in stages, logs under LOG_DIR:
#   bench/gpu_check.sh LOG_DIR [report] [build] [peer-during-build PEER.py] [test] [bench] [graph] [graph-unfused] [kernels] [graph-act] [graph-lean] [graph-block] [proxies]
#                      [profile] [layer] [peer PEER.py] [ckpt] [shard] [train DATA_DIR] [alltests]
# On the lent GPU machine, what it lacks comes from the device bundle (bench/gpu_machine_env.sh says
# what was found and what was taken from the bundle):
#   ../shared/gpu/make-bundle.sh nlohmann-json3-dev zlib1g-dev libgtest-dev libgmock-dev, plus the
#   Open MPI wheel in .devbundle/wheels, .deps/sentencepiece carried (the machine has no PyPI).
# Every stage is bounded by `timeout` ($STAGE_TIMEOUT seconds, default 300) so that one stuck stage
# leaves time for the others in one device call.
#   report  what the machine has and what the bundle fills in (build does this too)
#   build   launch/setup.sh --programs (MOE_NO_APT=1), then the benchmarks and the CUDA tests
#   peer-during-build  the baseline in the background while we build: its torch.compile caches fill,
#           so that the `peer` stage after ours compiles in seconds; GPU stages wait for it to end
#   test    the tests that run on the GPU (CUDA model, fused AdamW, NCCL, expert parallel, sharded)
#   bench   moe-bench-model on configs a, b, c with the CUDA-event breakdown
#   graph   the same with forward+backward replayed as a CUDA graph
#   graph-unfused  the graph again with --unfused-kernels: ATen's operators instead of our fused
#           kernels (SwiGLU, RoPE, combine, RMSNorm, router, grouping, aux loss, cross entropy; model/fused_kernels.h), what those kernels gain
#   kernels our fused kernels against the operators they replace, per call on a/b/c's shapes
#           (moe-bench-model --kernels: time, bandwidth)
#   graph-act  the graph again with --recompute act (train.recompute: activation memory for time)
#   graph-lean  the least memory: --recompute act,weights (the experts' bf16 weight stacks cast
#           again in the backward too) and the caching allocator's expandable segments
#           (PYTORCH_CUDA_ALLOC_CONF: reserved memory closer to allocated), the figure the goal compares
#   graph-block  the graph with --recompute block (every block recomputed from its input: the
#           least activation memory, for one more forward per step)
#   proxies the step's proxies (launches, syncs, bytes) on the GPU, beside the CPU's prediction
#   profile kineto traces of configs a and c, summarised by bench/trace_summary.py (kernels by time)
#   layer   one Mixtral-shaped MoE layer, grouped and loop experts
#   peer    the PyTorch baseline script given, same configs, same GPU, right after ours
#   ckpt    moe-bench-checkpoint on the GPU: save/load of the training state, sharded start-up
#   shard   the distributed optimizer on the GPU: sharded_optimizer_test on 2 ranks sharing it (MPI),
#           then moe-bench-scaling on gpu-768, replicated and sharded, one rank (NCCL) and 2 (MPI)
#   train   launch/run_gpus.sh 1 configs/minimind2-moe.ini on DATA_DIR (100 steps; more moe-train
#           options in $MOE_TRAIN_ARGS), then moe-generate --device cuda from its checkpoint
#   alltests  everything built, then the whole ctest suite
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log_dir="$1"; shift
mkdir -p "$log_dir"
bin="$root/build/bin"
stage() { echo "=== $1 ($(date +%T))"; }
bounded() { timeout -k 10 "${STAGE_TIMEOUT:-300}" "$@"; }
# The baseline started during the build shares the machine: every stage that times the GPU waits.
background=""
wait_background() { [ -z "$background" ] || { wait "$background"; background=""; grep -E '^[abc] ' "$log_dir/peer_during_build.log"; }; }
machine_env_sourced=0
machine_env() { [ "$machine_env_sourced" = 1 ] || { source "$root/bench/gpu_machine_env.sh"; machine_env_sourced=1; }; }
ctest_summary() { grep -E "tests passed|tests failed|Failed|\*\*\*|Timeout" "$1" | tail -25; }
gpu_tests=(cuda_model_test fused_swiglu_test fused_rotary_test fused_combine_test fused_rms_norm_test fused_route_test fused_grouping_test fused_aux_loss_test fused_cross_entropy_test fused_adamw_test nccl_communicator_test expert_parallel_test sharded_optimizer_test)
while [ $# -gt 0 ]; do
  case "$1" in
    report) stage report; machine_env ;;
    build) stage build; machine_env
           { MOE_NO_APT=1 STAGE_TIMEOUT=600 bounded "$root/launch/setup.sh" --programs &&
             STAGE_TIMEOUT=600 bounded cmake --build "$root/build" -j"$(nproc)" --target moe-bench-model \
               moe-bench-checkpoint moe-bench-scaling "${gpu_tests[@]}"; } > "$log_dir/build.log" 2>&1 ||
             { grep -E "error|Error" "$log_dir/build.log" | head -20; tail -20 "$log_dir/build.log"; wait_background; exit 1; }
           cmake "$root/build" 2>&1 | grep -E "LibTorch|SentencePiece|Oniguruma|Found MPI|WARNING" ;;  # what it found
    peer-during-build) stage "peer-during-build (background)"
           (PYTHONUNBUFFERED=1 STAGE_TIMEOUT=420 bounded python3 "$2" > "$log_dir/peer_during_build.log" 2>&1) &
           background=$!; shift ;;
    test) stage test; wait_background
          STAGE_TIMEOUT=240 bounded ctest --test-dir "$root/build" -j4 -R "^($(IFS='|'; echo "${gpu_tests[*]}"))" --output-on-failure \
            > "$log_dir/ctest_gpu.log" 2>&1
          ctest_summary "$log_dir/ctest_gpu.log"
          bounded "$bin/cuda_model_test" 2>&1 | grep -E "^\[ +(OK|FAILED|SKIPPED) |Failure" | head -30
          for t in fused_swiglu_test fused_rotary_test fused_combine_test fused_rms_norm_test fused_route_test fused_grouping_test fused_aux_loss_test fused_cross_entropy_test; do
            bounded "$bin/$t" 2>&1 | tee "$log_dir/$t.log" | grep -E "^\[ +(OK|FAILED|SKIPPED) |Failure|cuda" | head -30
          done ;;
    bench) stage bench; wait_background
           bounded "$bin/moe-bench-model" --device cuda --breakdown 2>&1 | tee "$log_dir/bench.log" | grep -v '^{' ;;
    graph) stage graph; wait_background
           bounded "$bin/moe-bench-model" --device cuda --cuda-graph 2>&1 | tee "$log_dir/bench_graph.log" | grep -v '^{' ;;
    graph-unfused) stage graph-unfused; wait_background
           bounded "$bin/moe-bench-model" --device cuda --cuda-graph --unfused-kernels 2>&1 |
             tee "$log_dir/bench_graph_unfused.log" | grep -v '^{' ;;
    kernels) stage kernels; wait_background
             bounded "$bin/moe-bench-model" --device cuda --kernels --steps 50 2>&1 | tee "$log_dir/kernels.log" |
               grep -v '^{' ;;
    graph-act) stage graph-act; wait_background
           bounded "$bin/moe-bench-model" --device cuda --cuda-graph --recompute act 2>&1 |
             tee "$log_dir/bench_graph_act.log" | grep -v '^{' ;;
    graph-lean) stage graph-lean; wait_background
           PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True bounded "$bin/moe-bench-model" --device cuda --cuda-graph \
             --recompute act,weights 2>&1 | tee "$log_dir/bench_graph_lean.log" | grep -v '^{' ;;
    graph-block) stage graph-block; wait_background
           bounded "$bin/moe-bench-model" --device cuda --cuda-graph --recompute block 2>&1 |
             tee "$log_dir/bench_graph_block.log" | grep -v '^{' ;;
    proxies) stage proxies; wait_background
             bounded "$bin/moe-bench-model" --device cuda --proxies --configs tiny,a,b,c 2>&1 |
               tee "$log_dir/proxies.log" | grep -v '^{' ;;
    profile) stage profile; wait_background
             bounded "$bin/moe-bench-model" --device cuda --configs a,c --steps 3 --warmup 3 --profile "$log_dir/prof" \
               > "$log_dir/profile.log" 2>&1
             for t in "$log_dir"/prof/trace_*.json; do python3 "$root/bench/trace_summary.py" "$t" --top 30; done 2>&1 |
               tee -a "$log_dir/profile.log" | head -70
             rm -rf "$log_dir/prof" ;;
    layer) stage layer; wait_background
           for compute in grouped loop; do
             bounded "$bin/moe-bench-model" --device cuda --layer 4096 --expert-compute $compute --steps 10 --warmup 3
           done 2>&1 | tee "$log_dir/layer.log" | grep -v '^{' ;;
    peer) stage peer; wait_background; PYTHONUNBUFFERED=1 bounded python3 "$2" 2>&1 | tee "$log_dir/peer.log"; shift ;;
    ckpt) stage ckpt; wait_background
          bounded "$bin/moe-bench-checkpoint" --device cuda --dir "$log_dir/ckpt-bench" \
            --configs "$root/configs/minimind2-moe.ini,$root/configs/gpu-768.ini,$root/configs/gpu-1024.ini" \
            2>&1 | tee "$log_dir/ckpt.log" | grep -v '^{'
          rm -rf "$log_dir/ckpt-bench" ;;
    shard) stage shard; wait_background
           export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
           bounded mpirun -np 2 --oversubscribe "$bin/sharded_optimizer_test" --device=cuda 2>&1 | tee "$log_dir/shard_test.log" |
             grep -E "OK|PASSED|FAILED|SKIPPED|Failure" | head -20
           bounded "$bin/moe-bench-scaling" --config "$root/configs/gpu-768.ini" --device cuda --backend nccl --shard_state both \
             --steps 5 --warmup 2 2>&1 | tee "$log_dir/shard_bench.log" | grep -v '^{'
           bounded mpirun -np 2 --oversubscribe "$bin/moe-bench-scaling" --config "$root/configs/gpu-768.ini" --device cuda \
             --backend mpi --ep_sizes 1 --shard_state both --steps 3 --warmup 1 2>&1 | tee -a "$log_dir/shard_bench.log" |
             grep -v '^{' ;;
    train) stage train; wait_background
           OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 bounded "$root/launch/run_gpus.sh" 1 \
             "$root/configs/minimind2-moe.ini" --data.dir "$2" --train.steps 100 --train.log_every 20 \
             --train.eval_every 50 --optim.warmup_steps 10 --train.out_dir "$log_dir/run" \
             ${MOE_TRAIN_ARGS:-} > "$log_dir/train.log" 2>&1
           grep -E "\[train\] (step|done|model)|\[eval\]|error" "$log_dir/train.log" | head -30
           bounded "$bin/moe-generate" --checkpoint "$log_dir/run" --prompt "Q: What" --device cuda --max_new_tokens 40 \
             2>&1 | tee "$log_dir/generate.log"
           rm -rf "$log_dir/run"
           shift ;;
    alltests) stage alltests; wait_background
              bounded cmake --build "$root/build" -j"$(nproc)" -- -k 0 > "$log_dir/build_all.log" 2>&1 ||
                tail -20 "$log_dir/build_all.log"
              bounded ctest --test-dir "$root/build" -j8 --output-on-failure > "$log_dir/ctest.log" 2>&1
              ctest_summary "$log_dir/ctest.log" ;;
    *) echo "unknown stage '$1'" >&2; exit 2 ;;
  esac
  shift
done
wait_background
