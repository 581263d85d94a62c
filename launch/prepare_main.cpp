// moe-prepare: text (MiniMind's JSONL or plain files) -> tokenizer (SentencePiece or Hugging Face) -> token shards.
//   build/bin/moe-prepare --input corpus.jsonl --out_dir data/mine [--vocab_size 6400] [--workers N]
// Killed, the same command again resumes from the last closed shard. Under mpirun (one node or
// several, --out_dir on a shared file system) the ranks split the corpus and write one data set,
// the one a single process writes.
#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "common/log.h"
#include "launch/cli.h"
#include "parallel/dist_check.h"
#include "parallel/mpi_communicator.h"
#include "trainer/data/prepare.h"

namespace po = boost::program_options;
using namespace moe;

namespace {

// Started by mpirun (OpenMPI, or a PMI launcher such as srun)?
bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

class MpiPrepareRanks final : public trainer::PrepareRanks {
 public:
  MpiPrepareRanks() {
    parallel::ensure_mpi_initialized();  // errors returned, so that MPI_CHECK reports them
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  }
  ~MpiPrepareRanks() override { parallel::finalize_mpi(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void barrier() override {
    MPI_Request request;
    MPI_CHECK(MPI_Ibarrier(MPI_COMM_WORLD, &request));
    wait_gently(request);
  }
  std::vector<uint64_t> all_gather(const std::vector<uint64_t>& values) override {
    std::vector<uint64_t> all(values.size() * size_t(size_));
    MPI_Request request;
    MPI_CHECK(MPI_Iallgather(values.data(), int(values.size()), MPI_UINT64_T, all.data(), int(values.size()),
                             MPI_UINT64_T, MPI_COMM_WORLD, &request));
    wait_gently(request);
    return all;
  }

 private:
  // A blocking MPI call would spin a core, which the ranks still encoding on this node (or rank 0
  // training the tokenizer) need: poll every 20 ms instead.
  static void wait_gently(MPI_Request& request) {
    for (int done = 0;;) {
      MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
      if (done) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  int rank_ = 0, size_ = 1;
};

// Workers per rank by default: the node's cores shared by its ranks.
int default_workers(const trainer::PrepareRanks* ranks) {
  const int ranks_here = ranks != nullptr ? parallel::node_local_size() : 1;
  return std::max(1, int(std::thread::hardware_concurrency()) / ranks_here);
}

int prepare(int argc, char** argv, trainer::PrepareRanks* ranks) {
  trainer::PrepareOptions o;
  bool quiet = false;
  double sample_mb = double(o.tokenizer_sample_bytes >> 20);
  size_t batch_kb = o.batch_bytes >> 10;
  po::options_description desc(
      "moe-prepare: tokenize a corpus into token shards for moe-train\n"
      "  inputs: .jsonl files (one {\"text\": ...} per line, MiniMind's format), plain text files, or\n"
      "  directories of them; writes OUT_DIR/tokenizer.model, train-*.bin, val-*.bin, prepare.json");
  desc.add_options()("help", "show this help")
      ("input", po::value(&o.inputs)->multitoken()->required(), "input files or directories (several allowed)")
      ("out_dir", po::value(&o.out_dir)->required(), "output directory")
      ("vocab_size", po::value(&o.vocab_size)->default_value(o.vocab_size), "BPE vocabulary to train")
      ("tokenizer", po::value(&o.tokenizer), "use this SentencePiece .model or Hugging Face tokenizer.json (e.g. MiniMind's) instead of training one")
      ("val_fraction", po::value(&o.val_fraction)->default_value(o.val_fraction),
       "share of documents held out (every round(1/f)-th); 0 = none")
      ("shard_tokens", po::value(&o.shard_tokens)->default_value(o.shard_tokens), "tokens per shard at most")
      ("separator", po::value(&o.corpus.separator)->default_value(o.corpus.separator),
       "plain text: the line that ends a document (default: an empty line)")
      ("skip_malformed", po::bool_switch(&o.corpus.skip_malformed), "skip and count malformed JSONL lines")
      ("workers", po::value(&o.workers)->default_value(o.workers),
       "encoding threads (0 = the cores, shared by the ranks on a node); the output is the same for any number")
      ("batch_kb", po::value(&batch_kb)->default_value(batch_kb),
       "documents go to the workers in batches of about this much text; the workers' queues hold a few "
       "batches each, which bounds the memory")
      ("threads", po::value(&o.threads)->default_value(o.threads), "tokenizer training threads (0 = all)")
      ("tokenizer_sample_mb", po::value(&sample_mb)->default_value(sample_mb),
       "train the tokenizer on at most this much text, sampled evenly over the corpus (bounds its memory)")
      ("quiet", po::bool_switch(&quiet), "no progress line");
  launch::parse_or_exit(argc, argv, desc);
  o.progress = !quiet;
  o.batch_bytes = std::max<size_t>(1, batch_kb) << 10;
  o.tokenizer_sample_bytes = uint64_t(std::max(0.0, sample_mb) * (1 << 20));
  if (o.workers == 0) o.workers = default_workers(ranks);
  const auto s = trainer::prepare_corpus(o, ranks);
  if (ranks && ranks->rank() != 0) return 0;
  std::cout << "[prepare] " << s.documents << " documents (" << s.val_documents << " held out), " << s.train_tokens
            << " training + " << s.val_tokens << " validation tokens in " << s.train_shards << " + " << s.val_shards
            << " shards, vocabulary " << s.vocab_size << ", " << s.seconds << " s ("
            << int64_t((s.train_tokens + s.val_tokens) / std::max(s.seconds, 1e-9)) << " tokens/s)";
  if (s.malformed_lines > 0) std::cout << "; " << s.malformed_lines << " malformed lines skipped";
  if (s.skipped_files > 0) std::cout << "; " << s.skipped_files << " files of other types skipped";
  if (s.resumed) std::cout << "; resumed an interrupted run";
  std::cout << "; peak memory " << s.peak_resident_bytes / (1 << 20) << " MiB";
  std::cout << "\n[prepare] wrote " << o.out_dir << "/ (summary: prepare.json)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<MpiPrepareRanks> ranks;
  try {
    if (launched_by_mpi()) {
      ranks = std::make_unique<MpiPrepareRanks>();
      set_log_rank(ranks->rank(), ranks->size());
    }
    return prepare(argc, argv, ranks.get());
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    if (ranks && ranks->size() > 1) MPI_Abort(MPI_COMM_WORLD, 1);  // the others may wait in a collective
    return 1;
  }
}
