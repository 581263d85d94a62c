// A fresh temporary directory for a test, removed with everything in it at the end of scope.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>

#include "common/remove_tree.h"

namespace moe::test {

class TempDir {
 public:
  explicit TempDir(const std::string& name = "moe_test") {
    std::string pattern = (std::filesystem::temp_directory_path() / (name + "_XXXXXX")).string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    try {
      remove_tree(path_);
    } catch (const std::exception&) {  // a test's leftovers must not fail it
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

}  // namespace moe::test
