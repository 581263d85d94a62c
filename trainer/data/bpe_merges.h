// The merge step of a BPE model, over token ids: the ranked merge table of a tokenizer.json and the
// order in which the `tokenizers` library applies it to one word (its Word::merge_all): always the
// lowest-ranked pair present, the leftmost of equal ones, until no pair of neighbours has a merge.
#pragma once
#include <cstdint>
#include <vector>

namespace moe::trainer {

class BpeMerges {
 public:
  struct Merge {
    int32_t rank = -1;
    int32_t merged = -1;  // the id of left + right
  };

  /// Records that left followed by right merges into `merged` at `rank`. A pair listed twice keeps
  /// its last entry, as the library's merge map does.
  void add(int32_t left, int32_t right, int32_t rank, int32_t merged);
  /// The merge of left followed by right, or nullptr.
  const Merge* find(int32_t left, int32_t right) const;
  size_t size() const { return count_; }

 private:
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t key_of(int32_t left, int32_t right) { return uint64_t(uint32_t(left)) << 32 | uint32_t(right); }
  size_t slot_of(uint64_t key) const;
  void grow();

  std::vector<Slot> slots_;  // open addressing, linear probing, at most half full
  size_t count_ = 0;
};

/// Merges the symbols of one word in place: `ids` holds the initial symbols (one per byte) and
/// returns holding the word's tokens. `scratch` is reused between calls.
struct BpeScratch;
void merge_word(const BpeMerges& merges, std::vector<int32_t>& ids, BpeScratch& scratch);

struct BpeScratch {
  struct Symbol {
    int32_t id, prev, next;
    bool removed;
  };
  struct Candidate {
    int32_t rank, pos, merged;
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
};

}  // namespace moe::trainer
