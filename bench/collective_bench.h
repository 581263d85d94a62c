// The collectives alone at a model's message sizes, nccl-tests style: the median time of `iters`
// runs after a warm-up, algorithm and bus bandwidth, and #wrong (every received value is checked
// after every run). One JSON object per measurement.
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

#include "parallel/communicator.h"

namespace moe::bench {

/// all_to_all of about bytes_per_rank bytes from each rank, split evenly over the peers.
nlohmann::ordered_json bench_all_to_all(parallel::Communicator& comm, int64_t bytes_per_rank, int64_t iters);

/// all_reduce (sum) of `bytes` bytes of float32.
nlohmann::ordered_json bench_all_reduce(parallel::Communicator& comm, int64_t bytes, int64_t iters);

}  // namespace moe::bench
