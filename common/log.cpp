#include "common/log.h"

#include <cstdio>
#include <mutex>

namespace moe {
namespace {
int g_rank = 0;
int g_world = 1;
std::mutex g_mutex;
}  // namespace

void set_log_rank(int rank, int world_size) {
  g_rank = rank;
  g_world = world_size;
}

void log(const std::string& tag, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "[rank %d/%d] [%s] %s\n", g_rank, g_world, tag.c_str(), message.c_str());
  std::fflush(stderr);
}

void log_rank0(const std::string& tag, const std::string& message) {
  if (g_rank == 0) log(tag, message);
}

}  // namespace moe
