// Options that ctest passes to multi-rank tests (see cmake/MoeTest.cmake).
#pragma once

namespace moe::test {
/// --ep_size=N, or 0 when not given (tests then use the world size).
int mpi_test_ep_size();
/// --device=cuda|cpu (default cpu): where tests that support it put the model under test.
const char* mpi_test_device();
/// --shard_state: tests that train run with the distributed optimiser (optim.shard_state).
bool mpi_test_shard_state();
}  // namespace moe::test
