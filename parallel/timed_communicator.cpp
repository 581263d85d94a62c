#include "parallel/timed_communicator.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>

namespace moe::parallel {

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

class TimedPending : public PendingCollective {
 public:
  TimedPending(std::unique_ptr<PendingCollective> inner, std::function<void(double)> add)
      : inner_(std::move(inner)), add_(std::move(add)) {}
  void wait() override {
    const double t0 = now_s();
    inner_->wait();
    add_(now_s() - t0);
  }

 private:
  std::unique_ptr<PendingCollective> inner_;
  std::function<void(double)> add_;
};

}  // namespace

TimedCommunicator::TimedCommunicator(std::shared_ptr<Communicator> inner, std::shared_ptr<CommTimes> times,
                                     std::function<void()> synchronize)
    : inner_(std::move(inner)), times_(std::move(times)), synchronize_(std::move(synchronize)) {}

template <typename F>
void TimedCommunicator::timed(double CommTimes::*slot, F&& call) {
  if (synchronize_) synchronize_();
  const double t0 = now_s();
  call();
  if (synchronize_) synchronize_();
  (*times_).*slot += now_s() - t0;
}

void TimedCommunicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  times_->all_reduce_bytes += tensor.nbytes();
  timed(&CommTimes::all_reduce_s, [&] { inner_->all_reduce(tensor, op); });
}

std::unique_ptr<PendingCollective> TimedCommunicator::all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  times_->all_reduce_bytes += tensor.nbytes();
  std::unique_ptr<PendingCollective> pending;
  timed(&CommTimes::all_reduce_s, [&] { pending = inner_->all_reduce_async(tensor, op); });
  auto times = times_;
  return std::make_unique<TimedPending>(std::move(pending), [times](double s) { times->all_reduce_s += s; });
}

void TimedCommunicator::reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op) {
  times_->all_reduce_bytes += input.nbytes();
  timed(&CommTimes::all_reduce_s, [&] { inner_->reduce_scatter(output, input, op); });
}

std::unique_ptr<PendingCollective> TimedCommunicator::reduce_scatter_async(at::Tensor& output, const at::Tensor& input,
                                                                           ReduceOp op) {
  times_->all_reduce_bytes += input.nbytes();
  std::unique_ptr<PendingCollective> pending;
  timed(&CommTimes::all_reduce_s, [&] { pending = inner_->reduce_scatter_async(output, input, op); });
  auto times = times_;
  return std::make_unique<TimedPending>(std::move(pending), [times](double s) { times->all_reduce_s += s; });
}

double CommTimes::*TimedCommunicator::count_all_to_all(const at::Tensor& input, const std::vector<int64_t>& in_splits) {
  if (input.scalar_type() == at::kLong) return &CommTimes::count_exchange_s;
  times_->all_to_all_bytes += input.nbytes();
  if (input.size(0) > 0) {
    const uint64_t row_bytes = input.nbytes() / uint64_t(input.size(0));
    for (size_t r = 0; r < in_splits.size(); ++r) {
      if (int(r) != rank()) times_->all_to_all_remote_bytes += uint64_t(in_splits[r]) * row_bytes;
    }
  }
  return &CommTimes::all_to_all_s;
}

void TimedCommunicator::all_to_all(at::Tensor& output, const at::Tensor& input, const std::vector<int64_t>& out_splits,
                                   const std::vector<int64_t>& in_splits) {
  timed(count_all_to_all(input, in_splits), [&] { inner_->all_to_all(output, input, out_splits, in_splits); });
}

std::unique_ptr<PendingCollective> TimedCommunicator::all_to_all_async(at::Tensor& output, const at::Tensor& input,
                                                                       const std::vector<int64_t>& out_splits,
                                                                       const std::vector<int64_t>& in_splits) {
  const auto slot = count_all_to_all(input, in_splits);
  std::unique_ptr<PendingCollective> pending;
  timed(slot, [&] { pending = inner_->all_to_all_async(output, input, out_splits, in_splits); });
  auto times = times_;
  return std::make_unique<TimedPending>(std::move(pending), [times, slot](double s) { (*times).*slot += s; });
}

void TimedCommunicator::all_gather(at::Tensor& output, const at::Tensor& input) {
  timed(&CommTimes::other_s, [&] { inner_->all_gather(output, input); });
}

void TimedCommunicator::broadcast(at::Tensor& tensor, int root) {
  timed(&CommTimes::other_s, [&] { inner_->broadcast(tensor, root); });
}

void TimedCommunicator::barrier() {
  timed(&CommTimes::other_s, [&] { inner_->barrier(); });
}

void TimedCommunicator::abort(const std::string& reason) {
  inner_->abort(reason);
  std::abort();  // not reached: the inner abort does not return
}

std::shared_ptr<Communicator> TimedCommunicator::split(int color, int key) {
  return std::make_shared<TimedCommunicator>(inner_->split(color, key), times_, synchronize_);
}

}  // namespace moe::parallel
