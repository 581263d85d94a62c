// Log lines carry the rank and an area tag: "[rank 0/2] [moe] ...".
#pragma once
#include <string>

namespace moe {

/// Sets the rank prefix of every later log line (single process: 0/1).
void set_log_rank(int rank, int world_size);

/// Writes "[rank r/W] [tag] message" to stderr, on every rank.
void log(const std::string& tag, const std::string& message);

/// Like log(), on rank 0 only: progress lines.
void log_rank0(const std::string& tag, const std::string& message);

}  // namespace moe
