#include "trainer/data/bpe_merges.h"

#include <algorithm>

namespace moe::trainer {

size_t BpeMerges::slot_of(uint64_t key) const {
  uint64_t h = key * 0x9E3779B97F4A7C15ull;  // Fibonacci hashing spreads consecutive ids
  const size_t mask = slots_.size() - 1;
  size_t i = size_t(h >> 17) & mask;
  while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask;
  return i;
}

void BpeMerges::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(std::max<size_t>(64, old.size() * 2), Slot{});
  for (const Slot& s : old)
    if (s.key != kEmpty) slots_[slot_of(s.key)] = s;
}

void BpeMerges::add(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  if ((count_ + 1) * 2 > slots_.size()) grow();
  const uint64_t key = key_of(left, right);
  Slot& slot = slots_[slot_of(key)];
  if (slot.key == kEmpty) ++count_;
  slot = Slot{key, Merge{rank, merged}};
}

const BpeMerges::Merge* BpeMerges::find(int32_t left, int32_t right) const {
  if (slots_.empty()) return nullptr;
  const Slot& slot = slots_[slot_of(key_of(left, right))];
  return slot.key == kEmpty ? nullptr : &slot.merge;
}

namespace {

// A min-heap on (rank, position): std::push_heap keeps the largest first, so "less" is reversed.
bool later(const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) {
  return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
}

void push_candidate(const BpeMerges& merges, BpeScratch& s, int32_t pos) {
  const auto& left = s.symbols[size_t(pos)];
  if (left.next < 0) return;
  if (const auto* m = merges.find(left.id, s.symbols[size_t(left.next)].id)) {
    s.heap.push_back({m->rank, pos, m->merged});
    std::push_heap(s.heap.begin(), s.heap.end(), later);
  }
}

}  // namespace

void merge_word(const BpeMerges& merges, std::vector<int32_t>& ids, BpeScratch& s) {
  if (ids.size() < 2) return;
  const int32_t n = int32_t(ids.size());
  s.symbols.resize(ids.size());
  for (int32_t i = 0; i < n; ++i) s.symbols[size_t(i)] = {ids[size_t(i)], i - 1, i + 1 < n ? i + 1 : -1, false};
  s.heap.clear();
  for (int32_t i = 0; i + 1 < n; ++i) push_candidate(merges, s, i);

  while (!s.heap.empty()) {
    std::pop_heap(s.heap.begin(), s.heap.end(), later);
    const auto top = s.heap.back();
    s.heap.pop_back();
    auto& left = s.symbols[size_t(top.pos)];
    if (left.removed || left.next < 0) continue;
    auto& right = s.symbols[size_t(left.next)];
    // A stale candidate: one of its symbols has merged since it was queued.
    const auto* now = merges.find(left.id, right.id);
    if (now == nullptr || now->merged != top.merged) continue;
    left.id = top.merged;
    right.removed = true;
    left.next = right.next;
    if (right.next >= 0) s.symbols[size_t(right.next)].prev = top.pos;
    if (left.prev >= 0) push_candidate(merges, s, left.prev);
    push_candidate(merges, s, top.pos);
  }
  ids.clear();
  for (int32_t i = 0; i >= 0; i = s.symbols[size_t(i)].next) ids.push_back(s.symbols[size_t(i)].id);
}

}  // namespace moe::trainer
