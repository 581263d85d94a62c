// Removes a directory tree (or a file); a missing path is not an error. POSIX nftw() rather than
// std::filesystem::remove_all: the torch wheel's libtorch.so exports its own copy of remove_all,
// which binaries on the GPU machine bound to and which crashed (a null call) on non-empty trees.
#pragma once
#include <string>

namespace moe {

/// Throws std::runtime_error naming the path when something exists and cannot be removed.
void remove_tree(const std::string& path);

}  // namespace moe
