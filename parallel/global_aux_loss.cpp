#include "parallel/global_aux_loss.h"

#include <torch/torch.h>

namespace moe::parallel {

void use_global_batch_aux_loss(model::CausalLM& lm, std::shared_ptr<Communicator> data_parallel) {
  for (auto& moe : lm->moe_layers()) {
    moe->gate->set_count_reducer([comm = data_parallel](const torch::Tensor& counts) {
      auto total = counts.detach().clone();
      comm->all_reduce(total, ReduceOp::kSum);
      return total;
    });
  }
}

}  // namespace moe::parallel
