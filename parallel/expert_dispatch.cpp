#include "parallel/expert_dispatch.h"

#include <torch/torch.h>

#include <functional>
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

namespace {

// One run between start() and finish(): the dispatch in flight, then the rest of the run.
class DispatchInFlight : public model::ExpertsInFlight {
 public:
  DispatchInFlight(std::unique_ptr<PendingCollective> dispatch, std::function<torch::Tensor()> rest)
      : dispatch_(std::move(dispatch)), rest_(std::move(rest)) {}
  torch::Tensor finish() override {
    dispatch_->wait();
    return rest_();
  }

 private:
  std::unique_ptr<PendingCollective> dispatch_;
  std::function<torch::Tensor()> rest_;
};

// rows [R, H] with one zero row appended, so that an index R picks zeros.
torch::Tensor with_zero_row(const torch::Tensor& rows) { return torch::cat({rows, rows.new_zeros({1, rows.size(1)})}); }

}  // namespace

ExpertParallelExecutor::ExpertParallelExecutor(std::shared_ptr<Communicator> ep, Topology topology,
                                               torch::nn::ModuleDict local_experts, model::ExpertCompute compute,
                                               bool pad_to_capacity)
    : ep_(std::move(ep)), topology_(topology), local_(local_experts, compute), pad_to_capacity_(pad_to_capacity) {
  MOE_CHECK(ep_->size() == topology_.ep_size, "EP communicator of ", ep_->size(), " ranks for ep_size ",
            topology_.ep_size);
  MOE_CHECK(static_cast<int64_t>(local_experts->size()) == topology_.experts_per_rank, "rank holds ",
            local_experts->size(), " experts, expected ", topology_.experts_per_rank);
}

torch::Tensor ExpertParallelExecutor::run(const torch::Tensor& grouped, const torch::Tensor& counts, int64_t capacity) {
  return start(grouped, counts, capacity)->finish();
}

std::unique_ptr<model::ExpertsInFlight> ExpertParallelExecutor::start(const torch::Tensor& grouped,
                                                                      const torch::Tensor& counts, int64_t capacity) {
  MOE_CHECK(counts.numel() == topology_.n_routed_experts, "counts has ", counts.numel(), " entries for ",
            topology_.n_routed_experts, " experts");
  return pad_to_capacity_ && capacity > 0 ? start_fixed(grouped, counts, capacity) : start_counted(grouped, counts);
}

std::unique_ptr<model::ExpertsInFlight> ExpertParallelExecutor::start_counted(const torch::Tensor& grouped,
                                                                              const torch::Tensor& counts) {
  auto exchange = exchange_counts(counts, grouped.device());
  std::unique_ptr<PendingCollective> dispatch;
  auto received = AllToAllRows::apply(grouped.narrow(0, 0, exchange.sent_rows), exchange.send_splits,
                                      exchange.recv_splits, ep_.get(), &dispatch);
  const int64_t grouped_rows = grouped.size(0);
  return std::make_unique<DispatchInFlight>(std::move(dispatch), [this, exchange, received, grouped_rows] {
    return finish_counted(exchange, received, grouped_rows);
  });
}

std::unique_ptr<model::ExpertsInFlight> ExpertParallelExecutor::start_fixed(const torch::Tensor& grouped,
                                                                            const torch::Tensor& counts,
                                                                            int64_t capacity) {
  const int64_t experts = topology_.n_routed_experts, rows = grouped.size(0);
  const auto ends = counts.cumsum(0), starts = ends - counts;
  // Slot (e, j) of what this rank sends: expert e's j-th kept copy, or the zero row past its count.
  const auto j = torch::arange(capacity, counts.options());
  const auto source = torch::where(j.unsqueeze(0) < counts.unsqueeze(1), starts.unsqueeze(1) + j.unsqueeze(0),
                                   torch::full({}, rows, counts.options()));
  const auto slots = with_zero_row(grouped).index_select(0, source.view(-1));  // [E x capacity, H]
  const std::vector<int64_t> splits(topology_.ep_size, topology_.experts_per_rank * capacity);
  std::unique_ptr<PendingCollective> dispatch;
  auto received = AllToAllRows::apply(slots, splits, splits, ep_.get(), &dispatch);
  // Each grouped row comes back from its slot; rows past the kept copies (dropped) get zeros.
  const auto row = torch::arange(rows, counts.options());
  const auto expert = torch::searchsorted(ends, row, /*out_int32=*/false, /*right=*/true);  // E past the kept
  const auto kept_expert = expert.clamp_max(experts - 1);
  const auto slot_of_row =
      torch::where(expert < experts, kept_expert * capacity + row - starts.index_select(0, kept_expert),
                   torch::full({}, experts * capacity, counts.options()));
  return std::make_unique<DispatchInFlight>(std::move(dispatch), [this, received, splits, slot_of_row, capacity] {
    return finish_fixed(received, splits, slot_of_row, capacity);
  });
}

torch::Tensor ExpertParallelExecutor::finish_fixed(const torch::Tensor& received, const std::vector<int64_t>& splits,
                                                   const torch::Tensor& slot_of_row, int64_t capacity) {
  const int ep = topology_.ep_size;
  const int64_t per_rank = topology_.experts_per_rank, h = received.size(1);
  last_received_rows_ = received.size(0);
  // [source, local expert, slot] -> [local expert, source, slot]: each local expert's rows in one
  // group of ep x capacity, the zero rows among them giving zero outputs (SwiGLU without biases).
  const auto by_expert = received.view({ep, per_rank, capacity, h}).transpose(0, 1).reshape({-1, h});
  const auto per_expert = torch::full({per_rank}, ep * capacity, slot_of_row.options());
  const auto out = local_.run(by_expert, per_expert, /*capacity=*/0);  // every row counted
  const auto by_source = out.view({per_rank, ep, capacity, h}).transpose(0, 1).reshape({-1, h});
  const auto returned = all_to_all_rows(by_source, splits, splits, *ep_);  // [E x capacity, H], this rank's slots
  return with_zero_row(returned).index_select(0, slot_of_row);
}

ExpertParallelExecutor::Exchange ExpertParallelExecutor::exchange_counts(const torch::Tensor& counts,
                                                                         const torch::Device& device) {
  const int ep = topology_.ep_size;
  const int64_t per_rank = topology_.experts_per_rank;
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

torch::Tensor ExpertParallelExecutor::finish_counted(const Exchange& x, const torch::Tensor& received,
                                                     int64_t grouped_rows) {
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
  const auto expert_out = local_.run(received.index_select(0, order), per_expert, /*capacity=*/0);
  const auto restored = expert_out.index_select(0, model::inverse_permutation(order));

  // Combine: back to the ranks the copies came from, in the layer's grouped order; dropped copies
  // (past sent_rows) get zero rows.
  const auto combined = all_to_all_rows(restored, x.recv_splits, x.send_splits, *ep_);
  if (x.sent_rows == grouped_rows) return combined;
  return torch::constant_pad_nd(combined, {0, 0, 0, grouped_rows - x.sent_rows});
}

void attach_expert_parallel(model::CausalLM& lm, const ParallelGroups& groups, bool pad_to_capacity) {
  if (groups.topology.ep_size == 1) return;  // every expert is local: the layer's own executor
  const auto compute = model::parse_expert_compute(lm->config().expert_compute);
  for (auto& moe : lm->moe_layers()) {
    moe->set_executor(
        std::make_shared<ExpertParallelExecutor>(groups.ep, groups.topology, moe->experts, compute, pad_to_capacity));
  }
}

model::CausalLM make_expert_parallel_model(const model::ModelConfig& config, const ParallelGroups& groups,
                                           uint64_t seed, bool pad_to_capacity) {
  torch::manual_seed(seed);
  model::CausalLM local(config, groups.topology.local_experts());  // only this rank's experts
  attach_expert_parallel(local, groups, pad_to_capacity);
  return local;
}

}  // namespace moe::parallel
