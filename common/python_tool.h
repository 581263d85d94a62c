// The project's Python helpers (tools/*.py), run by the C++ programs through tools/pytool, which
// puts the tools of `launch/setup.sh --python` on the path. The helpers are found in the source
// tree the programs were built from, or in $MOE_SOURCE_DIR.
#pragma once
#include <string>
#include <sys/types.h>
#include <vector>

#include "common/durable_file.h"

namespace moe {

/// Runs tools/<script> with args to completion (its output goes to ours); refuses a failure,
/// naming the command and its exit status.
void run_python_tool(const std::string& script, const std::vector<std::string>& args);

/// A helper that answers one line on stdout for each line written to its stdin (or binary
/// messages, which the helper defines).
class PythonCoprocess {
 public:
  PythonCoprocess(const std::string& script, const std::vector<std::string>& args);
  ~PythonCoprocess();
  PythonCoprocess(const PythonCoprocess&) = delete;
  PythonCoprocess& operator=(const PythonCoprocess&) = delete;

  /// Writes `line` (without '\n') and returns the answer line; refuses a helper that has exited.
  std::string request(const std::string& line);
  /// The next line the helper writes (its greeting).
  std::string read_line();
  /// Binary requests and answers (after the greeting line).
  void write_all(const void* data, size_t bytes);
  void read_exact(void* data, size_t bytes);

 private:
  std::string what_;
  pid_t pid_ = -1;
  UniqueFd to_child_, from_child_;
  std::string buffer_;
};

}  // namespace moe
