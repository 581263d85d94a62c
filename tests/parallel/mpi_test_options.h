// Options that ctest passes to multi-rank tests (see cmake/MoeTest.cmake).
#pragma once

namespace moe::test {
/// --ep_size=N, or 0 when not given (tests then use the world size).
int mpi_test_ep_size();
/// --device=cuda|cpu (default cpu): where tests that support it put the model under test.
const char* mpi_test_device();
}  // namespace moe::test
