#include "parallel/dist_check.h"

#include <mpi.h>
#include <unistd.h>

#include <sstream>

namespace moe::parallel {

int world_rank_for_messages() {
  int initialized = 0, finalized = 0, rank = -1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

void throw_call_error(const char* library, const char* call, const char* file, int line, const std::string& reason) {
  char host[256] = "?";
  gethostname(host, sizeof host);
  std::ostringstream os;
  os << library << " call failed on rank " << world_rank_for_messages() << " (" << host << "): " << call << " at "
     << file << ":" << line << ": " << reason;
  throw DistributedError(os.str());
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, len);
}

}  // namespace moe::parallel
