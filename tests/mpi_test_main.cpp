// main() for multi-rank tests: MPI up, only rank 0 prints, every rank agrees on pass/fail.
// Options after gtest's: --ep_size=N, --device=cuda, --shard_state (read by tests through mpi_test_options.h).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

#include "common/log.h"
#include "parallel/mpi_communicator.h"
#include "tests/parallel/mpi_test_options.h"

namespace moe::test {
namespace {
int g_ep_size = 0;
std::string g_device = "cpu";
bool g_shard_state = false;

// On ranks other than 0: each failed assertion, prefixed with the rank.
struct RankFailurePrinter : ::testing::EmptyTestEventListener {
  int rank;
  explicit RankFailurePrinter(int r) : rank(r) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
    }
  }
};
}  // namespace
int mpi_test_ep_size() { return g_ep_size; }
const char* mpi_test_device() { return g_device.c_str(); }
bool mpi_test_shard_state() { return g_shard_state; }
}  // namespace moe::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--ep_size=", 0) == 0) moe::test::g_ep_size = std::stoi(arg.substr(10));
    if (arg.rfind("--device=", 0) == 0) moe::test::g_device = arg.substr(9);
    if (arg == "--shard_state") moe::test::g_shard_state = true;
  }
  moe::parallel::ensure_mpi_initialized();
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  moe::set_log_rank(rank, size);
  if (rank != 0) {
    // Other ranks report failures only (their own listener prints them with the rank).
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new moe::test::RankFailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any_failed = 0;
  if (failed) std::fprintf(stderr, "[rank %d/%d] some tests FAILED on this rank\n", rank, size);
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  moe::parallel::finalize_mpi();
  return any_failed;
}
