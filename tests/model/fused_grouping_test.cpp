// The copies' grouping by expert in one operator (model/fused_grouping.h) against ATen's stable
// sort of the flat ids, on the CPU (the counting sort standing in for a GPU's) and on a GPU where
// one is visible: shapes from one copy to several tiles per CUDA block, skewed loads with long runs
// of ties, experts up to the kernels' 1,024; then inside group_by_expert against the operators,
// with and without a capacity. Integers: everything is compared exactly.
#include "model/fused_grouping.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "model/moe_feed_forward.h"
#include "tests/model/fused_kernel_checks.h"
#include "tests/support.h"

using namespace moe;
using namespace moe::test::fused;

namespace {

struct Case {
  int64_t tokens, top_k, experts;
  double skew;  // ids = floor(u^skew * E): 1 uniform, larger crowds the low experts
  std::string label() const {
    return "N=" + std::to_string(tokens) + " k=" + std::to_string(top_k) + " E=" + std::to_string(experts) + " skew " +
           std::to_string(skew);
  }
};

// 140,000 copies: the CUDA kernels' 128 blocks take 1,094 each (four full tiles and a partial one).
const Case kCases[] = {{1, 1, 1, 1.0},      {53, 2, 4, 1.0},      {300, 6, 64, 1.0},  {257, 1, 3, 4.0},
                       {1000, 8, 256, 3.0}, {9000, 2, 1024, 1.0}, {70000, 2, 8, 6.0}, {4096, 16, 16, 1.0}};

torch::Tensor choice_of(const Case& c) {
  const auto u = torch::rand({c.tokens, c.top_k}, torch::kFloat64);
  return (u.pow(c.skew) * c.experts).floor().clamp_max(c.experts - 1).to(torch::kInt64);
}

// What group_by_expert's operators compute, from ATen's stable sort.
model::CopyGrouping reference(const torch::Tensor& topk_idx, int64_t experts) {
  const auto flat = topk_idx.reshape({-1});
  const auto order = std::get<1>(flat.sort(/*stable=*/true, 0, /*descending=*/false));
  const auto position = torch::empty_like(order).scatter_(0, order, torch::arange(order.size(0)));
  return {order, order.div(topk_idx.size(1), "floor"), position, torch::bincount(flat, {}, experts)};
}

void expect_equal(const model::CopyGrouping& actual, const model::CopyGrouping& want, const std::string& label) {
  EXPECT_TRUE(torch::equal(actual.copy_order.cpu(), want.copy_order)) << label << ": copy_order";
  EXPECT_TRUE(torch::equal(actual.token_of_copy.cpu(), want.token_of_copy)) << label << ": token_of_copy";
  EXPECT_TRUE(torch::equal(actual.position_of_copy.cpu(), want.position_of_copy)) << label << ": position_of_copy";
  EXPECT_TRUE(torch::equal(actual.routed.cpu(), want.routed)) << label << ": routed";
}

}  // namespace

TEST(FusedGrouping, EqualsAStableSortOnEachDevice) {
  torch::manual_seed(11);
  for (const auto& device : test_devices()) {
    for (const auto& c : kCases) {
      const auto ids = choice_of(c);
      const auto label = c.label() + " on " + device.str();
      ASSERT_TRUE(model::fused_grouping_serves(ids.to(device), c.experts)) << label;
      const auto fused = model::fused_group_copies(ids.to(device), c.experts);
      EXPECT_EQ(fused.copy_order.device(), device) << label;
      expect_equal(fused, reference(ids, c.experts), label);
    }
  }
}

TEST(FusedGrouping, NoTokensGiveEmptyGroupsAndZeroCounts) {
  for (const auto& device : test_devices()) {
    const auto fused = model::fused_group_copies(torch::zeros({0, 2}, torch::kInt64).to(device), 5);
    EXPECT_EQ(fused.copy_order.numel(), 0) << device;
    EXPECT_EQ(fused.position_of_copy.numel(), 0) << device;
    EXPECT_TRUE(torch::equal(fused.routed.cpu(), torch::zeros({5}, torch::kInt64))) << device;
  }
}

TEST(FusedGrouping, ServesRouterChoicesAndRefusesOthers) {
  const auto ids = torch::zeros({5, 2}, torch::kInt64);
  EXPECT_TRUE(model::fused_grouping_serves(ids, 1024));
  model::set_fused_kernels_on_cpu(false);  // every CPU path, not only where it stands in for a GPU
  EXPECT_TRUE(model::fused_grouping_serves(ids, 4));
  model::set_fused_kernels_on_cpu(true);
  EXPECT_FALSE(model::fused_grouping_serves(ids, 1025));  // past the kernels' shared-memory counters
  EXPECT_FALSE(model::fused_grouping_serves(ids.to(torch::kInt32), 4));
  EXPECT_FALSE(model::fused_grouping_serves(ids.view({-1}), 4));
  EXPECT_FALSE(unfused([&] { return model::fused_grouping_serves(ids, 4); }));
  test::expect_refusal(
      [&] {
        model::fused_group_copies(torch::tensor({{0, 3}, {4, 1}}), 4);
      },
      {"moe::group_copies", "copy 2 names expert 4, not one of the 4"});
  test::expect_refusal([&] { model::fused_group_copies(torch::tensor({{0, -1}}), 4); }, {"copy 1 names expert -1"});
  test::expect_refusal([&] { model::fused_group_copies(ids, 1025); }, {"1025 experts are not within 1..1024"});
  test::expect_refusal([&] { model::fused_group_copies(ids.to(torch::kInt32), 4); },
                       {"topk_idx [5, 2] Int is not int64 [N, k]"});
}

// group_by_expert takes the operator (once) and returns what the operators return, also under a
// capacity (which keeps its second sort on the operator's order).
TEST(FusedGrouping, GroupByExpertEqualsTheOperators) {
  torch::manual_seed(13);
  for (const auto& device : test_devices()) {
    for (const int64_t capacity : {0, 1, 40}) {
      const Case c{300, 2, 8, 3.0};
      const auto ids = choice_of(c).to(device);
      const auto label = c.label() + " capacity " + std::to_string(capacity) + " on " + device.str();
      model::ExpertGrouping fused;
      EXPECT_EQ(calls_of("moe::group_copies", [&] { fused = model::group_by_expert(ids, c.experts, capacity); }), 1)
          << label;
      const auto want = unfused([&] { return model::group_by_expert(ids, c.experts, capacity); });
      expect_equal({fused.copy_order, fused.token_of_copy, fused.position_of_copy, fused.routed},
                   {want.copy_order.cpu(), want.token_of_copy.cpu(), want.position_of_copy.cpu(), want.routed.cpu()},
                   label);
      EXPECT_TRUE(torch::equal(fused.kept.cpu(), want.kept.cpu())) << label;
    }
  }
}
