// Rank-valued rows for all-to-all tests: each row sent from rank `src` to rank `dst` is
// (src, dst, k), so a misrouted or altered row names where it came from. Unequal splits, zero for
// some pairs. Shared by the MPI and NCCL communicator tests.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <numeric>
#include <vector>

namespace moe::test {

/// Rows that rank `src` sends to rank `dst`.
inline int64_t rows_between(int src, int dst) { return (src + 2 * dst) % 3; }

struct RankRows {
  torch::Tensor input;  // [sum(in_splits), 3] float64 on the CPU
  std::vector<int64_t> in_splits, out_splits;
  int64_t received() const { return std::accumulate(out_splits.begin(), out_splits.end(), int64_t{0}); }
};

inline RankRows rank_rows(int me, int world) {
  RankRows r{{}, std::vector<int64_t>(world), std::vector<int64_t>(world)};
  std::vector<torch::Tensor> rows;
  for (int d = 0; d < world; ++d) {
    r.in_splits[d] = rows_between(me, d);
    r.out_splits[d] = rows_between(d, me);
    for (int64_t k = 0; k < r.in_splits[d]; ++k) rows.push_back(torch::tensor({double(me), double(d), double(k)}));
  }
  r.input = rows.empty() ? torch::zeros({0, 3}, torch::kFloat64) : torch::stack(rows);
  return r;
}

/// Checks every received row (any device or dtype) and returns how many are wrong.
inline int64_t expect_rank_rows_received(const torch::Tensor& output, const RankRows& sent, int me) {
  const auto got = output.to(torch::kCPU, torch::kFloat64);
  int64_t row = 0, wrong = 0;
  for (size_t s = 0; s < sent.out_splits.size(); ++s) {
    for (int64_t k = 0; k < sent.out_splits[s]; ++k, ++row) {
      const bool ok = got[row][0].item<double>() == double(s) && got[row][1].item<double>() == me &&
                      got[row][2].item<double>() == k;
      wrong += !ok;
      EXPECT_TRUE(ok) << "rank " << me << " row " << row << " expected (src " << s << ", dst " << me << ", k " << k
                      << ") got " << got[row] << " dtype " << output.scalar_type();
    }
  }
  return wrong;
}

}  // namespace moe::test
