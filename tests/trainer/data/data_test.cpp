// The data pipeline: shard format (round trip, refusal of foreign or truncated files), moe-prepare
// (JSONL and text, the held-out split, determinism, the promised errors) and the packed loader
// (windows, ranks reading distinct data, exact resume, epochs).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/check.h"
#include "tests/support.h"
#include "tests/trainer/data/synthetic_corpus.h"
#include "tests/trainer/temp_dir.h"
#include "trainer/data/corpus_reader.h"
#include "trainer/data/data_loader.h"
#include "trainer/data/prepare.h"
#include "trainer/data/token_shard.h"
#include "trainer/data/tokenizer.h"

using namespace moe;
using namespace moe::trainer;
namespace fs = std::filesystem;

namespace {

std::vector<int64_t> read_all(const TokenShard& shard) {
  std::vector<int64_t> out(shard.size());
  shard.read(0, shard.size(), out.data());
  return out;
}

void write_shard(const std::string& path, const std::vector<std::vector<int>>& docs, uint32_t vocab) {
  TokenShardWriter w(path, vocab, 2);
  for (const auto& d : docs) w.append_document(d);
  w.close();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

PrepareOptions prepare_options(const std::vector<std::string>& inputs, const std::string& out) {
  PrepareOptions o;
  o.inputs = inputs;
  o.out_dir = out;
  o.vocab_size = 400;
  o.val_fraction = 0.1;
  o.progress = false;
  o.threads = 1;
  return o;
}

}  // namespace

TEST(TokenShard, RoundTripWithEosAfterEachDocument) {
  test::TempDir dir;
  for (const uint32_t vocab : {6400u, 100000u}) {
    const auto path = dir / ("s" + std::to_string(vocab) + ".bin");
    write_shard(path, {{5, 6, 7}, {}, {int(vocab) - 1}}, vocab);
    const TokenShard shard(path);
    EXPECT_EQ(shard.header().token_bytes, vocab <= 65536 ? 2u : 4u);
    EXPECT_EQ(shard.header().vocab_size, vocab);
    EXPECT_EQ(read_all(shard), (std::vector<int64_t>{5, 6, 7, 2, 2, vocab - 1, 2}));
    EXPECT_EQ(fs::file_size(path), 32 + 7 * shard.header().token_bytes);
    EXPECT_FALSE(fs::exists(path + ".tmp"));
  }
}

TEST(TokenShard, RefusesTruncatedForeignAndMissingFiles) {
  test::TempDir dir;
  const auto good = dir / "good.bin";
  write_shard(good, {{1, 2, 3, 4, 5}}, 6400);
  auto bytes = read_bytes(good);
  std::ofstream(dir / "truncated.bin", std::ios::binary) << bytes.substr(0, bytes.size() - 3);
  test::expect_refusal([&] { TokenShard s(dir / "truncated.bin"); }, {dir / "truncated.bin", "truncated"});
  auto foreign = bytes;
  foreign[0] = 'X';
  std::ofstream(dir / "foreign.bin", std::ios::binary) << foreign;
  test::expect_refusal([&] { TokenShard s(dir / "foreign.bin"); }, {dir / "foreign.bin", "wrong magic"});
  std::ofstream(dir / "short.bin", std::ios::binary) << "MOE";
  test::expect_refusal([&] { TokenShard s(dir / "short.bin"); }, {dir / "short.bin", "header"});
  test::expect_refusal([&] { TokenShard s(dir / "missing.bin"); }, {dir / "missing.bin"});
  auto newer = bytes;
  newer[8] = 9;  // version 9
  std::ofstream(dir / "newer.bin", std::ios::binary) << newer;
  test::expect_refusal([&] { TokenShard s(dir / "newer.bin"); }, {dir / "newer.bin", "version 9"});
  // A count whose size in bytes wraps around to the real one (5 + 2^63 tokens of 2 bytes).
  auto lying = bytes;
  const uint64_t count = 5 + (uint64_t(1) << 63);
  std::memcpy(lying.data() + 16, &count, 8);
  std::ofstream(dir / "lying.bin", std::ios::binary) << lying;
  test::expect_refusal([&] { TokenShard s(dir / "lying.bin"); }, {dir / "lying.bin", "more than any file holds"});
  // Token ids and EOS are checked against the vocabulary when the shard is opened.
  auto small_vocab = bytes;
  const uint32_t vocab = 4;
  std::memcpy(small_vocab.data() + 24, &vocab, 4);
  std::ofstream(dir / "vocab.bin", std::ios::binary) << small_vocab;
  test::expect_refusal([&] { TokenShard s(dir / "vocab.bin"); },
               {dir / "vocab.bin", "token id 5 (token 4) beyond its vocabulary of 4"});
  auto bad_eos = bytes;
  const uint32_t eos = 7000;
  std::memcpy(bad_eos.data() + 28, &eos, 4);
  std::ofstream(dir / "eos.bin", std::ios::binary) << bad_eos;
  test::expect_refusal([&] { TokenShard s(dir / "eos.bin"); }, {dir / "eos.bin", "EOS id 7000 outside its vocabulary of 6400"});
}

TEST(Prepare, JsonlAndTextRoundTripThroughTheTokenizer) {
  test::TempDir dir;
  const auto docs = test::synthetic_documents(200);
  test::write_jsonl(dir / "part.jsonl", std::vector<std::string>(docs.begin(), docs.begin() + 100));
  {
    std::ofstream txt(dir / "part.txt");
    for (size_t i = 100; i < docs.size(); ++i) txt << docs[i] << "\n%\n";
  }
  auto o = prepare_options({dir / "part.jsonl", dir / "part.txt"}, dir / "out");
  o.corpus.separator = "%";
  const auto summary = prepare_corpus(o);
  EXPECT_EQ(summary.documents, 200u);
  EXPECT_EQ(summary.val_documents, 20u);  // every 10th
  EXPECT_EQ(summary.train_documents, 180u);

  // Independent re-encoding of the same documents gives the shards' streams.
  const SentencePieceTokenizer tok(dir / "out/tokenizer.model");
  std::vector<int64_t> want_train, want_val;
  for (size_t i = 0; i < docs.size(); ++i) {
    // The text file's documents keep the newline that ended their last line.
    const auto text = i < 100 ? docs[i] : docs[i] + "\n";
    EXPECT_EQ(tok.decode(tok.encode(text)), text) << "the tokenizer must give back the text";
    auto& want = i % 10 == 9 ? want_val : want_train;
    for (int id : tok.encode(text)) want.push_back(id);
    want.push_back(tok.eos_id());
  }
  const TokenDataset train(dir / "out", "train"), val(dir / "out", "val");
  std::vector<int64_t> got(train.tokens()), got_val(val.tokens());
  train.read(0, train.tokens(), got.data());
  val.read(0, val.tokens(), got_val.data());
  EXPECT_EQ(got, want_train);
  EXPECT_EQ(got_val, want_val);
  EXPECT_EQ(train.vocab_size(), uint32_t(tok.vocab_size()));
  EXPECT_EQ(train.eos_id(), 2u);
  EXPECT_EQ(summary.train_tokens, want_train.size());
}

TEST(Prepare, IsDeterministicAndShardsReadAsOneStream) {
  test::TempDir dir;
  test::write_jsonl(dir / "c.jsonl", test::synthetic_documents(150));
  auto o = prepare_options({dir / "c.jsonl"}, dir / "a");
  prepare_corpus(o);
  o.out_dir = dir / "b";
  prepare_corpus(o);
  for (const auto* f : {"train-00000.bin", "val-00000.bin"}) {
    EXPECT_TRUE(read_bytes(dir / ("a/" + std::string(f))) == read_bytes(dir / ("b/" + std::string(f)))) << f;
  }
  // The tokenizers (whose files also record their own path) split text alike.
  const SentencePieceTokenizer ta(dir / "a/tokenizer.model"), tb(dir / "b/tokenizer.model");
  EXPECT_EQ(ta.vocab_size(), tb.vocab_size());
  const auto probe = test::synthetic_documents(5, 77)[4];
  EXPECT_EQ(ta.encode(probe), tb.encode(probe));
  // Small shards: the same stream across many files.
  o.out_dir = dir / "small";
  o.tokenizer = dir / "a/tokenizer.model";
  o.shard_tokens = 100;
  const auto s = prepare_corpus(o);
  EXPECT_GT(s.train_shards, 5u);
  const TokenDataset one(dir / "a", "train"), many(dir / "small", "train");
  ASSERT_EQ(one.tokens(), many.tokens());
  std::vector<int64_t> a(one.tokens()), b(many.tokens());
  one.read(0, a.size(), a.data());
  many.read(0, b.size(), b.data());
  EXPECT_EQ(a, b);
  std::vector<int64_t> slice(250);
  many.read(77, 250, slice.data());  // crosses several shard boundaries
  EXPECT_TRUE(std::equal(slice.begin(), slice.end(), a.begin() + 77));
}

TEST(Prepare, MalformedJsonlNamesFileAndLineOrIsSkipped) {
  test::TempDir dir;
  auto docs = test::synthetic_documents(60);
  test::write_jsonl(dir / "c.jsonl", docs);
  {
    std::ofstream out(dir / "c.jsonl", std::ios::app);
    out << "{\"text\": \"unterminated\n" << "{\"title\": \"no text\"}\n" << "[1, 2]\n";
  }
  auto o = prepare_options({dir / "c.jsonl"}, dir / "out");
  test::expect_refusal([&] { prepare_corpus(o); }, {dir / "c.jsonl:61:", "malformed JSONL line", "not valid JSON"});
  o.corpus.skip_malformed = true;
  const auto s = prepare_corpus(o);
  EXPECT_EQ(s.malformed_lines, 3u);
  EXPECT_EQ(s.documents, 60u);
}

TEST(Prepare, EmptyInputAndMissingDataAreRefused) {
  test::TempDir dir;
  std::ofstream(dir / "empty.jsonl").close();
  std::ofstream(dir / "blank.txt") << "\n\n\n";
  test::expect_refusal([&] { prepare_corpus(prepare_options({dir / "empty.jsonl", dir / "blank.txt"}, dir / "o")); },
               {"no documents"});
  test::expect_refusal([&] { prepare_corpus(prepare_options({dir / "nope.jsonl"}, dir / "o")); }, {"nope.jsonl", "not found"});
  test::expect_refusal([&] { TokenDataset d(dir / "o", "train"); }, {"train-*.bin", "moe-prepare"});
}

// A failed re-run into an existing folder leaves it exactly as it was, without temporary files.
TEST(Prepare, AFailedRerunLeavesTheOldOutputsUntouched) {
  test::TempDir dir;
  std::ofstream(dir / "a.txt") << "the first document\nof a small corpus\n";
  auto o = prepare_options({dir / "a.txt"}, dir / "o");
  o.val_fraction = 0;
  prepare_corpus(o);
  std::map<std::string, std::string> before;
  for (const auto& e : std::filesystem::directory_iterator(dir / "o")) before[e.path().string()] = read_bytes(e.path());
  ASSERT_TRUE(before.count(dir / "o/train-00000.bin"));
  std::ofstream(dir / "empty.txt").close();
  test::expect_refusal([&] { prepare_corpus(prepare_options({dir / "empty.txt"}, dir / "o")); }, {"no documents"});
  auto with_tokenizer = prepare_options({dir / "empty.txt"}, dir / "o");
  with_tokenizer.tokenizer = dir / "missing.model";
  test::expect_refusal([&] { prepare_corpus(with_tokenizer); }, {"missing.model"});
  std::ofstream(dir / "garbage.model") << "not a sentencepiece model";
  with_tokenizer.tokenizer = dir / "garbage.model";
  test::expect_refusal([&] { prepare_corpus(with_tokenizer); }, {"cannot load tokenizer '" + dir / "garbage.model" + "'"});
  std::map<std::string, std::string> after;
  for (const auto& e : std::filesystem::directory_iterator(dir / "o")) after[e.path().string()] = read_bytes(e.path());
  EXPECT_EQ(after, before);
}

namespace {

// A dataset of tokens 0, 1, 2, ... (mod 60000) so every window names its own position.
std::shared_ptr<const TokenDataset> counting_dataset(const test::TempDir& dir, int tokens) {
  std::vector<int> doc(tokens - 1);
  for (int i = 0; i < tokens - 1; ++i) doc[i] = i % 60000;
  write_shard(dir / "train-00000.bin", {doc}, 65536);  // + EOS at the end
  return std::make_shared<TokenDataset>(dir.path(), "train");
}

std::set<int64_t> first_tokens(const TokenBatch& b) {
  std::set<int64_t> s;
  for (int64_t i = 0; i < b.inputs.size(0); ++i) s.insert(b.inputs[i][0].item<int64_t>());
  return s;
}

}  // namespace

TEST(PackedLoader, WindowsArePackedAndTargetsShifted) {
  test::TempDir dir;
  const auto data = counting_dataset(dir, 1001);
  PackedLoader loader(data, 10, 7, 0, 1, /*shuffle=*/false);
  EXPECT_EQ(loader.windows(), 100u);
  const auto b = loader.next(3);
  EXPECT_TRUE(torch::equal(b.inputs[1], torch::arange(10, 20)));
  EXPECT_TRUE(torch::equal(b.targets[1], torch::arange(11, 21)));
}

TEST(PackedLoader, RanksReadDistinctWindowsThatTogetherMakeTheGlobalBatch) {
  test::TempDir dir;
  const auto data = counting_dataset(dir, 2001);
  for (int world : {2, 4}) {
    PackedLoader single(data, 10, 3, 0, 1);
    std::vector<PackedLoader> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(data, 10, 3, r, world);
    for (int step = 0; step < 5; ++step) {
      const auto global = first_tokens(single.next(2 * world));
      std::set<int64_t> together;
      for (auto& rank : ranks) {
        const auto mine = first_tokens(rank.next(2));
        EXPECT_EQ(mine.size(), 2u);
        for (auto t : mine) EXPECT_TRUE(together.insert(t).second) << "window read by two ranks";
      }
      EXPECT_EQ(together, global) << "world " << world << " step " << step;
    }
  }
}

TEST(PackedLoader, ResumesExactlyFromAPosition) {
  test::TempDir dir;
  const auto data = counting_dataset(dir, 3001);
  PackedLoader a(data, 16, 11, 1, 2);
  for (int i = 0; i < 25; ++i) a.next(4);  // into the second epoch: 187 windows, 8 per step, 23 steps each
  const auto position = a.position();
  EXPECT_EQ(position.epoch, 1u);
  const auto expected = a.next(4);
  PackedLoader b(data, 16, 11, 1, 2);
  b.seek(position);
  const auto resumed = b.next(4);
  EXPECT_TRUE(torch::equal(resumed.inputs, expected.inputs));
  EXPECT_TRUE(torch::equal(resumed.targets, expected.targets));
}

TEST(PackedLoader, EpochsArePermutationsFixedBySeedAndEpoch) {
  const auto p0 = epoch_permutation(1000, 5, 0), p0_again = epoch_permutation(1000, 5, 0);
  const auto p1 = epoch_permutation(1000, 5, 1), other_seed = epoch_permutation(1000, 6, 0);
  EXPECT_EQ(p0, p0_again);
  EXPECT_NE(p0, p1);
  EXPECT_NE(p0, other_seed);
  auto sorted = p1;
  std::sort(sorted.begin(), sorted.end());
  for (uint64_t i = 0; i < sorted.size(); ++i) ASSERT_EQ(sorted[i], i);
}

TEST(PackedLoader, RefusesDataSmallerThanOneGlobalBatch) {
  test::TempDir dir;
  const auto data = counting_dataset(dir, 101);
  PackedLoader loader(data, 10, 1, 0, 4);
  test::expect_refusal([&] { loader.next(4); }, {"10 windows", "fewer than one global micro-batch of 16"});
}

TEST(Corpus, Utf8IsValidatedAndBinaryDataRefusedNamingFileAndLine) {
  EXPECT_EQ(invalid_utf8_at("plain ascii, \xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), std::string::npos);
  EXPECT_EQ(invalid_utf8_at("ab\xff"), 2u);
  EXPECT_EQ(invalid_utf8_at(std::string("a\0b", 3)), 1u);      // NUL
  EXPECT_EQ(invalid_utf8_at("\xc0\xaf"), 0u);                  // overlong '/'
  EXPECT_EQ(invalid_utf8_at("x\xed\xa0\x80"), 1u);             // a UTF-16 surrogate
  EXPECT_EQ(invalid_utf8_at("\xf4\x90\x80\x80"), 0u);         // past U+10FFFF
  EXPECT_EQ(invalid_utf8_at("\xe2\x82"), 0u);                  // truncated
  test::TempDir dir;
  std::ofstream(dir / "ok.txt") << "a fine document\n";
  const char blob[] = "text first\n\x89PNG\r\n\x1a\n\x00\x01";
  std::ofstream(dir / "blob.txt", std::ios::binary) << std::string(blob, sizeof(blob) - 1);
  CorpusOptions strict;
  test::expect_refusal([&] { read_corpus({dir / "ok.txt", dir / "blob.txt"}, strict, [](const std::string&) {}); },
               {dir / "blob.txt:2: not UTF-8 text", "--skip_malformed"});
  CorpusOptions lenient;
  lenient.skip_malformed = true;
  const auto stats = read_corpus({dir / "ok.txt", dir / "blob.txt"}, lenient, [](const std::string&) {});
  EXPECT_EQ(stats.malformed_lines, 2u);
  EXPECT_EQ(stats.documents, 2u);
}

TEST(Prepare, TheTokenizerTrainsOnABoundedSampleSpreadOverTheCorpus) {
  test::TempDir dir;
  auto docs = test::synthetic_documents(6000);
  for (size_t i = 0; i < docs.size(); ++i) docs[i] += i < 3000 ? " alphabetically" : " zygomorphic";
  test::write_jsonl(dir / "a.jsonl", {docs.begin(), docs.begin() + 3000});
  test::write_jsonl(dir / "b.jsonl", {docs.begin() + 3000, docs.end()});
  auto o = prepare_options({dir / "a.jsonl", dir / "b.jsonl"}, dir / "o");
  o.vocab_size = 1000;                // room for whole words beside the 256 byte pieces
  o.tokenizer_sample_bytes = 100000;  // of about 480 KB of JSONL
  const auto sampled = prepare_corpus(o);
  EXPECT_LE(sampled.tokenizer_text_bytes, 100000u);
  EXPECT_GE(sampled.tokenizer_text_bytes, 80000u) << "the limit counts the files' bytes, the sample their text";
  EXPECT_EQ(sampled.documents, 6000u) << "the sample trains the tokenizer; every document is encoded";
  // Spread over the corpus: the words of the first and of the last file are both learnt.
  const SentencePieceTokenizer tok(dir / "o/tokenizer.model");
  EXPECT_LE(tok.encode(" alphabetically").size(), 3u);
  EXPECT_LE(tok.encode(" zygomorphic").size(), 3u);
  o.tokenizer_sample_bytes = 1 << 30;
  o.out_dir = dir / "all";
  EXPECT_GT(prepare_corpus(o).tokenizer_text_bytes, 350000u) << "a corpus below the limit is read whole";
}

TEST(Prepare, ACorpusOfOneHugeLineTrainsATokenizer) {
  test::TempDir dir;
  std::string line;
  for (int i = 0; i < 20000; ++i) line += "word" + std::to_string(i % 700) + " ";
  std::ofstream(dir / "huge.txt") << line << "\n";  // about 150 kB in one line, no newline inside
  auto o = prepare_options({dir / "huge.txt"}, dir / "o");
  o.val_fraction = 0;
  const auto summary = prepare_corpus(o);
  EXPECT_EQ(summary.documents, 1u);
  EXPECT_GT(summary.vocab_size, 259);  // merges were learnt, not only the byte fallback
  EXPECT_LT(summary.train_tokens, 150000u);
}
