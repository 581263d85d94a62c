// A Communicator that times every collective of the one it wraps (benchmarks: where the step's
// communication time goes). Its splits are timed too, into the same totals, so make_groups() over
// a timed world times the EP and edp groups as well. On GPUs `synchronize` (the device) runs
// before and after each call so that the time is the collective's, not its enqueueing.
#pragma once
#include <functional>
#include <memory>

#include "parallel/communicator.h"

namespace moe::parallel {

struct CommTimes {
  double all_to_all_s = 0;      // payload all-to-alls (token rows: dispatch, combine, their backward;
                                // async ones: start + wait, not the work in between)
  double count_exchange_s = 0;  // int64 all-to-alls (the per-expert counts before each dispatch):
                                // tiny, so their time is mostly waiting for the slowest rank
  double all_reduce_s = 0;      // all-reduces and reduce-scatters, blocking and async (start + wait)
  double other_s = 0;           // all-gathers, broadcasts, barriers
  uint64_t all_to_all_bytes = 0, all_reduce_bytes = 0;  // sent by this rank (reduce-scatters' inputs count
                                                        // as all-reduce bytes: the gradient traffic)
  uint64_t all_to_all_remote_bytes = 0;  // of the payload all-to-alls, the rows to other ranks: what leaves this rank
};

class TimedCommunicator : public Communicator {
 public:
  TimedCommunicator(std::shared_ptr<Communicator> inner, std::shared_ptr<CommTimes> times,
                    std::function<void()> synchronize = {});
  const CommTimes& times() const { return *times_; }
  void reset() { *times_ = CommTimes{}; }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  void all_reduce(at::Tensor& tensor, ReduceOp op) override;
  std::unique_ptr<PendingCollective> all_reduce_async(at::Tensor& tensor, ReduceOp op) override;
  void reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) override;
  std::unique_ptr<PendingCollective> reduce_scatter_async(at::Tensor& output, const at::Tensor& input,
                                                          ReduceOp op) override;
  void all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                  const std::vector<int64_t>& in_splits) override;
  std::unique_ptr<PendingCollective> all_to_all_async(at::Tensor& output, const at::Tensor& input,
                                                      const std::vector<int64_t>& out_splits,
                                                      const std::vector<int64_t>& in_splits) override;
  void all_gather(at::Tensor& output, const at::Tensor& input) override;
  void broadcast(at::Tensor& tensor, int root) override;
  void barrier() override;
  std::shared_ptr<Communicator> split(int color, int key) override;
  [[noreturn]] void abort(const std::string& reason) override;

 private:
  template <typename F>
  void timed(double CommTimes::*slot, F&& call);
  // Adds an all-to-all's bytes to the totals; returns the slot its time goes to.
  double CommTimes::*count_all_to_all(const at::Tensor& input, const std::vector<int64_t>& in_splits);
  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<CommTimes> times_;
  std::function<void()> synchronize_;
};

}  // namespace moe::parallel
