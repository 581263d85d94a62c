// The checkpoint's file formats, one process: safetensors written and read back for every dtype;
// hostile headers refused before anything is allocated from them; a real checkpoint with a flipped
// byte, a truncated or deleted file, a lying manifest, an overflowing header, an unknown format
// version: each refused by the one reader, naming the file.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/durable_file.h"
#include "common/safetensors.h"
#include "parallel/topology.h"
#include "tests/trainer/temp_dir.h"
#include "tests/trainer/training_fixture.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/trainer.h"

using namespace moe;
using namespace moe::trainer;
namespace fs = std::filesystem;
using moe::test::refusal;

namespace {

std::string read_bytes(const std::string& path) { return read_small_file(path, 1 << 30); }

void write_bytes(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

// A safetensors file with this header text and `data` bytes after it.
std::string with_header(const std::string& json, size_t data, uint64_t length = 0) {
  std::string bytes(8, '\0');
  const uint64_t n = length ? length : json.size();
  for (int i = 0; i < 8; ++i) bytes[i] = char(uint8_t(n >> (8 * i)));
  return bytes + json + std::string(data, '\0');
}

}  // namespace

TEST(Safetensors, RoundTripsEveryDtypeAndIsWhatPythonReads) {
  test::TempDir tmp("moe_format_test");
  const auto path = tmp / "t.safetensors";
  std::vector<torch::Tensor> values = {torch::randn({3, 5}), torch::randn({4}).to(torch::kBFloat16),
                                       torch::randint(-9, 9, {2, 2, 2}, torch::kInt64), torch::full({}, 7.0f),
                                       torch::zeros({0, 3})};
  std::vector<SafetensorsTensor> tensors;
  const char* dtypes[] = {"F32", "BF16", "I64", "F32", "F32"};
  for (size_t i = 0; i < values.size(); ++i) {
    tensors.push_back({"t" + std::to_string(i), dtypes[i], values[i].sizes().vec(), values[i].data_ptr()});
  }
  const auto written = write_safetensors(path, tensors, {{"format", "pt"}});
  const auto bytes = read_bytes(path);
  EXPECT_EQ(written.size, bytes.size());
  EXPECT_EQ(written.crc32, crc32_of(bytes.data(), bytes.size()));
  // The layout Python's safetensors expects: length, JSON padded to 8 bytes, then the data.
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["format"], "pt");
  EXPECT_EQ(header["t1"]["dtype"], "BF16");
  EXPECT_EQ(header["t0"]["data_offsets"], nlohmann::json::array({0, 60}));

  const SafetensorsFile file(path);
  ASSERT_EQ(file.header().tensors.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const auto* e = file.find("t" + std::to_string(i));
    ASSERT_NE(e, nullptr);
    auto back = torch::empty(e->shape, values[i].options());
    file.read(*e, back.data_ptr());
    EXPECT_TRUE(torch::equal(back, values[i])) << i;
  }
}

TEST(Safetensors, HostileHeadersAreRefusedNamingTheFile) {
  test::TempDir tmp("moe_format_test");
  const auto path = tmp / "bad.safetensors";
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {std::string(5, 'x'), "shorter than the 8-byte header length"},
      {with_header(ok, 8, uint64_t(1) << 62), "exceeds the"},
      {with_header(ok, 8, 4096), "runs past the end"},
      {with_header("[1, 2]", 0), "not a JSON object"},
      {with_header("{\"a\": ", 0), "not a JSON object"},
      {with_header(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype 'Q7'"},
      {with_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "not a non-negative integer"},
      {with_header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
       "size overflows"},
      {with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "for 12 bytes of data"},
      {with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "data_offsets [8, 0]"},
      {with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "expected 0"},
      {with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                   12),
       "without gaps or overlaps"},
      {with_header(ok, 4), "cover 8 data bytes but the file has 4"},
      {with_header(ok, 12), "cover 8 data bytes but the file has 12"},
      {with_header(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "no data_offsets"},
      {with_header(R"({"__metadata__":{"k":5}})", 0), "is not a string"},
  };
  for (const auto& [bytes, expected] : cases) {
    write_bytes(path, bytes);
    const auto message = refusal([&] { SafetensorsFile f(path); });
    EXPECT_NE(message.find(expected), std::string::npos) << "expected '" << expected << "', got: " << message;
    EXPECT_NE(message.find(path), std::string::npos) << message;
  }
}

class CheckpointCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    test::write_dataset(tmp_.path() + "/data", 100, 64);
    auto cfg = test::tiny_config(tmp_.path());
    cfg.parallel.backend = "single";
    cfg.train.steps = 2;
    cfg.checkpoint.save_final = true;
    Trainer trainer(cfg, parallel::make_groups(parallel::make_single_communicator(), 1, 4));
    step_dir_ = trainer.run().checkpoint;
    run_dir_ = cfg.train.out_dir;
    manifest_ = nlohmann::json::parse(read_bytes(step_dir_ + "/manifest.json"));
  }
  std::string load_error() { return refusal([&] { load_model_for_inference(run_dir_); }); }
  std::string model_file() const { return step_dir_ + "/model-00000-of-00001.safetensors"; }

  test::TempDir tmp_{"moe_format_test"};
  std::string step_dir_, run_dir_;
  nlohmann::json manifest_;
};

TEST_F(CheckpointCorruption, AnIntactCheckpointLoads) {
  EXPECT_EQ(load_error(), "(no error)");
  EXPECT_EQ(manifest_["format_version"], 1);
  EXPECT_EQ(manifest_["tensors"]["model.layers.1.mlp.experts.3.up_proj.weight"]["shape"],
            nlohmann::json::array({48, 32}));
  EXPECT_TRUE(manifest_["tensors"].contains("optimizer.model.layers.1.mlp.experts.3.up_proj.weight.exp_avg_sq"));
}

TEST_F(CheckpointCorruption, AFlippedByteInATensorFailsItsChecksum) {
  auto bytes = read_bytes(model_file());
  bytes[bytes.size() - 3] ^= 0x01;
  write_bytes(model_file(), bytes);
  const auto message = load_error();
  EXPECT_NE(message.find("fails its checksum (corrupt file)"), std::string::npos) << message;
  EXPECT_NE(message.find(model_file()), std::string::npos) << message;
}

TEST_F(CheckpointCorruption, AFlippedByteInAHeaderIsRefused) {
  auto bytes = read_bytes(model_file());
  bytes[20] ^= 0x01;  // inside the JSON: a changed name, number or syntax
  write_bytes(model_file(), bytes);
  const auto message = load_error();
  EXPECT_NE(message.find(model_file()), std::string::npos) << message;
}

TEST_F(CheckpointCorruption, ATruncatedFileIsRefused) {
  const auto bytes = read_bytes(model_file());
  write_bytes(model_file(), bytes.substr(0, bytes.size() - 100));
  const auto message = load_error();
  EXPECT_NE(message.find("has " + std::to_string(bytes.size() - 100) + " bytes, the manifest says " +
                         std::to_string(bytes.size()) + " (truncated or replaced)"),
            std::string::npos)
      << message;
}

TEST_F(CheckpointCorruption, ADeletedFileIsRefused) {
  fs::remove(model_file());
  const auto message = load_error();
  EXPECT_NE(message.find("file 'model-00000-of-00001.safetensors' listed in the manifest is missing"),
            std::string::npos)
      << message;
}

TEST_F(CheckpointCorruption, AManifestThatLiesAboutSizesIsRefused) {
  manifest_["files"]["model-00000-of-00001.safetensors"]["size"] = 1 << 20;
  write_bytes(step_dir_ + "/manifest.json", manifest_.dump());
  auto message = load_error();
  EXPECT_NE(message.find("the manifest says 1048576"), std::string::npos) << message;

  manifest_["files"]["model-00000-of-00001.safetensors"]["size"] = fs::file_size(model_file());
  manifest_["tensors"]["model.norm.weight"]["shape"] = nlohmann::json::array({1LL << 40, 1LL << 40});
  write_bytes(step_dir_ + "/manifest.json", manifest_.dump());
  message = load_error();
  EXPECT_NE(message.find("model.norm.weight has a shape whose size overflows"), std::string::npos) << message;

  manifest_["tensors"]["model.norm.weight"]["shape"] = nlohmann::json::array({1 << 20});
  write_bytes(step_dir_ + "/manifest.json", manifest_.dump());
  message = load_error();
  EXPECT_NE(message.find("model.norm.weight needs 4194304 bytes"), std::string::npos) << message;
}

TEST_F(CheckpointCorruption, ATensorFileWhoseHeaderOverflowsIsRefused) {
  auto bytes = read_bytes(model_file());
  std::memset(bytes.data(), 0xff, 8);  // header length 2^64 - 1
  write_bytes(model_file(), bytes);
  const auto message = load_error();
  EXPECT_NE(message.find("header length 18446744073709551615 exceeds the 104857600-byte limit"), std::string::npos)
      << message;
}

TEST_F(CheckpointCorruption, AnUnknownFormatVersionOrAForeignManifestIsRefused) {
  manifest_["format_version"] = 99;
  write_bytes(step_dir_ + "/manifest.json", manifest_.dump());
  auto message = load_error();
  EXPECT_NE(message.find("format version 99 is not supported (this build reads 1)"), std::string::npos) << message;
  write_bytes(step_dir_ + "/manifest.json", "\x89PNG garbage");
  message = load_error();
  EXPECT_NE(message.find("manifest.json: not a JSON object"), std::string::npos) << message;
  write_bytes(run_dir_ + "/checkpoints/latest", "../../etc\n");
  message = load_error();
  EXPECT_NE(message.find("does not name a step directory"), std::string::npos) << message;
}

TEST_F(CheckpointCorruption, ANewRunNeverMixesWithAnotherRunsCheckpoints) {
  auto cfg = test::tiny_config(tmp_.path());
  cfg.parallel.backend = "single";
  const auto groups = [] { return parallel::make_groups(parallel::make_single_communicator(), 1, 4); };
  auto message = refusal([&] { Trainer(cfg, groups()); });  // resume none, same out_dir
  EXPECT_NE(message.find("already holds checkpoints of a run"), std::string::npos) << message;
  cfg.checkpoint.resume = step_dir_;  // its own checkpoint: fine
  EXPECT_EQ(refusal([&] { Trainer(cfg, groups()); }), "(no error)");
  auto other = test::tiny_config(tmp_.path() + "/other");
  other.data.dir = cfg.data.dir;
  other.parallel.backend = "single";
  other.checkpoint.save_final = true;
  Trainer(other, groups()).run();  // a second run, with its own checkpoint
  cfg.train.out_dir = other.train.out_dir;
  message = refusal([&] { Trainer(cfg, groups()); });  // resume step_dir_ into other/run
  EXPECT_NE(message.find("already holds checkpoints of another run"), std::string::npos) << message;
}

TEST_F(CheckpointCorruption, NonFiniteWeightsAreRefusedNamingTheCheckpoint) {
  // A NaN written into a parameter, with the checksums made to match: the file is "intact".
  const SafetensorsFile file(model_file());
  const auto* entry = file.find("model.norm.weight");
  ASSERT_NE(entry, nullptr);
  auto bytes = read_bytes(model_file());
  const float nan = NAN;
  std::memcpy(bytes.data() + file.header().data_start + entry->begin, &nan, sizeof(nan));
  write_bytes(model_file(), bytes);
  const auto at = file.header().data_start + entry->begin;
  manifest_["tensors"]["model.norm.weight"]["crc32"] = crc32_of(bytes.data() + at, entry->end - entry->begin);
  manifest_["files"]["model-00000-of-00001.safetensors"]["crc32"] = crc32_of(bytes.data(), bytes.size());
  write_bytes(step_dir_ + "/manifest.json", manifest_.dump());
  const auto message = load_error();
  EXPECT_NE(message.find("parameter model.norm.weight holds non-finite values"), std::string::npos) << message;
  EXPECT_NE(message.find(step_dir_), std::string::npos) << message;
}
