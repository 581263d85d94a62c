// The words a BPE encoder has merged, and their tokens: one flat table with two arenas, so that a
// lookup is a hash, a probe and a compare, without an allocation. When full it starts afresh
// (cheaper than tracking recency, and common words come back within a batch).
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace moe::trainer {

class WordCache {
 public:
  /// The cached tokens of a word, or false.
  bool find(std::string_view word, std::vector<int>& out) const {
    const Slot& slot = slots_[probe(word, hash(word))];
    if (slot.ids_length == 0) return false;
    out.insert(out.end(), ids_.begin() + slot.ids_offset, ids_.begin() + slot.ids_offset + slot.ids_length);
    return true;
  }

  void insert(std::string_view word, const std::vector<int32_t>& ids) {
    if (ids.empty() || word.size() > kLongestWord) return;
    if (count_ * 2 >= slots_.size()) clear();
    const uint64_t h = hash(word);
    Slot& slot = slots_[probe(word, h)];
    if (slot.ids_length != 0) return;
    slot = {h, uint32_t(keys_.size()), uint32_t(word.size()), uint32_t(ids_.size()), uint32_t(ids.size())};
    keys_.append(word.data(), word.size());
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    ++count_;
  }

 private:
  static constexpr size_t kSlots = size_t(1) << 18, kLongestWord = 255;
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0, key_length = 0, ids_offset = 0, ids_length = 0;  // ids_length 0: empty
  };

  static uint64_t hash(std::string_view word) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ word.size();
    size_t i = 0;
    for (; i + 8 <= word.size(); i += 8) {
      uint64_t chunk;
      std::memcpy(&chunk, word.data() + i, 8);
      h = (h ^ chunk) * 0xFF51AFD7ED558CCDull;
      h ^= h >> 32;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, word.data() + i, word.size() - i);
    h = (h ^ tail) * 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 29);
  }

  size_t probe(std::string_view word, uint64_t h) const {
    const size_t mask = slots_.size() - 1;
    for (size_t i = size_t(h) & mask;; i = (i + 1) & mask) {
      const Slot& s = slots_[i];
      if (s.ids_length == 0 ||
          (s.hash == h && s.key_length == word.size() && std::memcmp(keys_.data() + s.key_offset, word.data(), word.size()) == 0))
        return i;
    }
  }

  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    count_ = 0;
  }

  std::vector<Slot> slots_ = std::vector<Slot>(kSlots);
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t count_ = 0;
};

}  // namespace moe::trainer
