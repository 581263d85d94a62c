// Checked MPI / NCCL / CUDA calls: a failure throws moe::parallel::DistributedError naming the
// call, the place, the rank and the library's reason. main() turns it into an abort of all ranks.
#pragma once
#include <stdexcept>
#include <string>

namespace moe::parallel {

class DistributedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// World rank of this process for messages (-1 before MPI is initialised).
int world_rank_for_messages();

[[noreturn]] void throw_call_error(const char* library, const char* call, const char* file, int line,
                                   const std::string& reason);
std::string mpi_error_string(int code);

}  // namespace moe::parallel

#define MPI_CHECK(call)                                                                              \
  do {                                                                                               \
    const int moe_mpi_rc_ = (call);                                                                  \
    if (moe_mpi_rc_ != MPI_SUCCESS)                                                                  \
      ::moe::parallel::throw_call_error("MPI", #call, __FILE__, __LINE__,                            \
                                        ::moe::parallel::mpi_error_string(moe_mpi_rc_));             \
  } while (0)

#define NCCL_CHECK(call)                                                                             \
  do {                                                                                               \
    const ncclResult_t moe_nccl_rc_ = (call);                                                        \
    if (moe_nccl_rc_ != ncclSuccess)                                                                 \
      ::moe::parallel::throw_call_error("NCCL", #call, __FILE__, __LINE__,                           \
                                        std::string(ncclGetErrorString(moe_nccl_rc_)) + " (" +       \
                                            ncclGetLastError(nullptr) + ")");                        \
  } while (0)

#define CUDA_CHECK(call)                                                                             \
  do {                                                                                               \
    const cudaError_t moe_cuda_rc_ = (call);                                                         \
    if (moe_cuda_rc_ != cudaSuccess)                                                                 \
      ::moe::parallel::throw_call_error("CUDA", #call, __FILE__, __LINE__,                           \
                                        cudaGetErrorString(moe_cuda_rc_));                           \
  } while (0)
