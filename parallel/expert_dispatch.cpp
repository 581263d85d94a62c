#include "parallel/expert_dispatch.h"

#include <torch/torch.h>

#include <numeric>

#include "common/check.h"
#include "model/feed_forward.h"

namespace moe::parallel {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

torch::Tensor exchange(const torch::Tensor& x, const std::vector<int64_t>& send, const std::vector<int64_t>& recv,
                       Communicator& comm) {
  const int64_t rows = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  auto shape = x.sizes().vec();
  shape[0] = rows;
  auto out = torch::empty(shape, x.options());
  comm.all_to_all(out, x.contiguous(), recv, send);
  return out;
}

struct AllToAllRows : torch::autograd::Function<AllToAllRows> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const std::vector<int64_t>& send,
                               const std::vector<int64_t>& recv, Communicator* comm) {
    ctx->saved_data["send"] = send;
    ctx->saved_data["recv"] = recv;
    // NOTE: a raw pointer, since saved_data holds IValues; the executor owning the communicator
    // outlives every graph built through it.
    ctx->saved_data["comm"] = reinterpret_cast<int64_t>(comm);
    return exchange(x, send, recv, *comm);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    const auto send = ctx->saved_data["send"].toIntVector();
    const auto recv = ctx->saved_data["recv"].toIntVector();
    return {exchange(grads[0], recv, send, *comm), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor all_to_all_rows(const torch::Tensor& x, const std::vector<int64_t>& send_splits,
                              const std::vector<int64_t>& recv_splits, Communicator& comm) {
  return AllToAllRows::apply(x, send_splits, recv_splits, &comm);
}

ExpertParallelExecutor::ExpertParallelExecutor(std::shared_ptr<Communicator> ep, Topology topology,
                                               torch::nn::ModuleDict local_experts)
    : ep_(std::move(ep)), topology_(topology), local_experts_(std::move(local_experts)) {
  MOE_CHECK(ep_->size() == topology_.ep_size, "EP communicator of ", ep_->size(), " ranks for ep_size ",
            topology_.ep_size);
  MOE_CHECK(static_cast<int64_t>(local_experts_->size()) == topology_.experts_per_rank, "rank holds ",
            local_experts_->size(), " experts, expected ", topology_.experts_per_rank);
}

torch::Tensor ExpertParallelExecutor::run(const torch::Tensor& grouped, const torch::Tensor& counts) {
  const int ep = topology_.ep_size;
  const int64_t per_rank = topology_.experts_per_rank;
  MOE_CHECK(counts.numel() == topology_.n_routed_experts, "counts has ", counts.numel(), " entries for ",
            topology_.n_routed_experts, " experts");

  // 1. Counts: ours per expert, and what each rank sends us per local expert ([source][local
  //    expert]). One device-to-host copy of both: NCCL exchanges them on the device first.
  const auto split_each = std::vector<int64_t>(ep, per_rank);
  torch::Tensor host;  // [mine (E), theirs (E)]
  if (grouped.is_cuda() && ep_->backend() == "nccl") {
    auto theirs = torch::empty_like(counts);
    ep_->all_to_all(theirs, counts.contiguous(), split_each, split_each);
    host = torch::cat({counts, theirs}).cpu();
  } else {
    const auto mine = counts.cpu();
    auto theirs = torch::empty_like(mine);
    ep_->all_to_all(theirs, mine, split_each, split_each);
    host = torch::cat({mine, theirs});
  }
  const auto* my_counts = host.data_ptr<int64_t>();
  const auto* rc = my_counts + topology_.n_routed_experts;
  std::vector<int64_t> send_splits(ep, 0), recv_splits(ep, 0);
  for (int64_t e = 0; e < topology_.n_routed_experts; ++e) send_splits[e / per_rank] += my_counts[e];
  for (int s = 0; s < ep; ++s) {
    for (int64_t j = 0; j < per_rank; ++j) recv_splits[s] += rc[s * per_rank + j];
  }
  const auto sent = grouped.narrow(0, 0, std::accumulate(send_splits.begin(), send_splits.end(), int64_t{0}));

  // 2. Dispatch.
  const auto received = all_to_all_rows(sent, send_splits, recv_splits, *ep_);  // (source, expert) order
  last_received_rows_ = received.size(0);

  // 3. Regroup (source, expert) -> (expert, source), run each local expert on its slice.
  std::vector<int64_t> order, rows_per_expert(per_rank, 0);
  order.reserve(received.size(0));
  std::vector<int64_t> source_start(ep, 0);
  for (int s = 1; s < ep; ++s) source_start[s] = source_start[s - 1] + recv_splits[s - 1];
  for (int64_t j = 0; j < per_rank; ++j) {
    for (int s = 0; s < ep; ++s) {
      int64_t offset = source_start[s];
      for (int64_t i = 0; i < j; ++i) offset += rc[s * per_rank + i];
      for (int64_t r = 0; r < rc[s * per_rank + j]; ++r) order.push_back(offset + r);
      rows_per_expert[j] += rc[s * per_rank + j];
    }
  }
  const auto order_t = torch::tensor(order, torch::kInt64).to(grouped.device());
  const auto by_expert = received.index_select(0, order_t);
  const auto slices = by_expert.split_with_sizes(rows_per_expert);
  std::vector<torch::Tensor> outputs;
  const auto first = topology_.local_experts().first;
  for (int64_t j = 0; j < per_rank; ++j) {
    outputs.push_back(local_experts_[std::to_string(first + j)]->as<model::FeedForward>()->forward(slices[j]));
  }
  const auto expert_out = torch::cat(outputs, 0);
  auto inverse = torch::empty_like(order_t);
  inverse.index_copy_(0, order_t, torch::arange(order_t.size(0), order_t.options()));
  const auto restored = expert_out.index_select(0, inverse);

  // 4. Combine: back to the ranks the copies came from, in the layer's grouped order.
  return all_to_all_rows(restored, recv_splits, send_splits, *ep_);
}

void attach_expert_parallel(model::CausalLM& lm, const ParallelGroups& groups) {
  for (auto& moe : lm->moe_layers()) {
    moe->set_executor(std::make_shared<ExpertParallelExecutor>(groups.ep, groups.topology, moe->experts));
  }
}

model::CausalLM make_expert_parallel_model(const model::ModelConfig& config, const ParallelGroups& groups,
                                           uint64_t seed) {
  torch::manual_seed(seed);
  model::CausalLM full(config);
  const auto full_params = full->named_parameters();
  model::CausalLM local(config, groups.topology.local_experts());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : local->named_parameters()) p.value().copy_(full_params[p.key()]);
  }
  attach_expert_parallel(local, groups);
  return local;
}

}  // namespace moe::parallel
