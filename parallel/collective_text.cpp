#include "parallel/collective_text.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>

#include "common/check.h"

namespace moe::parallel {

namespace {

torch::Device device_for(const Communicator& comm) {
  return comm.backend() == "nccl" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
}

}  // namespace

std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& text) {
  const auto device = device_for(comm);
  const int n = comm.size();
  auto length = torch::full({1}, int64_t(text.size()), torch::kInt64).to(device);
  auto lengths = torch::empty({n}, length.options());
  comm.all_gather(lengths, length);
  const auto host_lengths = lengths.cpu();
  const auto* len = host_lengths.data_ptr<int64_t>();
  const int64_t longest = *std::max_element(len, len + n);
  const int64_t words = (longest + 7) / 8;  // bytes packed into int64 words
  auto mine = torch::zeros({std::max<int64_t>(words, 1)}, torch::kInt64);
  std::memcpy(mine.data_ptr(), text.data(), text.size());
  auto all = torch::empty({n * mine.size(0)}, torch::TensorOptions(torch::kInt64).device(device));
  auto mine_on_device = mine.to(device);
  comm.all_gather(all, mine_on_device);
  const auto host = all.cpu();
  std::vector<std::string> texts(n);
  for (int r = 0; r < n; ++r) {
    const auto* bytes = reinterpret_cast<const char*>(host.data_ptr<int64_t>() + r * mine.size(0));
    texts[r].assign(bytes, size_t(len[r]));
  }
  return texts;
}

void agree_or_throw(Communicator& comm, const std::string& error, const std::string& context) {
  const auto device = device_for(comm);
  auto failed = torch::full({1}, error.empty() ? 0.0f : 1.0f, torch::kFloat32).to(device);
  comm.all_reduce(failed, ReduceOp::kSum);
  if (failed.item<float>() == 0) return;
  const auto errors = all_gather_strings(comm, error);
  for (size_t r = 0; r < errors.size(); ++r) {
    if (!errors[r].empty()) {
      throw CollectiveError(detail::concat(context, ": rank ", r, " of ", errors.size(), ": ", errors[r]));
    }
  }
}

}  // namespace moe::parallel
