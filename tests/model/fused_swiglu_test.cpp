// The fused SwiGLU kernels (model/fused_swiglu.h). On the CPU: their element math
// (model/kernels/swiglu_math.h, the code the kernels run) against autograd in float64, and in
// bfloat16 against ATen's operators, which it must equal to the rounding points (the stores of
// silu(gate) and of grad * up). The operators moe::fused_swiglu(_backward) against ATen's on the
// same device (the fused path turned off), every dtype, through autograd: on the CPU (the element
// loop) and on a GPU where one is visible (the kernels, vector and scalar paths; what needs a GPU
// skips, saying so, without one).
//
// Tolerances: float64 math against autograd within 1e-13 relative (different but exact-in-theory
// formulas, e.g. silu' written as s(1 + x(1 - s))). bf16/fp16: at most 1 unit in the last place
// anywhere and at least 99% of elements bit for bit (on the CPU all are in bf16): the exponential
// may differ by an ulp of float32 between implementations, which changes a rounded bf16 value only
// near a tie, while a missing or extra rounding point changes a large share (checked: the same math
// without the stores misses the 99%). float32: 1e-5 relative plus 1e-6 of the largest value, since
// those last-bit differences show there, magnified where silu' crosses zero.
#include "model/fused_swiglu.h"

#include <c10/util/BFloat16.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>

#include "model/functional.h"
#include "model/fused_kernels.h"
#include "model/kernels/swiglu_math.h"
#include "tests/model/fused_kernel_checks.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;
using namespace moe::test::fused;

namespace {

// Gates over the range where silu bends and saturates, ups of both signs.
torch::Tensor sample_hidden(int64_t rows, int64_t inter, torch::ScalarType dtype, const torch::Device& device) {
  return (torch::randn({rows, 2 * inter}, torch::kFloat64) * 4).to(dtype).to(device);
}

// The element math over whole tensors on the CPU, computing in Acc and storing in Store.
template <typename Acc, typename Store>
struct HostMath {
  std::function<Acc(Acc)> round = [](Acc x) { return static_cast<Acc>(static_cast<Store>(x)); };

  torch::Tensor product(const torch::Tensor& hidden) const {
    const auto inter = hidden.size(1) / 2;
    const auto h = hidden.to(torch::kFloat64);
    auto out = torch::empty({hidden.size(0), inter}, torch::kFloat64);
    const auto in = h.accessor<double, 2>();
    auto o = out.accessor<double, 2>();
    for (int64_t r = 0; r < h.size(0); ++r) {
      for (int64_t c = 0; c < inter; ++c) {
        o[r][c] = static_cast<Store>(model::kernels::swiglu_product(Acc(in[r][c]), Acc(in[r][inter + c]), round));
      }
    }
    return out.to(hidden.scalar_type());
  }

  // [grad_hidden, product]
  std::pair<torch::Tensor, torch::Tensor> backward(const torch::Tensor& grad, const torch::Tensor& hidden) const {
    const auto inter = hidden.size(1) / 2;
    const auto h = hidden.to(torch::kFloat64), g = grad.to(torch::kFloat64);
    auto grad_hidden = torch::empty(h.sizes(), torch::kFloat64), product = torch::empty(g.sizes(), torch::kFloat64);
    const auto in = h.accessor<double, 2>(), up_grad = g.accessor<double, 2>();
    auto gh = grad_hidden.accessor<double, 2>();
    auto p = product.accessor<double, 2>();
    for (int64_t r = 0; r < h.size(0); ++r) {
      for (int64_t c = 0; c < inter; ++c) {
        const auto d = model::kernels::swiglu_backward(Acc(up_grad[r][c]), Acc(in[r][c]), Acc(in[r][inter + c]), round);
        gh[r][c] = static_cast<Store>(d.grad_gate);
        gh[r][inter + c] = static_cast<Store>(d.grad_up);
        p[r][c] = static_cast<Store>(d.product);
      }
    }
    return {grad_hidden.to(hidden.scalar_type()), product.to(hidden.scalar_type())};
  }
};

// ATen's operators on hidden's device: [grad_hidden, product] of silu(gate) * up.
std::pair<torch::Tensor, torch::Tensor> operators_backward(const torch::Tensor& grad, const torch::Tensor& hidden) {
  const auto g = model::gated_activation_backward(grad, hidden, "silu", /*with_product=*/true);
  return {g.grad_hidden, g.product};
}

torch::Tensor operators_product(const torch::Tensor& hidden) {
  const auto inter = hidden.size(-1) / 2;
  return model::activation(hidden.narrow(-1, 0, inter), "silu") * hidden.narrow(-1, inter, inter);
}

}  // namespace

TEST(SwigluMath, EqualsAutogradInFloat64) {
  torch::manual_seed(1);
  const auto hidden = sample_hidden(29, 40, torch::kFloat64, torch::kCPU);
  const auto upstream = torch::randn({29, 40}, torch::kFloat64);
  const HostMath<double, double> math;
  const auto leaf = hidden.clone().requires_grad_(true);
  const auto want = torch::silu(leaf.narrow(1, 0, 40)) * leaf.narrow(1, 40, 40);
  want.backward(upstream);
  EXPECT_TRUE(all_close(math.product(hidden), want.detach(), 1e-15, 1e-13));
  const auto [grad_hidden, product] = math.backward(upstream, hidden);
  EXPECT_TRUE(all_close(grad_hidden, leaf.grad(), 1e-15, 1e-13));
  EXPECT_TRUE(all_close(product, want.detach(), 1e-15, 1e-13));
}

TEST(SwigluMath, RoundsWhereTheOperatorsStoreInBFloat16) {
  torch::manual_seed(2);
  const auto hidden = sample_hidden(256, 96, torch::kBFloat16, torch::kCPU);
  const auto upstream = torch::randn({256, 96}).to(torch::kBFloat16);
  const HostMath<float, c10::BFloat16> math;
  EXPECT_TRUE(within_one_ulp_mostly_exact(math.product(hidden), operators_product(hidden)));
  const auto [grad_hidden, product] = math.backward(upstream, hidden);
  const auto [want_grad, want_product] = operators_backward(upstream, hidden);
  EXPECT_TRUE(within_one_ulp_mostly_exact(grad_hidden, want_grad));
  EXPECT_TRUE(within_one_ulp_mostly_exact(product, want_product));

  // The check sees the rounding points: the same math without the intermediate stores misses.
  HostMath<float, c10::BFloat16> unrounded;
  unrounded.round = [](float x) { return x; };
  EXPECT_LT(compare_ulps(unrounded.product(hidden), operators_product(hidden)).exact_share, 0.99);
  EXPECT_LT(compare_ulps(unrounded.backward(upstream, hidden).first, want_grad).exact_share, 0.99);
}

TEST(FusedSwiglu, ServesSiluInReducedPrecisionOnTheCpuAndOnGpusWhileEnabled) {
  const auto cpu = torch::zeros({4, 8}, torch::kBFloat16);
  EXPECT_TRUE(model::fused_swiglu_serves(cpu, "silu"));
  EXPECT_TRUE(model::fused_swiglu_serves(cpu.to(torch::kHalf), "silu"));
  EXPECT_FALSE(model::fused_swiglu_serves(cpu.to(torch::kFloat32), "silu"));  // ATen's vectorised ops
  EXPECT_FALSE(model::fused_swiglu_serves(cpu, "gelu"));
  EXPECT_FALSE(model::fused_swiglu_serves(torch::zeros({4, 7}, torch::kBFloat16), "silu"));
  model::set_fused_kernels_on_cpu(false);  // the default outside the benchmark's stand-in modes
  EXPECT_FALSE(model::fused_swiglu_serves(cpu, "silu"));
  model::set_fused_kernels_on_cpu(true);
  unfused([&] {
    EXPECT_FALSE(model::fused_kernels_enabled());
    EXPECT_FALSE(model::fused_swiglu_serves(cpu, "silu"));
    return 0;
  });
  EXPECT_TRUE(model::fused_kernels_enabled());
  test::expect_refusal(
      [] {
        model::fused_swiglu(torch::zeros({2, 4}, torch::kFloat64));
      },
      {"moe::fused_swiglu", "Double", "is not one of"});
  test::expect_refusal(
      [] {
        model::fused_swiglu(torch::zeros({2, 5}, torch::kBFloat16));
      },
      {"moe::fused_swiglu", "[2, 5]", "even last dimension"});
  test::expect_refusal(
      [&] {
        model::fused_swiglu_backward(torch::zeros({3, 4}, torch::kBFloat16), cpu);
      },
      {"fused_swiglu_backward", "does not match"});
  if (!torch::cuda::is_available()) return;
  const auto gpu = cpu.cuda();
  EXPECT_TRUE(model::fused_swiglu_serves(gpu, "silu"));
  EXPECT_TRUE(model::fused_swiglu_serves(gpu.to(torch::kFloat32), "silu"));
  EXPECT_FALSE(model::fused_swiglu_serves(gpu.to(torch::kFloat64), "silu"));
  EXPECT_FALSE(model::fused_swiglu_serves(gpu, "relu"));
}

// The operators on each device (the CPU always, a GPU where one is visible) against ATen's on the
// same device. Widths that take the GPU's 16-byte vector path (1408: config a's experts) and its
// scalar one (13), a 3-D input, no rows.
TEST(FusedSwiglu, EqualsTheOperatorsOnEachDevice) {
  torch::manual_seed(3);
  const std::vector<std::vector<int64_t>> shapes = {{64, 1408}, {33, 13}, {2, 5, 24}, {0, 16}};
  for (const auto& device : test_devices()) {
    for (const auto dtype : {torch::kBFloat16, torch::kFloat16, torch::kFloat32}) {
      for (const auto& shape : shapes) {
        const auto rows = shape.size() == 3 ? shape[0] * shape[1] : shape[0];
        auto hidden_sizes = shape;
        hidden_sizes.back() *= 2;
        const auto hidden = sample_hidden(rows, shape.back(), dtype, device).view(hidden_sizes);
        const auto upstream = torch::randn(shape, torch::kFloat64).to(dtype).to(device);
        const auto label = ::testing::Message() << device << " " << dtype << " " << torch::IntArrayRef(shape);
        EXPECT_TRUE(within_one_ulp_mostly_exact(model::fused_swiglu(hidden), operators_product(hidden))) << label;
        torch::Tensor product;
        const auto grad_hidden = model::fused_swiglu_backward(upstream, hidden, &product);
        const auto [want_grad, want_product] = unfused([&] { return operators_backward(upstream, hidden); });
        EXPECT_TRUE(within_one_ulp_mostly_exact(grad_hidden, want_grad)) << label;
        EXPECT_TRUE(within_one_ulp_mostly_exact(product, want_product)) << label;
        EXPECT_FALSE(model::fused_swiglu_backward(upstream, hidden).is_same(grad_hidden));
        const auto report = compare_ulps(grad_hidden, want_grad);
        std::printf("  %s: gradient %.4f%% bit for bit, max %ld ulp\n", label.GetString().c_str(),
                    100 * report.exact_share, long(report.max_ulps));
      }
    }
  }
}

// A tensor whose rows are contiguous but whose data starts off a 16-byte boundary takes the GPU
// kernels' scalar path; the values are the same.
TEST(FusedSwiglu, UnalignedDataTakesTheScalarPathOnTheGpu) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(4);
  const auto storage = sample_hidden(1, 1 + 48 * 64, torch::kBFloat16, torch::kCUDA).view({-1});
  const auto hidden = storage.narrow(0, 1, 48 * 2 * 64).view({48, 2 * 64});
  ASSERT_TRUE(hidden.is_contiguous());
  ASSERT_NE(reinterpret_cast<uintptr_t>(hidden.const_data_ptr()) % 16, 0u);
  const auto upstream = torch::randn({48, 64}, hidden.options());
  EXPECT_TRUE(within_one_ulp_mostly_exact(model::fused_swiglu(hidden), operators_product(hidden)));
  const auto [want_grad, want_product] = unfused([&] { return operators_backward(upstream, hidden); });
  EXPECT_TRUE(within_one_ulp_mostly_exact(model::fused_swiglu_backward(upstream, hidden), want_grad));
}

// What the model calls: gated_activation with autograd, fused against unfused, on each device.
TEST(FusedSwiglu, GatedActivationThroughAutogradOnEachDevice) {
  torch::manual_seed(5);
  for (const auto& device : test_devices()) {
    const auto values = sample_hidden(300, 256, torch::kBFloat16, device);
    const auto upstream = torch::randn({300, 256}, torch::kFloat64).to(torch::kBFloat16).to(device);
    const auto fused = values.clone().requires_grad_(true), plain = values.clone().requires_grad_(true);
    ASSERT_TRUE(model::fused_swiglu_serves(fused, "silu"));
    torch::Tensor out;
    EXPECT_EQ(calls_of("moe::fused_swiglu", [&] { out = model::gated_activation(fused, "silu"); }), 1) << device;
    const auto want = unfused([&] { return model::gated_activation(plain, "silu"); });
    EXPECT_TRUE(within_one_ulp_mostly_exact(out, want)) << device;
    out.backward(upstream);
    unfused([&] {
      want.backward(upstream);
      return 0;
    });
    EXPECT_TRUE(within_one_ulp_mostly_exact(fused.grad(), plain.grad())) << device;
  }
}
