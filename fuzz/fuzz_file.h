// The fuzz input as a file, for readers that open paths: one per process, rewritten per input.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace moe::fuzz {

struct InputFile {
  std::string path;
  InputFile() {
    const char* dir = std::getenv("TMPDIR");
    path = std::string(dir ? dir : "/tmp") + "/moe_fuzz_input_" + std::to_string(::getpid());
  }
  ~InputFile() { ::unlink(path.c_str()); }
};

inline std::string write_input(const uint8_t* data, size_t size) {
  static const InputFile file;
  const auto& path = file.path;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) __builtin_trap();
  for (size_t done = 0; done < size;) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) __builtin_trap();
    done += size_t(n);
  }
  ::close(fd);
  return path;
}

}  // namespace moe::fuzz
