// FusedAdamW (ATen's multi-tensor kernel) equals LibTorch's torch::optim::AdamW: the same weights
// after several steps with two parameter groups (with and without weight decay), a changing
// learning rate and a parameter without gradient; on the CPU, and on CUDA where one is visible.
// Both compute in float32; the tolerance (2e-6 relative) is a few float32 roundings per step.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/support.h"
#include "trainer/optim/fused_adamw.h"
#include "trainer/optim/optimizer.h"

using namespace moe;

namespace {

std::vector<torch::Tensor> make_params(const torch::Device& device) {
  torch::manual_seed(0);
  return {torch::randn({8, 5}, device), torch::randn({5}, device), torch::randn({3, 4}, device),
          torch::randn({7}, device)};
}

template <typename Optimizer>
std::vector<torch::Tensor> train(const torch::Device& device) {
  auto params = make_params(device);
  for (auto& p : params) p.requires_grad_(true);
  using Options = torch::optim::AdamWOptions;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{params[0], params[2]},
                      std::make_unique<Options>(Options(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1)));
  groups.emplace_back(std::vector<torch::Tensor>{params[1], params[3]},
                      std::make_unique<Options>(Options(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
  Optimizer optimizer(std::move(groups), Options(1e-2));
  torch::manual_seed(1);
  for (int step = 0; step < 6; ++step) {
    optimizer.zero_grad();
    // params[3] gets no gradient on even steps: it must be left alone then.
    auto loss = (params[0].sin() * 3).sum() + params[1].square().sum() + (params[2] * torch::randn({3, 4}, device)).sum();
    if (step % 2 == 1) loss = loss + params[3].cos().sum();
    loss.backward();
    trainer::set_lr(optimizer, 1e-2 * (1.0 - 0.1 * step));
    optimizer.step();
  }
  std::vector<torch::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().cpu());
  return out;
}

void expect_same_updates(const torch::Device& device) {
  const auto want = train<torch::optim::AdamW>(device);
  const auto got = train<trainer::FusedAdamW>(device);
  const auto start = make_params(torch::kCPU);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_FALSE(torch::equal(want[i], start[i])) << "parameter " << i << " never moved";
    EXPECT_TRUE(test::all_close(got[i], want[i], 1e-6, 2e-6)) << "parameter " << i;
  }
}

}  // namespace

TEST(FusedAdamW, EqualsLibTorchAdamWOnCpu) { expect_same_updates(torch::kCPU); }

TEST(FusedAdamW, EqualsLibTorchAdamWOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible: tested on the GPU machine";
  expect_same_updates(torch::Device(torch::kCUDA, 0));
}

// Clipping inside the kernel (scale_next_gradients) equals scaling the gradients first. Adam hardly
// sees a gradient's scale, so eps is large here: then the scale changes the update measurably.
TEST(FusedAdamW, ScaledGradientsEqualPrescaledGradients) {
  auto run = [](bool in_kernel, double factor) {
    torch::manual_seed(0);
    auto p = torch::randn({6, 3}).requires_grad_(true);
    trainer::FusedAdamW optimizer({p}, torch::optim::AdamWOptions(1e-2).weight_decay(0.1).eps(1.0));
    for (int step = 0; step < 3; ++step) {
      optimizer.zero_grad();
      (p.sin() * 7).sum().backward();
      if (in_kernel) {
        optimizer.scale_next_gradients(factor);
      } else {
        torch::NoGradGuard no_grad;
        p.mutable_grad().mul_(factor);
      }
      optimizer.step();
    }
    return p.detach().clone();
  };
  const auto in_kernel = run(true, 0.25);
  EXPECT_TRUE(test::all_close(in_kernel, run(false, 0.25), 1e-6, 2e-6));
  EXPECT_GT((in_kernel - run(false, 1.0)).abs().max().item<double>(), 1e-4) << "the scale must matter here";
}

TEST(FusedAdamW, RefusesAmsgrad) {
  auto p = torch::randn({3}).requires_grad_(true);
  trainer::FusedAdamW optimizer({p}, torch::optim::AdamWOptions(1e-3).amsgrad(true));
  p.sum().backward();
  EXPECT_THROW(optimizer.step(), std::exception);
}
