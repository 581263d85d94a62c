#include "trainer/data/data_loader.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>

#include "common/check.h"

namespace fs = std::filesystem;

namespace moe::trainer {

TokenDataset::TokenDataset(const std::string& dir, const std::string& split) {
  MOE_CHECK(fs::is_directory(dir), "data directory '", dir, "' not found (create it with moe-prepare)");
  const auto paths = list_shards(dir, split);
  MOE_CHECK(!paths.empty(), "no '", split, "-*.bin' token shards in '", dir, "' (create them with moe-prepare)");
  for (const auto& p : paths) {
    shards_.emplace_back(p);
    const auto& h = shards_.back().header();
    const auto& first = shards_.front().header();
    MOE_CHECK(h.vocab_size == first.vocab_size && h.eos_id == first.eos_id, "shard '", p, "' (vocabulary ",
              h.vocab_size, ", EOS ", h.eos_id, ") does not match '", paths.front(), "' (vocabulary ",
              first.vocab_size, ", EOS ", first.eos_id, ")");
    starts_.push_back(total_);
    total_ += h.count;
  }
}

void TokenDataset::read(uint64_t first, uint64_t n, int64_t* out) const {
  MOE_CHECK(first + n <= total_, "read past the end of the data: tokens [", first, ", ", first + n, ") of ", total_);
  auto s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), first) - starts_.begin() - 1);
  while (n > 0) {
    const uint64_t offset = first - starts_[s];
    const uint64_t take = std::min<uint64_t>(n, shards_[s].size() - offset);
    shards_[s].read(offset, take, out);
    out += take;
    first += take;
    n -= take;
    ++s;
  }
}

namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<uint64_t> epoch_permutation(uint64_t n, uint64_t seed, uint64_t epoch) {
  std::vector<uint64_t> order(n);
  for (uint64_t i = 0; i < n; ++i) order[i] = i;
  uint64_t state = seed * 0x2545F4914F6CDD1DULL + epoch;
  for (uint64_t i = n; i > 1; --i) std::swap(order[i - 1], order[splitmix64(state) % i]);
  return order;
}

PackedLoader::PackedLoader(std::shared_ptr<const TokenDataset> data, int64_t seq_len, uint64_t seed, int rank,
                           int world, bool shuffle)
    : data_(std::move(data)), seq_len_(seq_len), seed_(seed), rank_(rank), world_(world), shuffle_(shuffle) {
  MOE_CHECK(seq_len_ > 0, "--data.seq_len must be positive, got ", seq_len_);
  windows_ = data_->tokens() > 0 ? (data_->tokens() - 1) / uint64_t(seq_len_) : 0;
}

uint64_t PackedLoader::window_at(uint64_t i) {
  if (!shuffle_) return i;
  if (order_epoch_ != position_.epoch) {
    order_ = epoch_permutation(windows_, seed_, position_.epoch);
    order_epoch_ = position_.epoch;
  }
  return order_[i];
}

TokenBatch PackedLoader::next(int64_t batch) {
  const uint64_t global = uint64_t(batch) * uint64_t(world_);
  MOE_CHECK(windows_ >= global, "the data has ", windows_, " windows of ", seq_len_ + 1,
            " tokens, fewer than one global micro-batch of ", global, " (batch ", batch, " x ", world_,
            " ranks): use more data, a smaller --train.micro_batch or a smaller --data.seq_len");
  if (position_.window + global > windows_) position_ = {position_.epoch + 1, 0};
  auto windows = torch::empty({batch, seq_len_ + 1}, torch::kInt64);
  auto* out = windows.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const uint64_t w = window_at(position_.window + uint64_t(rank_) * batch + b);
    data_->read(w * uint64_t(seq_len_), uint64_t(seq_len_) + 1, out + b * (seq_len_ + 1));
  }
  position_.window += global;
  return {windows.narrow(1, 0, seq_len_), windows.narrow(1, 1, seq_len_)};
}

void PackedLoader::seek(LoaderPosition position) {
  MOE_CHECK(position.window <= windows_, "loader position ", position.window, " is past the ", windows_,
            " windows of an epoch");
  position_ = position;
}

}  // namespace moe::trainer
