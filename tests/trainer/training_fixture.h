// What the multi-rank training tests share: the MPI world, a small token dataset, a tiny run
// configuration, the run directory every rank sees, and readers of a run's metrics and weights.
#pragma once
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/causal_lm.h"
#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "tests/support.h"
#include "trainer/data/token_shard.h"
#include "trainer/train_config.h"

namespace moe::test {

// The world of the multi-rank tests (under mpiexec), with a timeout that fails a hang.
inline std::shared_ptr<parallel::Communicator> mpi_world() {
  return std::make_shared<parallel::MpiCommunicator>(MPI_COMM_WORLD, 120.0);
}

// Random documents of a small vocabulary, written by each rank into its own directory (same seed,
// same bytes), with a repeated phrase the model can learn.
inline void write_dataset(const std::string& dir, int64_t documents, uint32_t vocab) {
  std::filesystem::create_directories(dir);
  torch::manual_seed(99);
  for (const char* split : {"train", "val"}) {
    trainer::TokenShardWriter w(dir + "/" + split + "-00000.bin", vocab, 2);
    for (int64_t d = 0; d < documents; ++d) {
      auto ids = torch::randint(3, vocab, {24}, torch::kInt64);
      std::vector<int> doc(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 24);
      for (int i : {5, 6, 7, 8, 9}) doc.push_back(i);  // a phrase that recurs
      w.append_document(doc);
    }
    w.close();
  }
}

inline trainer::TrainConfig tiny_config(const std::string& dir) {
  trainer::TrainConfig c;
  c.model = small_moe_config(64);
  c.data.dir = dir + "/data";
  c.data.seq_len = 16;
  c.optim.lr = 3e-3;
  c.optim.min_lr = 3e-4;
  c.optim.warmup_steps = 2;
  c.train.steps = 6;
  c.train.micro_batch = 2;
  c.train.log_every = 1000;
  c.train.eval_every = 0;
  c.train.eval_batches = 0;
  c.train.out_dir = dir + "/run";
  c.train.device = "cpu";
  c.checkpoint.save_final = false;
  c.checkpoint.resume = "none";
  return c;
}

// Rank 0's `path` on every rank: the run directory the ranks share (a shared file system).
inline std::string rank0_path(parallel::Communicator& comm, const std::string& path) {
  auto bytes = torch::zeros({4096}, torch::kUInt8);
  if (comm.rank() == 0) std::memcpy(bytes.data_ptr(), path.data(), std::min<size_t>(path.size(), 4095));
  comm.broadcast(bytes, 0);
  return reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>());
}

// Rank 0's `dir` on every rank, with the test dataset (200 documents, vocabulary 64) that rank 0
// wrote into its data/ before every rank returns.
inline std::string shared_dir_with_dataset(parallel::Communicator& comm, const std::string& dir) {
  const auto shared = rank0_path(comm, dir);
  if (comm.rank() == 0) write_dataset(shared + "/data", 200, 64);
  comm.barrier();
  return shared;
}

// `field` of every record of `type` in a run's metrics.jsonl, by step.
inline std::map<int64_t, double> logged(const std::string& run_dir, const std::string& type,
                                        const std::string& field) {
  std::map<int64_t, double> values;
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == type) values[j["step"].get<int64_t>()] = j[field].get<double>();
  }
  return values;
}

inline std::map<std::string, torch::Tensor> weights(model::CausalLM& lm) {
  std::map<std::string, torch::Tensor> w;
  for (const auto& p : lm->named_parameters()) w[p.key()] = p.value().detach().clone();
  return w;
}

}  // namespace moe::test
