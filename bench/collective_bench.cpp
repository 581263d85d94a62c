#include "bench/collective_bench.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "bench/bench_stats.h"

namespace moe::bench {

using Clock = std::chrono::steady_clock;

nlohmann::ordered_json bench_all_to_all(parallel::Communicator& comm, int64_t bytes_per_rank, int64_t iters) {
  const int n = comm.size();
  const int64_t rows_per_peer = std::max<int64_t>(1, bytes_per_rank / 4 / n / 64);
  const int64_t rows = rows_per_peer * n;
  auto input = torch::empty({rows, 64}, torch::kFloat32);
  // Row r of the chunk for peer p holds (source rank, r): the receiver can check every value.
  for (int p = 0; p < n; ++p) {
    input.narrow(0, p * rows_per_peer, rows_per_peer).copy_(
        (comm.rank() * 1000000 + torch::arange(rows_per_peer, torch::kFloat32)).unsqueeze(1).expand({rows_per_peer, 64}));
  }
  auto output = torch::empty_like(input);
  const std::vector<int64_t> splits(n, rows_per_peer);
  std::vector<double> times;
  int64_t wrong = 0;
  comm.all_to_all(output, input, splits, splits);  // warm-up: connections, buffers
  for (int64_t i = 0; i < iters; ++i) {
    comm.barrier();
    const auto t0 = Clock::now();
    comm.all_to_all(output, input, splits, splits);
    times.push_back(seconds_since(t0));
    for (int s = 0; s < n; ++s) {
      const auto expected = (s * 1000000 + torch::arange(rows_per_peer, torch::kFloat32)).unsqueeze(1).expand({rows_per_peer, 64});
      wrong += output.narrow(0, s * rows_per_peer, rows_per_peer).ne(expected).sum().item<int64_t>();
    }
  }
  const double t = median(times), bytes = double(input.nbytes());
  const double algbw = bytes / t / 1e9;
  return {{"op", "all_to_all"}, {"ranks", n}, {"bytes", int64_t(bytes)}, {"time_us", t * 1e6}, {"algbw_gbs", algbw},
          {"busbw_gbs", algbw * (n - 1) / n}, {"wrong", wrong}};
}

nlohmann::ordered_json bench_all_reduce(parallel::Communicator& comm, int64_t bytes, int64_t iters) {
  const int n = comm.size();
  auto t = torch::empty({std::max<int64_t>(1, bytes / 4)}, torch::kFloat32);
  std::vector<double> times;
  int64_t wrong = 0;
  comm.all_reduce(t, parallel::ReduceOp::kSum);  // warm-up: connections, buffers
  for (int64_t i = 0; i < iters; ++i) {
    t.fill_(float(comm.rank() + 1));
    comm.barrier();
    const auto t0 = Clock::now();
    comm.all_reduce(t, parallel::ReduceOp::kSum);
    times.push_back(seconds_since(t0));
    wrong += t.ne(float(n * (n + 1) / 2)).sum().item<int64_t>();
  }
  const double s = median(times), b = double(t.nbytes());
  const double algbw = b / s / 1e9;
  return {{"op", "all_reduce"}, {"ranks", n}, {"bytes", int64_t(b)}, {"time_us", s * 1e6}, {"algbw_gbs", algbw},
          {"busbw_gbs", algbw * 2 * (n - 1) / n}, {"wrong", wrong}};
}

}  // namespace moe::bench
