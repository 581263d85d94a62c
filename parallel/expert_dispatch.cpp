#include "parallel/expert_dispatch.h"

#include <torch/torch.h>

#include <numeric>

#include "common/check.h"
#include "model/copy_permutation.h"
#include "model/feed_forward.h"

namespace moe::parallel {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Sends send[r] rows of x to rank r, receives recv[r] from each. With `pending`, only starts the
// exchange and leaves its completion there (the rows are not to be read before its wait()).
torch::Tensor exchange(const torch::Tensor& x, const std::vector<int64_t>& send, const std::vector<int64_t>& recv,
                       Communicator& comm, std::unique_ptr<PendingCollective>* pending = nullptr) {
  const int64_t rows = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  auto shape = x.sizes().vec();
  shape[0] = rows;
  auto out = torch::empty(shape, x.options());
  if (pending) {
    *pending = comm.all_to_all_async(out, x.contiguous(), recv, send);
  } else {
    comm.all_to_all(out, x.contiguous(), recv, send);
  }
  return out;
}

struct AllToAllRows : torch::autograd::Function<AllToAllRows> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const std::vector<int64_t>& send,
                               const std::vector<int64_t>& recv, Communicator* comm,
                               std::unique_ptr<PendingCollective>* pending) {
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    // NOTE: a raw pointer, since saved_data holds IValues; the executor owning the communicator
    // outlives every graph built through it.
    ctx->saved_data["comm"] = reinterpret_cast<int64_t>(comm);
    return exchange(x, send, recv, *comm, pending);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    const auto send = ctx->saved_data["send"].toIntVector();
    const auto recv = ctx->saved_data["recv"].toIntVector();
    return {exchange(grads[0], recv, send, *comm), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor all_to_all_rows(const torch::Tensor& x, const std::vector<int64_t>& send_splits,
                              const std::vector<int64_t>& recv_splits, Communicator& comm) {
  return AllToAllRows::apply(x, send_splits, recv_splits, &comm, nullptr);
}

// One run between start() and finish(): the dispatch in flight and what the rest needs.
class ExpertParallelExecutor::InFlight : public model::ExpertsInFlight {
 public:
  InFlight(ExpertParallelExecutor& executor, Exchange exchange, torch::Tensor received,
           std::unique_ptr<PendingCollective> dispatch, int64_t grouped_rows)
      : executor_(executor),
        exchange_(std::move(exchange)),
        received_(std::move(received)),
        dispatch_(std::move(dispatch)),
        grouped_rows_(grouped_rows) {}
  torch::Tensor finish() override {
    dispatch_->wait();
    return executor_.finish(exchange_, received_, grouped_rows_);
  }

 private:
  ExpertParallelExecutor& executor_;
  Exchange exchange_;
  torch::Tensor received_;
  std::unique_ptr<PendingCollective> dispatch_;
  int64_t grouped_rows_;
};

ExpertParallelExecutor::ExpertParallelExecutor(std::shared_ptr<Communicator> ep, Topology topology,
                                               torch::nn::ModuleDict local_experts, model::ExpertCompute compute)
    : ep_(std::move(ep)), topology_(topology), local_(local_experts, compute) {
  MOE_CHECK(ep_->size() == topology_.ep_size, "EP communicator of ", ep_->size(), " ranks for ep_size ",
            topology_.ep_size);
  MOE_CHECK(static_cast<int64_t>(local_experts->size()) == topology_.experts_per_rank, "rank holds ",
            local_experts->size(), " experts, expected ", topology_.experts_per_rank);
}

torch::Tensor ExpertParallelExecutor::run(const torch::Tensor& grouped, const torch::Tensor& counts,
                                          bool all_rows_counted) {
  return start(grouped, counts, all_rows_counted)->finish();
}

std::unique_ptr<model::ExpertsInFlight> ExpertParallelExecutor::start(
    const torch::Tensor& grouped, const torch::Tensor& counts,
    bool /*all_rows_counted: the rows sent are counted anyway*/) {
  auto exchange = exchange_counts(counts, grouped.device());
  std::unique_ptr<PendingCollective> dispatch;
  auto received = AllToAllRows::apply(grouped.narrow(0, 0, exchange.sent_rows), exchange.send_splits,
                                      exchange.recv_splits, ep_.get(), &dispatch);
  return std::make_unique<InFlight>(*this, std::move(exchange), std::move(received), std::move(dispatch),
                                    grouped.size(0));
}

ExpertParallelExecutor::Exchange ExpertParallelExecutor::exchange_counts(const torch::Tensor& counts,
                                                                         const torch::Device& device) {
  const int ep = topology_.ep_size;
  const int64_t per_rank = topology_.experts_per_rank;
  MOE_CHECK(counts.numel() == topology_.n_routed_experts, "counts has ", counts.numel(), " entries for ",
            topology_.n_routed_experts, " experts");
  // Ours per expert, and what each rank sends us per local expert ([source][local expert]). One
  // device-to-host copy of both: NCCL exchanges them on the device first.
  const auto split_each = std::vector<int64_t>(ep, per_rank);
  Exchange x;
  torch::Tensor host;  // [mine (E), theirs (E)]
  if (device.is_cuda() && ep_->backend() == "nccl") {
    x.theirs = torch::empty_like(counts);
    ep_->all_to_all(x.theirs, counts.contiguous(), split_each, split_each);
    host = torch::cat({counts, x.theirs}).cpu();
  } else {
    const auto mine = counts.cpu();
    auto theirs_host = torch::empty_like(mine);
    ep_->all_to_all(theirs_host, mine, split_each, split_each);
    host = torch::cat({mine, theirs_host});
    x.theirs = theirs_host.to(device, /*non_blocking=*/true);
  }
  const auto* my_counts = host.data_ptr<int64_t>();
  const auto* rc = my_counts + topology_.n_routed_experts;
  x.send_splits.assign(ep, 0);
  x.recv_splits.assign(ep, 0);
  for (int64_t e = 0; e < topology_.n_routed_experts; ++e) x.send_splits[e / per_rank] += my_counts[e];
  for (int s = 0; s < ep; ++s) {
    for (int64_t j = 0; j < per_rank; ++j) x.recv_splits[s] += rc[s * per_rank + j];
  }
  x.sent_rows = std::accumulate(x.send_splits.begin(), x.send_splits.end(), int64_t{0});
  x.received_rows = std::accumulate(x.recv_splits.begin(), x.recv_splits.end(), int64_t{0});
  return x;
}

torch::Tensor ExpertParallelExecutor::finish(const Exchange& x, const torch::Tensor& received, int64_t grouped_rows) {
  const int ep = topology_.ep_size;
  const int64_t per_rank = topology_.experts_per_rank;
  last_received_rows_ = received.size(0);
  // Regroup (source, expert) -> (expert, source) on the device: each received row's segment
  // (s, j) gets the key j * ep + s, and a stable sort by key orders the rows by local expert.
  const auto options = torch::TensorOptions(torch::kInt64).device(received.device());
  const auto segment = torch::arange(ep * per_rank, options);  // (s, j) = (segment / per_rank, segment % per_rank)
  const auto key_of_segment = torch::remainder(segment, per_rank) * ep + torch::div(segment, per_rank, "floor");
  const auto row_key = torch::repeat_interleave(key_of_segment, x.theirs, /*dim=*/0, x.received_rows);
  const auto order = std::get<1>(row_key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const auto per_expert = x.theirs.view({ep, per_rank}).sum(0);  // [per_rank] rows for each local expert
  // Only counted rows arrive: received_rows is the sum of the counts.
  const auto expert_out = local_.run(received.index_select(0, order), per_expert, /*all_rows_counted=*/true);
  const auto restored = expert_out.index_select(0, model::inverse_permutation(order));

  // Combine: back to the ranks the copies came from, in the layer's grouped order; dropped copies
  // (past sent_rows) get zero rows.
  const auto combined = all_to_all_rows(restored, x.recv_splits, x.send_splits, *ep_);
  if (x.sent_rows == grouped_rows) return combined;
  return torch::constant_pad_nd(combined, {0, 0, 0, grouped_rows - x.sent_rows});
}

void attach_expert_parallel(model::CausalLM& lm, const ParallelGroups& groups) {
  if (groups.topology.ep_size == 1) return;  // every expert is local: the layer's own executor
  const auto compute = model::parse_expert_compute(lm->config().expert_compute);
  for (auto& moe : lm->moe_layers()) {
    moe->set_executor(std::make_shared<ExpertParallelExecutor>(groups.ep, groups.topology, moe->experts, compute));
  }
}

model::CausalLM make_expert_parallel_model(const model::ModelConfig& config, const ParallelGroups& groups,
                                           uint64_t seed) {
  torch::manual_seed(seed);
  model::CausalLM local(config, groups.topology.local_experts());  // only this rank's experts
  attach_expert_parallel(local, groups);
  return local;
}

}  // namespace moe::parallel
