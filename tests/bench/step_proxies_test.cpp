// The step proxies (bench/step_proxies.h) count what they promise on small known programs:
// launches of the operators that do work (not views, not composites twice, a multi-tensor call
// once), host synchronisations, bytes written by elementwise operators, bytes allocated and the
// peak, each by region, forward and backward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "bench/step_proxies.h"
#include "common/step_regions.h"

namespace moe::bench {
namespace {

constexpr int64_t kMiB = 1 << 20;

// Before any tensor: every free during a recording is then counted.
const bool kTracking = (track_cpu_allocations(), true);

torch::Tensor floats(int64_t n) { return torch::ones({n}, torch::kFloat32); }

TEST(StepProxies, CountsEachOperatorThatDoesWorkOnce) {
  const auto a = floats(1000), b = floats(1000), c = floats(1000);
  ProxyRecorder recorder(torch::kCPU);
  const auto y = a * b + c;  // mul, add: two kernels, 4000 bytes written each
  const auto z = y * 2.5;    // mul by a scalar: the CPU's mul converts it first, still one kernel
  const auto p = recorder.result();
  EXPECT_EQ(p.total.launches, 3) << format_proxies(p);
  EXPECT_EQ(p.launches_by_op.at("aten::mul"), 2);
  EXPECT_EQ(p.launches_by_op.at("aten::add"), 1);
  EXPECT_EQ(p.total.elementwise_bytes, 3 * 4000);
  EXPECT_EQ(p.total.host_syncs, 0);
}

TEST(StepProxies, ViewsAndAllocationsAreNoLaunches) {
  const auto x = torch::ones({4, 6});
  ProxyRecorder recorder(torch::kCPU);
  auto v = x.view({6, 4}).transpose(0, 1).narrow(0, 1, 2).unsqueeze(0).expand({3, 2, 6});
  auto e = torch::empty({128});
  const auto p = recorder.result();
  EXPECT_EQ(p.total.launches, 0) << "launched: " << format_proxies(p);
  EXPECT_EQ(p.total.elementwise_bytes, 0);
}

TEST(StepProxies, ACompositeCountsItsKernelsOnly) {
  const auto x = torch::randn({8, 16});
  ProxyRecorder recorder(torch::kCPU);
  const auto y = x.softmax(-1);  // aten::softmax calls aten::_softmax, the kernel
  auto z = x.to(torch::kFloat64);  // aten::to -> _to_copy -> empty_strided + copy_ (the kernel)
  const auto p = recorder.result();
  EXPECT_EQ(p.total.launches, 2) << format_proxies(p);
  EXPECT_EQ(p.launches_by_op.at("aten::_softmax"), 1);
  EXPECT_EQ(p.launches_by_op.at("aten::copy_"), 1);
  EXPECT_EQ(p.total.elementwise_bytes, 8 * 16 * 8);  // the fp64 copy; softmax is a reduction
}

TEST(StepProxies, AMultiTensorCallIsOneLaunchWritingEveryTensor) {
  std::vector<torch::Tensor> list;
  for (int i = 0; i < 5; ++i) list.push_back(floats(100 * (i + 1)));
  ProxyRecorder recorder(torch::kCPU);
  at::_foreach_mul_(list, 2.0);  // on the CPU, five mul_ calls inside; one kernel on a GPU
  const auto p = recorder.result();
  EXPECT_EQ(p.total.launches, 1) << format_proxies(p);
  EXPECT_EQ(p.launches_by_op.at("aten::_foreach_mul_"), 1);
  EXPECT_EQ(p.total.elementwise_bytes, 4 * 100 * (1 + 2 + 3 + 4 + 5));
}

TEST(StepProxies, CountsHostSynchronisations) {
  const auto x = torch::tensor({0.0f, 1.0f, 0.0f, 2.0f});
  const auto first_and_last = torch::tensor({int64_t{0}, int64_t{3}});
  ProxyRecorder recorder(torch::kCPU);
  EXPECT_EQ(x.sum().item<float>(), 3.0f);  // a scalar read
  EXPECT_EQ(torch::nonzero(x).size(0), 2);  // a size that depends on the data
  EXPECT_EQ(x.to(torch::kCPU).numel(), 4);  // a move to the host (a no-op here, a copy on a GPU)
  const auto kept = x.masked_select(x > 0);
  EXPECT_EQ(x.index({x > 0}).numel(), 2);                       // a mask: a nonzero inside
  EXPECT_EQ(x.index({first_and_last}).numel(), 2);  // integer indices: no sync
  const auto p = recorder.result();
  EXPECT_EQ(p.total.host_syncs, 5) << format_proxies(p);
  EXPECT_EQ(p.syncs_by_op.at("step: aten::index"), 1);
  EXPECT_EQ(p.syncs_by_op.at("step: aten::masked_select"), 1);
  EXPECT_EQ(p.syncs_by_op.at("step: aten::nonzero"), 1);
  EXPECT_EQ(p.syncs_by_op.at("step: aten::to (to host)"), 1);
}

TEST(StepProxies, AllocatedBytesAndPeakAboveTheStart) {
  auto before = torch::empty({2 * kMiB}, torch::kFloat32);  // 8 MiB live at the start
  ProxyRecorder recorder(torch::kCPU);
  {
    auto four = torch::empty({kMiB}, torch::kFloat32);
    auto two = torch::empty({kMiB / 2}, torch::kFloat32);  // peak: 6 MiB above the start
  }
  before.reset();  // freeing what was live before does not hide a later peak
  auto ten = torch::empty({10 * kMiB / 4}, torch::kFloat32);  // live: -8 + 10 = 2 MiB
  const auto p = recorder.result();
  EXPECT_EQ(p.total.allocated_bytes, 16 * kMiB);
  EXPECT_EQ(p.peak_bytes, 6 * kMiB);
}

TEST(StepProxies, AttributesToTheInnermostRegionForwardAndBackward) {
  const auto w = torch::ones({64}, torch::requires_grad());
  const auto x = floats(64);
  ProxyRecorder recorder(torch::kCPU);
  set_region_recorder(&recorder);
  torch::Tensor loss;
  {
    ScopedRegion forward("forward");
    const auto h = x * w;  // forward: mul
    {
      ScopedRegion inner("experts");
      loss = h.exp().sum();  // experts: exp, sum
    }
  }
  {
    ScopedRegion backward("backward");
    loss.backward();
  }
  set_region_recorder(nullptr);
  const auto p = recorder.result();
  EXPECT_EQ(p.by_region.at("forward").launches, 1) << format_proxies(p);
  EXPECT_EQ(p.by_region.at("experts").launches, 2) << format_proxies(p);
  // exp's and mul's backward: at least the two products of the chain rule (w's gradient included).
  EXPECT_GE(p.by_region.at("backward").launches, 2) << format_proxies(p);
  EXPECT_EQ(p.total.launches, p.by_region.at("forward").launches + p.by_region.at("experts").launches +
                                  p.by_region.at("backward").launches);
  EXPECT_TRUE(w.grad().defined());
}

TEST(StepProxies, KeysBackwardLaunchesByTheAutogradNodeThatRanThem) {
  const auto w = torch::ones({64}, torch::requires_grad());
  const auto x = floats(64).to(torch::kBFloat16);
  ProxyRecorder recorder(torch::kCPU);
  set_region_recorder(&recorder);
  torch::Tensor loss;
  {
    ScopedRegion forward("forward");
    loss = (w.to(torch::kBFloat16) * x).sum();  // the cast of a weight under autocast, in small
  }
  {
    ScopedRegion backward("backward");
    loss.backward();
  }
  set_region_recorder(nullptr);
  const auto p = recorder.result();
  auto launched_from = [&](const std::string& prefix) {
    int64_t n = 0;
    for (const auto& [origin, count] : p.launches_by_origin) n += origin.rfind(prefix, 0) == 0 ? count : 0;
    return n;
  };
  // The gradient's cast back to float32 runs inside the cast's autograd node; forward operators
  // carry their region alone.
  EXPECT_GE(launched_from("backward: ToCopyBackward0: "), 1) << format_proxies(p);
  EXPECT_GE(launched_from("backward: MulBackward0: "), 1) << format_proxies(p);
  EXPECT_EQ(launched_from("forward: "), p.by_region.at("forward").launches) << format_proxies(p);
  EXPECT_EQ(launched_from(""), p.total.launches);
  int64_t bytes = 0;
  for (const auto& [origin, b] : p.elementwise_bytes_by_origin) bytes += b;
  EXPECT_EQ(bytes, p.total.elementwise_bytes);
}

TEST(StepProxies, OneRecorderAtATime) {
  ProxyRecorder first(torch::kCPU);
  EXPECT_THROW(ProxyRecorder second(torch::kCPU), std::exception);
}

}  // namespace
}  // namespace moe::bench
