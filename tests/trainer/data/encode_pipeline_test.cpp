// moe-prepare's engine: documents come out in input order whatever the workers, the queues bound
// what is in flight, an error in any stage stops the others and reaches the caller; the corpus splits
// into ranges (for ranks) and resumes at document ends, each document read exactly once.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "common/check.h"
#include "tests/support.h"
#include "tests/trainer/data/synthetic_corpus.h"
#include "tests/trainer/temp_dir.h"
#include "trainer/data/corpus_reader.h"
#include "trainer/data/encode_pipeline.h"

using namespace moe;
using namespace moe::trainer;

namespace {

// "Encodes" a document as its length and its first bytes, after a random pause: workers finish out
// of order.
class PausingEncoder final : public BatchEncoder {
 public:
  explicit PausingEncoder(int seed, std::function<void()> on_batch = nullptr)
      : rng_(seed), on_batch_(std::move(on_batch)) {}
  std::vector<std::vector<int>> encode_batch(const std::vector<std::string>& docs) override {
    std::this_thread::sleep_for(std::chrono::microseconds(rng_() % 2000));
    if (on_batch_) on_batch_();
    std::vector<std::vector<int>> ids;
    for (const auto& d : docs) ids.push_back(fingerprint(d));
    return ids;
  }
  static std::vector<int> fingerprint(const std::string& d) {
    return {int(d.size()), d.empty() ? 0 : d[0], int(d[d.size() / 2])};
  }

 private:
  std::mt19937 rng_;
  std::function<void()> on_batch_;
};

// Three files: JSONL, plain text with '%' lines, JSONL.
std::vector<std::string> three_files(const test::TempDir& dir) {
  const auto docs = test::synthetic_documents(600);
  test::write_jsonl(dir / "a.jsonl", {docs.begin(), docs.begin() + 250});
  {
    std::ofstream txt(dir / "b.txt");
    for (int i = 250; i < 400; ++i) txt << docs[size_t(i)] << "\n%\n";
  }
  test::write_jsonl(dir / "c.jsonl", {docs.begin() + 400, docs.end()});
  return {dir / "a.jsonl", dir / "b.txt", dir / "c.jsonl"};
}

CorpusOptions percent_separated() {
  CorpusOptions o;
  o.separator = "%";
  return o;
}

std::vector<std::string> read_range(const std::vector<std::string>& files, const CorpusRange& range) {
  std::vector<std::string> docs;
  CorpusStats stats;
  read_corpus_range(files, percent_separated(), range, stats,
                    [&](std::string& text, const CorpusPosition&) { docs.push_back(text); });
  return docs;
}

}  // namespace

TEST(EncodePipeline, DocumentsComeOutInInputOrderWhateverTheWorkers) {
  test::TempDir dir;
  const auto files = three_files(dir);
  std::vector<std::string> docs;
  read_corpus(files, percent_separated(), [&](const std::string& d) { docs.push_back(d); });
  for (const int workers : {1, 3, 8}) {
    PipelineOptions o;
    o.workers = workers;
    o.batch_bytes = 700;  // a few documents per batch: many batches
    std::vector<std::vector<int>> got;
    CorpusPosition last_end;
    const auto result = run_encode_pipeline(
        files, percent_separated(), {}, {}, o, [](int w) { return std::make_unique<PausingEncoder>(w); },
        [&](EncodedBatch& b) {
          ASSERT_EQ(b.ids.size(), b.ends.size());
          for (size_t i = 0; i < b.ids.size(); ++i) {
            EXPECT_TRUE(last_end < b.ends[i].at) << "document ends must advance";
            last_end = b.ends[i].at;
            EXPECT_EQ(b.ends[i].read.documents, got.size() + 1);
            got.push_back(b.ids[i]);
          }
        });
    ASSERT_EQ(got.size(), docs.size()) << workers << " workers";
    for (size_t i = 0; i < docs.size(); ++i) ASSERT_EQ(got[i], PausingEncoder::fingerprint(docs[i])) << "document " << i;
    ASSERT_EQ(result.workers.size(), size_t(workers));
    uint64_t encoded = 0, busy = 0;
    for (const auto& w : result.workers) encoded += w.documents, busy += w.batches > 0;
    EXPECT_EQ(encoded, docs.size());
    EXPECT_EQ(result.read.documents, docs.size());
    if (workers > 1) EXPECT_GT(busy, 1u) << "the batches must spread over the workers";
  }
}

TEST(EncodePipeline, TheQueuesBoundWhatIsInFlight) {
  test::TempDir dir;
  test::write_jsonl(dir / "big.jsonl", test::synthetic_documents(4000));
  PipelineOptions o;
  o.workers = 3;
  o.batch_bytes = 256;
  o.in_flight_per_worker = 2;
  std::atomic<int64_t> encoded{0};
  int64_t consumed = 0, most_ahead = 0;
  run_encode_pipeline({dir / "big.jsonl"}, {}, {}, {}, o,
                      [&](int w) { return std::make_unique<PausingEncoder>(w, [&] { ++encoded; }); },
                      [&](EncodedBatch&) {
                        most_ahead = std::max(most_ahead, encoded.load() - consumed);
                        std::this_thread::sleep_for(std::chrono::microseconds(2000));  // a slow disk
                        ++consumed;
                      });
  EXPECT_GT(consumed, 500);
  // The encoders never run further ahead of the writer than the batches allowed in flight.
  EXPECT_LE(most_ahead, o.workers * o.in_flight_per_worker + 2);
  EXPECT_GE(most_ahead, 2) << "the encoders should work ahead of a slow writer";
}

TEST(EncodePipeline, AnErrorInAnyStageReachesTheCallerAndStopsTheOthers) {
  test::TempDir dir;
  const auto files = three_files(dir);
  PipelineOptions o;
  o.workers = 3;
  o.batch_bytes = 500;
  class Failing final : public BatchEncoder {
   public:
    std::vector<std::vector<int>> encode_batch(const std::vector<std::string>&) override {
      MOE_CHECK(false, "the tokenizer helper died");
      return {};
    }
  };
  test::expect_refusal([&] {
    run_encode_pipeline(files, percent_separated(), {}, {}, o, [](int) { return std::make_unique<Failing>(); },
                        [](EncodedBatch&) {});
  }, {"the tokenizer helper died"});
  int batches = 0;
  test::expect_refusal([&] {
    run_encode_pipeline(files, percent_separated(), {}, {}, o, [](int w) { return std::make_unique<PausingEncoder>(w); },
                        [&](EncodedBatch&) { MOE_CHECK(++batches < 5, "no space left on device"); });
  }, {"no space left on device"});
  EXPECT_EQ(batches, 5);
  {
    std::ofstream bad(dir / "c.jsonl", std::ios::app);
    bad << "{\"text\": oops}\n";
  }
  test::expect_refusal([&] {
    run_encode_pipeline(files, percent_separated(), {}, {}, o, [](int w) { return std::make_unique<PausingEncoder>(w); },
                        [](EncodedBatch&) {});
  }, {dir / "c.jsonl:201:", "malformed JSONL line"});
}

TEST(CorpusRanges, SplitsReadEveryDocumentOnceInOrder) {
  test::TempDir dir;
  const auto files = three_files(dir);
  const auto whole = read_range(files, {});
  ASSERT_EQ(whole.size(), 600u);
  for (const int parts : {1, 2, 3, 5, 8, 40}) {
    std::vector<std::string> joined;
    const auto ranges = split_corpus(files, parts);
    ASSERT_EQ(ranges.size(), size_t(parts));
    for (size_t r = 0; r < ranges.size(); ++r) {
      if (r > 0) EXPECT_TRUE(ranges[r].begin == ranges[r - 1].end);
      const auto docs = read_range(files, ranges[r]);
      joined.insert(joined.end(), docs.begin(), docs.end());
    }
    EXPECT_EQ(joined, whole) << parts << " parts";
  }
  // A range that starts in the middle of a JSONL file starts at a line.
  const auto halves = split_corpus({dir / "a.jsonl"}, 2);
  EXPECT_GT(halves[1].begin.offset, 0u);
  EXPECT_EQ(read_range({dir / "a.jsonl"}, halves[0]).size() + read_range({dir / "a.jsonl"}, halves[1]).size(), 250u);
}

TEST(CorpusRanges, ReadingResumesAtADocumentsEndWithItsCounts) {
  test::TempDir dir;
  const auto files = three_files(dir);
  std::vector<std::pair<CorpusPosition, CorpusStats>> ends;
  CorpusStats stats;
  read_corpus_range(files, percent_separated(), {}, stats,
                    [&](std::string&, const CorpusPosition& end) { ends.push_back({end, stats}); });
  for (const size_t k : {size_t(0), size_t(249), size_t(250), size_t(333), size_t(399), size_t(598)}) {
    CorpusStats resumed = ends[k].second;
    uint64_t rest = 0;
    read_corpus_range(files, percent_separated(), {ends[k].first}, resumed,
                      [&](std::string&, const CorpusPosition&) { ++rest; });
    EXPECT_EQ(rest, 600 - k - 1) << "after document " << k;
    EXPECT_EQ(resumed.documents, stats.documents);
    EXPECT_EQ(resumed.bytes, stats.bytes) << "after document " << k;
  }
}

TEST(CorpusRanges, AnErrorInARangeNamesTheLineOfTheFile) {
  test::TempDir dir;
  const auto docs = test::synthetic_documents(100);
  test::write_jsonl(dir / "a.jsonl", docs);
  {
    std::ofstream bad(dir / "a.jsonl", std::ios::app);
    bad << "not json\n";
  }
  const auto ranges = split_corpus({dir / "a.jsonl"}, 2);
  CorpusStats stats;
  test::expect_refusal([&] {
    read_corpus_range({dir / "a.jsonl"}, {}, ranges[1], stats, [](std::string&, const CorpusPosition&) {});
  }, {dir / "a.jsonl:101:", "not valid JSON"});
}
