// Deterministic English-like documents for data-pipeline tests (no corpus is committed).
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace moe::test {

/// `count` documents of a few sentences drawn from a small vocabulary by a fixed generator.
inline std::vector<std::string> synthetic_documents(int count, uint64_t seed = 1) {
  static const char* words[] = {"the",   "expert", "router", "sends",  "tokens", "to",    "every", "rank",
                                "model", "learns", "from",  "data",   "and",    "a",     "small", "mixture",
                                "of",    "experts", "with", "shared", "layers", "train", "fast",  "on", "GPUs"};
  uint64_t state = seed;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state >> 33);
  };
  std::vector<std::string> docs;
  for (int d = 0; d < count; ++d) {
    std::string text;
    const int sentences = 1 + next() % 4;
    for (int s = 0; s < sentences; ++s) {
      const int n = 3 + next() % 8;
      for (int w = 0; w < n; ++w) {
        std::string word = words[next() % (sizeof(words) / sizeof(*words))];
        if (w == 0) word[0] = static_cast<char>(std::toupper(word[0]));
        text += word + (w + 1 < n ? " " : ". ");
      }
      if (next() % 3 == 0) text += "\n";
    }
    docs.push_back(text + "Number " + std::to_string(d) + ".");
  }
  return docs;
}

/// Writes docs as MiniMind JSONL ({"text": ...} per line; newlines escaped).
inline void write_jsonl(const std::string& path, const std::vector<std::string>& docs) {
  std::ofstream out(path);
  for (const auto& d : docs) {
    std::string escaped;
    for (char c : d) escaped += c == '\n' ? std::string("\\n") : c == '"' ? std::string("\\\"") : std::string(1, c);
    out << "{\"text\": \"" << escaped << "\"}\n";
  }
}

}  // namespace moe::test
