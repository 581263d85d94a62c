// Communicator operations on rank-valued payloads (a misrouted row names its source), with
// unequal and zero splits, for every dtype the trainer uses; run on 1, 2 and 4 ranks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/check.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "tests/parallel/rank_rows.h"
#include "tests/support.h"

using namespace moe;
using namespace moe::parallel;

namespace {

std::shared_ptr<Communicator> world() {
  static auto comm = std::make_shared<MpiCommunicator>(MPI_COMM_WORLD, 60.0);
  return comm;
}

const std::vector<c10::ScalarType> kDtypes = {torch::kFloat32, torch::kFloat64, torch::kBFloat16, torch::kInt64};

}  // namespace

TEST(Communicator, AllReduceSumAndAverage) {
  auto comm = world();
  const int w = comm->size(), r = comm->rank();
  for (auto dtype : kDtypes) {
    auto t = (torch::arange(1, 6) * (r + 1)).to(dtype);
    comm->all_reduce(t, ReduceOp::kSum);
    const auto expected = (torch::arange(1, 6) * (w * (w + 1) / 2)).to(dtype);
    EXPECT_TRUE(torch::equal(t, expected)) << "dtype " << dtype << " rank " << r << ": " << t;
    if (dtype == torch::kInt64) continue;
    auto a = torch::full({3}, double(r), dtype);
    comm->all_reduce(a, ReduceOp::kAverage);
    EXPECT_TRUE(torch::allclose(a.to(torch::kFloat64), torch::full({3}, (w - 1) / 2.0, torch::kFloat64)))
        << "dtype " << dtype << ": " << a;
  }
}

// Rank r's input element i is (r + 1) * (i + 1): block b of the sum is known in closed form, so a
// block delivered to the wrong rank, or summed over the wrong ranks, shows.
TEST(Communicator, ReduceScatterGivesEachRankItsSummedBlock) {
  auto comm = world();
  const int w = comm->size(), r = comm->rank();
  const int64_t block = 5;
  const auto index = torch::arange(1, w * block + 1, torch::kFloat64);
  const auto mine = (index * (r + 1)).narrow(0, 0, w * block);
  const auto want_sum = (index * (w * (w + 1) / 2)).narrow(0, r * block, block);
  for (auto dtype : {torch::kFloat32, torch::kFloat64, torch::kBFloat16}) {
    for (const bool async : {false, true}) {
      auto out = torch::full({block}, -1.0, dtype);
      const auto in = mine.to(dtype);
      if (async) {
        comm->reduce_scatter_async(out, in, ReduceOp::kSum)->wait();
      } else {
        comm->reduce_scatter(out, in, ReduceOp::kSum);
      }
      const double tol = dtype == torch::kBFloat16 ? 1e-2 : 1e-12;
      EXPECT_TRUE(torch::allclose(out.to(torch::kFloat64), want_sum, tol, 0)) << dtype << " async " << async << ": " << out;
      auto avg = torch::empty({block}, dtype);
      comm->reduce_scatter(avg, in, ReduceOp::kAverage);
      EXPECT_TRUE(torch::allclose(avg.to(torch::kFloat64), want_sum / w, tol, 0)) << dtype << ": " << avg;
    }
  }
  auto wrong = torch::empty({block + 1});
  const auto refused = test::refusal([&] { comm->reduce_scatter(wrong, torch::zeros({w * block}), ReduceOp::kSum); });
  EXPECT_NE(refused.find("reduce_scatter: input of " + std::to_string(w * block)), std::string::npos) << refused;
}

// In place: the input is the output's own block (the distributed optimiser's weights); the other
// blocks arrive around it, this one stays.
TEST(Communicator, AllGatherInPlaceFillsTheOtherBlocks) {
  auto comm = world();
  const int w = comm->size(), r = comm->rank();
  auto out = torch::full({w * 3}, -1.0);
  out.narrow(0, r * 3, 3).fill_(double(r));
  comm->all_gather(out, out.narrow(0, r * 3, 3));
  const auto want = torch::arange(w, torch::kFloat32).repeat_interleave(3);
  EXPECT_TRUE(torch::equal(out, want)) << "rank " << r << ": " << out;
}

TEST(Communicator, AllToAllUnequalAndZeroSplitsRouteEveryRow) {
  auto comm = world();
  const int me = comm->rank();
  const auto sent = test::rank_rows(me, comm->size());
  for (auto dtype : kDtypes) {
    for (const bool async : {false, true}) {
      auto output = torch::full({sent.received(), 3}, -1.0).to(dtype);
      if (async) {
        auto pending = comm->all_to_all_async(output, sent.input.to(dtype), sent.out_splits, sent.in_splits);
        auto busy = torch::randn({64, 64}).mm(torch::randn({64, 64}));  // work while the rows travel
        pending->wait();
        EXPECT_TRUE(torch::isfinite(busy).all().item<bool>());
      } else {
        comm->all_to_all(output, sent.input.to(dtype), sent.out_splits, sent.in_splits);
      }
      EXPECT_EQ(test::expect_rank_rows_received(output, sent, me), 0) << "async " << async;
    }
  }
  // Started and finished in turn, two in flight at once: each completes into its own output.
  auto first = torch::full({sent.received(), 3}, -1.0, torch::kFloat64), second = torch::full_like(first, -1.0);
  const auto input = sent.input.to(torch::kFloat64);
  auto first_pending = comm->all_to_all_async(first, input, sent.out_splits, sent.in_splits);
  auto second_pending = comm->all_to_all_async(second, input, sent.out_splits, sent.in_splits);
  first_pending->wait();
  second_pending->wait();
  EXPECT_EQ(test::expect_rank_rows_received(first, sent, me), 0);
  EXPECT_EQ(test::expect_rank_rows_received(second, sent, me), 0);
}

TEST(Communicator, AllGatherBroadcastBarrier) {
  auto comm = world();
  const int w = comm->size(), r = comm->rank();
  for (auto dtype : kDtypes) {
    auto out = torch::zeros({w * 2, 3}, dtype);
    comm->all_gather(out, torch::full({2, 3}, double(r), dtype));
    for (int s = 0; s < w; ++s) {
      EXPECT_TRUE(torch::equal(out.slice(0, 2 * s, 2 * s + 2), torch::full({2, 3}, double(s), dtype))) << "source " << s;
    }
    auto b = torch::full({4}, double(r + 10), dtype);
    comm->broadcast(b, w - 1);
    EXPECT_TRUE(torch::equal(b, torch::full({4}, double(w - 1 + 10), dtype)));
  }
  comm->barrier();
}

// Choosing a GPU asks for the node-local rank; a single-process run inside an MPI job (resharding
// through a one-process continuation, say) asks on one rank alone. Only the first call, made by
// every rank, may be a collective: before the cache, rank 0 waited in MPI_Comm_split_type for ranks
// that sat in the barrier below, until its timeout stopped the job (seen on the H200).
TEST(Communicator, NodeLocalRankAskedByOneRankAloneAfterTheFirstCall) {
  auto comm = world();
  const int local = node_local_rank(), local_size = node_local_size();  // every rank
  EXPECT_GE(local, 0);
  EXPECT_LT(local, local_size);
  EXPECT_LE(local_size, comm->size());
  if (comm->rank() == 0) {
    EXPECT_EQ(node_local_rank(), local);
    EXPECT_EQ(node_local_size(), local_size);
  }
  comm->barrier();
}

TEST(Communicator, SplitFormsGroupsByColorOrderedByKey) {
  auto comm = world();
  const int w = comm->size(), r = comm->rank();
  auto sub = comm->split(r % 2, -r);  // keys reverse the order inside each group
  const int members = (w - r % 2 + 1) / 2;
  EXPECT_EQ(sub->size(), members);
  EXPECT_EQ(sub->rank(), members - 1 - r / 2);
  auto t = torch::tensor({double(r)});
  sub->all_reduce(t, ReduceOp::kSum);
  double expected = 0;
  for (int q = r % 2; q < w; q += 2) expected += q;
  EXPECT_EQ(t.item<double>(), expected);
}

TEST(Communicator, BadSplitsAreRefusedWithValuesOnEveryRank) {
  auto comm = world();
  const int w = comm->size();
  auto out = torch::zeros({w, 2});
  try {
    comm->all_to_all(out, torch::zeros({w + 1, 2}), std::vector<int64_t>(w, 1), std::vector<int64_t>(w, 1));
    ADD_FAILURE() << "accepted in_splits that do not cover the input";
  } catch (const moe::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("in_splits sum " + std::to_string(w) + " != input rows " +
                                         std::to_string(w + 1)), std::string::npos) << e.what();
  }
  EXPECT_THROW(comm->all_to_all(out, torch::zeros({w, 2}), {1}, {1, 2, 3, 4, 5}), moe::InvalidArgument);
}

TEST(Communicator, SingleProcessGroupIsIdentity) {
  auto single = make_single_communicator();
  EXPECT_EQ(single->size(), 1);
  auto t = torch::arange(4.0);
  single->all_reduce(t, ReduceOp::kAverage);
  EXPECT_TRUE(torch::equal(t, torch::arange(4.0)));
  auto out = torch::zeros({3, 2});
  single->all_to_all(out, torch::ones({3, 2}), {3}, {3});
  EXPECT_TRUE(torch::equal(out, torch::ones({3, 2})));
}
