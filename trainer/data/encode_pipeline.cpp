#include "trainer/data/encode_pipeline.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "common/check.h"

namespace moe::trainer {

namespace {

struct Batch {
  uint64_t seq = 0;
  std::vector<std::string> texts;
  EncodedBatch encoded;
};

struct Stopped {};  // unwinds the reader when another stage failed

// The state the three stages share, under one mutex (batches are large: a few hundred a second).
class Pipeline {
 public:
  Pipeline(int workers, uint64_t max_in_flight) : stats_(size_t(workers)), max_in_flight_(max_in_flight) {}

  // Reader: blocks while max_in_flight batches exist.
  void submit(std::unique_ptr<Batch> batch) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return stop_ || in_flight_ < max_in_flight_; });
    if (stop_) throw Stopped{};
    batch->seq = submitted_++;
    ++in_flight_;
    queued_.push_back(std::move(batch));
    changed_.notify_all();
  }
  void reading_done() {
    std::lock_guard lock(mutex_);
    reading_done_ = true;
    changed_.notify_all();
  }

  // Worker: the next batch to encode, or null at the end.
  std::unique_ptr<Batch> take_queued() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return stop_ || !queued_.empty() || reading_done_; });
    if (stop_ || queued_.empty()) return nullptr;
    auto batch = std::move(queued_.front());
    queued_.pop_front();
    return batch;
  }
  void finished(std::unique_ptr<Batch> batch) {
    std::lock_guard lock(mutex_);
    const auto seq = batch->seq;
    encoded_.emplace(seq, std::move(batch));
    changed_.notify_all();
  }

  // Consumer: batch number `seq` once encoded, or null at the end (or when a stage failed).
  std::unique_ptr<Batch> take_encoded(uint64_t seq) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return stop_ || encoded_.count(seq) > 0 || (reading_done_ && seq == submitted_); });
    if (stop_ || encoded_.count(seq) == 0) return nullptr;
    auto batch = std::move(encoded_.at(seq));
    encoded_.erase(seq);
    return batch;
  }

  // Consumer: the batch it took is written and freed; it counted as in flight until now.
  void release_taken() {
    std::lock_guard lock(mutex_);
    --in_flight_;
    changed_.notify_all();
  }

  void fail(std::exception_ptr error) {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = error;
    stop_ = true;
    changed_.notify_all();
  }
  void rethrow_error() {
    if (error_) std::rethrow_exception(error_);
  }
  std::vector<WorkerStats> stats_;  // each worker writes its own

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::unique_ptr<Batch>> queued_;
  std::map<uint64_t, std::unique_ptr<Batch>> encoded_;
  uint64_t submitted_ = 0, in_flight_ = 0;
  const uint64_t max_in_flight_;
  bool reading_done_ = false, stop_ = false;
  std::exception_ptr error_;
};

void encode_batches(Pipeline& pipeline, BatchEncoder& encoder, WorkerStats& stats) {
  while (auto batch = pipeline.take_queued()) {
    const auto start = std::chrono::steady_clock::now();
    batch->encoded.ids = encoder.encode_batch(batch->texts);
    stats.busy_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    MOE_CHECK(batch->encoded.ids.size() == batch->texts.size(), "the encoder returned ", batch->encoded.ids.size(),
              " documents for a batch of ", batch->texts.size());
    ++stats.batches;
    stats.documents += batch->texts.size();
    stats.text_bytes += batch->encoded.text_bytes;
    for (const auto& ids : batch->encoded.ids) stats.tokens += ids.size();
    batch->texts = {};  // the text is not needed any more: only the ids wait for their turn
    pipeline.finished(std::move(batch));
  }
}

}  // namespace

PipelineResult run_encode_pipeline(const std::vector<std::string>& files, const CorpusOptions& corpus,
                                   const CorpusRange& range, const CorpusStats& read, const PipelineOptions& options,
                                   const std::function<std::unique_ptr<BatchEncoder>(int)>& make_encoder,
                                   const std::function<void(EncodedBatch&)>& consume,
                                   const std::function<void(uint64_t)>& on_bytes) {
  MOE_CHECK(options.workers >= 1, "--workers must be at least 1, got ", options.workers);
  Pipeline pipeline(options.workers, uint64_t(options.workers) * std::max(1, options.in_flight_per_worker) + 2);
  PipelineResult result;
  result.read = read;

  std::thread reader([&] {
    try {
      auto batch = std::make_unique<Batch>();
      read_corpus_range(files, corpus, range, result.read, [&](std::string& text, const CorpusPosition& end) {
        batch->encoded.text_bytes += text.size();
        batch->encoded.ends.push_back({end, result.read});
        batch->texts.push_back(std::move(text));
        if (batch->encoded.text_bytes >= options.batch_bytes) {
          pipeline.submit(std::move(batch));
          batch = std::make_unique<Batch>();
        }
      }, on_bytes);
      if (!batch->texts.empty()) pipeline.submit(std::move(batch));
      pipeline.reading_done();
    } catch (const Stopped&) {
    } catch (...) {
      pipeline.fail(std::current_exception());
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < options.workers; ++w) {
    workers.emplace_back([&, w] {
      try {
        const auto encoder = make_encoder(w);
        encode_batches(pipeline, *encoder, pipeline.stats_[size_t(w)]);
      } catch (...) {
        pipeline.fail(std::current_exception());
      }
    });
  }
  try {
    for (uint64_t seq = 0;; ++seq) {
      auto batch = pipeline.take_encoded(seq);
      if (!batch) break;
      consume(batch->encoded);
      batch.reset();
      pipeline.release_taken();
    }
  } catch (...) {
    pipeline.fail(std::current_exception());
  }
  reader.join();
  for (auto& w : workers) w.join();
  pipeline.rethrow_error();
  result.workers = pipeline.stats_;
  return result;
}

}  // namespace moe::trainer
