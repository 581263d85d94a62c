// A collective that one rank never joins: every rank must stop with a message naming the
// operation and the timeout, instead of hanging. Run by ctest through expect_failure.sh.
#include <chrono>
#include <thread>

#include "parallel/mpi_communicator.h"

int main() {
  moe::parallel::ensure_mpi_initialized();
  moe::parallel::MpiCommunicator comm(MPI_COMM_WORLD, /*timeout_s=*/2.0);
  if (comm.rank() != 0) comm.barrier();  // rank 0 "forgets" the barrier
  std::this_thread::sleep_for(std::chrono::seconds(30));
  moe::parallel::finalize_mpi();
  return 0;
}
