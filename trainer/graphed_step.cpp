#include "trainer/graphed_step.h"

#include <torch/torch.h>

#include "common/check.h"
#include "trainer/device.h"

#ifdef MOE_TORCH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace moe::trainer {

#ifdef MOE_TORCH_CUDA

struct GraphedStep::Impl {
  model::CausalLM lm = nullptr;
  bool autocast;
  torch::Tensor inputs, targets;
  model::CausalLMOutput out;
  at::cuda::CUDAGraph graph;

  void forward_backward() {
    {
      AutocastScope scope(autocast);
      out = lm(inputs, targets);
    }
    out.loss.backward();
    out.logits = torch::Tensor();  // not needed after the backward: its memory goes back to the pool
  }
};

GraphedStep::GraphedStep(model::CausalLM lm, int64_t batch, int64_t seq, bool autocast)
    : impl_(std::make_unique<Impl>()) {
  const auto device = lm->parameters().front().device();
  MOE_CHECK(device.is_cuda(), "CUDA graphs need the model on a GPU, it is on ", device.str());
  impl_->lm = lm;
  impl_->autocast = autocast;
  const auto options = torch::TensorOptions(torch::kInt64).device(device);
  impl_->inputs = torch::zeros({batch, seq}, options);
  impl_->targets = torch::zeros({batch, seq}, options);
  // Warm-up on the capture stream: libraries create their handles and workspaces outside the capture.
  auto main = at::cuda::getCurrentCUDAStream(device.index());
  auto side = at::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
  at::cuda::CUDAEvent ready;
  ready.record(main);
  ready.block(side);  // the side stream starts after the work queued so far
  {
    c10::cuda::CUDAStreamGuard guard(side);
    for (int i = 0; i < 3; ++i) {
      lm->zero_grad();
      impl_->forward_backward();
    }
    lm->zero_grad();  // the capture allocates the gradients in the graph's memory pool
    impl_->graph.capture_begin();
    impl_->forward_backward();
    impl_->graph.capture_end();
  }
  at::cuda::CUDAEvent captured;
  captured.record(side);
  captured.block(main);
}

GraphedStep::~GraphedStep() = default;

const model::CausalLMOutput& GraphedStep::run(const torch::Tensor& inputs, const torch::Tensor& targets) {
  MOE_CHECK(inputs.sizes() == impl_->inputs.sizes() && targets.sizes() == impl_->targets.sizes(),
            "the CUDA graph was captured for batches of ", impl_->inputs.sizes(), ", got ", inputs.sizes());
  impl_->inputs.copy_(inputs, /*non_blocking=*/true);
  impl_->targets.copy_(targets, /*non_blocking=*/true);
  impl_->graph.replay();
  return impl_->out;
}

#else

struct GraphedStep::Impl {};

GraphedStep::GraphedStep(model::CausalLM, int64_t, int64_t, bool) {
  MOE_CHECK(false, "CUDA graphs need a LibTorch with CUDA (this build has none)");
}
GraphedStep::~GraphedStep() = default;
const model::CausalLMOutput& GraphedStep::run(const torch::Tensor&, const torch::Tensor&) {
  MOE_CHECK(false, "CUDA graphs need a LibTorch with CUDA (this build has none)");
  static model::CausalLMOutput none;
  return none;
}

#endif

}  // namespace moe::trainer
