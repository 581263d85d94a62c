// generate(): greedy equals the argmax of full forwards; batches of unequal prompts equal each
// prompt alone; EOS stop; the callback; seeded sampling; and the sampling filters on hand values.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>

#include <cmath>

#include "common/check.h"
#include "model/generate.h"
#include "tests/support.h"

using namespace moe;
using moe::test::all_close;

namespace {

model::CausalLM small_lm(uint64_t seed = 0) {
  torch::manual_seed(seed);
  model::CausalLM lm(test::small_moe_config(40));
  // Larger weights than the 0.02 init so that greedy continuations are not all one token.
  torch::NoGradGuard no_grad;
  for (auto& p : lm->parameters()) {
    if (p.dim() == 2) p.normal_(0, 0.3);
  }
  return lm;
}

// Greedy by full forwards, no cache.
std::vector<int64_t> naive_greedy(model::CausalLM& lm, std::vector<int64_t> ids, int64_t n) {
  torch::NoGradGuard no_grad;
  lm->eval();
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const auto logits = lm(torch::tensor(ids, torch::kInt64).unsqueeze(0)).logits;
    const auto next = logits[0][-1].argmax().item<int64_t>();
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

model::SamplingConfig greedy(int64_t n) {
  model::SamplingConfig s;
  s.temperature = 0;
  s.max_new_tokens = n;
  return s;
}

}  // namespace

TEST(Generate, GreedyWithCacheEqualsFullForwardArgmax) {
  test::DtypeAndSeed guard;
  auto lm = small_lm();
  const std::vector<int64_t> prompt{3, 7, 1, 9};
  const auto got = model::generate(lm, {prompt}, greedy(12));
  EXPECT_EQ(got[0], naive_greedy(lm, prompt, 12));
  std::set<int64_t> distinct(got[0].begin(), got[0].end());
  EXPECT_GT(distinct.size(), 1u) << "degenerate model: the test would not see ordering mistakes";
}

TEST(Generate, BatchOfUnequalPromptsEqualsEachAlone) {
  test::DtypeAndSeed guard;
  auto lm = small_lm();
  const std::vector<std::vector<int64_t>> prompts{{5}, {3, 7, 1, 9, 11, 2}, {8, 8, 4}};
  const auto batch = model::generate(lm, prompts, greedy(10));
  ASSERT_EQ(batch.size(), 3u);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(batch[i], model::generate(lm, {prompts[i]}, greedy(10))[0]) << "prompt " << i;
    EXPECT_EQ(batch[i], naive_greedy(lm, prompts[i], 10)) << "prompt " << i;
  }
}

TEST(Generate, StopsAtEosWithoutEmittingIt) {
  test::DtypeAndSeed guard;
  auto lm = small_lm();
  const std::vector<int64_t> prompt{3, 7, 1, 9};
  const auto free_run = model::generate(lm, {prompt}, greedy(12))[0];
  // The first token that did not appear earlier in the continuation becomes EOS.
  size_t cut = 1;
  while (cut < free_run.size() &&
         std::find(free_run.begin(), free_run.begin() + cut, free_run[cut]) != free_run.begin() + cut) {
    ++cut;
  }
  ASSERT_LT(cut, free_run.size());
  auto s = greedy(12);
  s.eos_token_id = free_run[cut];
  EXPECT_EQ(model::generate(lm, {prompt}, s)[0], std::vector<int64_t>(free_run.begin(), free_run.begin() + cut));
}

TEST(Generate, CallbackSeesEveryTokenInOrderAndLimitsHold) {
  test::DtypeAndSeed guard;
  auto lm = small_lm();
  std::vector<std::vector<int64_t>> streamed(2);
  const auto out = model::generate(lm, {{1, 2}, {3}}, greedy(7),
                                   [&](int64_t row, int64_t token) { streamed[row].push_back(token); });
  EXPECT_EQ(streamed, out);
  EXPECT_EQ(out[0].size(), 7u);
  EXPECT_EQ(out[1].size(), 7u);
  EXPECT_TRUE(lm->is_training()) << "generate must restore the training flag";
}

TEST(Generate, SeededSamplingIsReproducibleAndTopKOneIsGreedy) {
  test::DtypeAndSeed guard;
  auto lm = small_lm();
  model::SamplingConfig s;
  s.max_new_tokens = 20;
  s.temperature = 1.5;
  s.seed = 42;
  const auto a = model::generate(lm, {{4, 5}}, s);
  EXPECT_EQ(a, model::generate(lm, {{4, 5}}, s));
  s.seed = 43;
  EXPECT_NE(a, model::generate(lm, {{4, 5}}, s));
  s.top_k = 1;
  EXPECT_EQ(model::generate(lm, {{4, 5}}, s), model::generate(lm, {{4, 5}}, greedy(20)));
}

TEST(Generate, RefusesBadInput) {
  auto lm = small_lm();
  EXPECT_THROW(model::generate(lm, {}, greedy(3)), moe::InvalidArgument);
  EXPECT_THROW(model::generate(lm, {{}}, greedy(3)), moe::InvalidArgument);
  EXPECT_THROW(model::generate(lm, {{1, 40}}, greedy(3)), moe::InvalidArgument);
  auto s = greedy(3);
  s.temperature = -1;
  EXPECT_THROW(model::generate(lm, {{1}}, s), moe::InvalidArgument);
  EXPECT_THROW(model::generate(lm, {{1}}, greedy(100)), moe::InvalidArgument);  // beyond 64 positions
}

TEST(Sampling, OptionsOutsideTheirRangeAreRefusedByName) {
  const std::vector<std::pair<std::function<void(model::SamplingConfig&)>, std::string>> cases = {
      {[](auto& s) { s.top_p = 1.5; }, "top_p must be in (0, 1] (1 = off), got 1.5"},
      {[](auto& s) { s.top_p = 0; }, "top_p must be in (0, 1] (1 = off), got 0"},
      {[](auto& s) { s.top_p = NAN; }, "top_p must be in (0, 1]"},
      {[](auto& s) { s.top_k = -3; }, "top_k must be >= 0 (0 = off), got -3"},
      {[](auto& s) { s.temperature = INFINITY; }, "temperature must be finite and >= 0 (0 = greedy), got inf"},
      {[](auto& s) { s.repetition_penalty = 0; }, "repetition_penalty must be a finite positive number"},
      {[](auto& s) { s.max_new_tokens = -1; }, "max_new_tokens must be >= 0, got -1"},
  };
  for (const auto& [set, expected] : cases) {
    model::SamplingConfig s;
    set(s);
    const auto message = moe::test::refusal([&] { s.validate(); });
    EXPECT_NE(message.find(expected), std::string::npos) << message;
  }
  EXPECT_EQ(moe::test::refusal([] { model::SamplingConfig().validate(); }), "(no error)");
}

TEST(Sampling, RepetitionPenaltyMakesNegativeLogitsLessLikelyToo) {
  const auto logits = torch::tensor({-2.0, 3.0, 1.0, -0.5}).view({1, 4});
  const auto got = model::apply_repetition_penalty(logits, {{0, 1, 1}}, 2.0);
  EXPECT_TRUE(all_close(got, torch::tensor({-4.0, 1.5, 1.0, -0.5}).view({1, 4}), 0, 0));
  EXPECT_TRUE(torch::equal(model::apply_repetition_penalty(logits, {{0, 1}}, 1.0), logits));
}

TEST(Sampling, TopKKeepsTheKLargest) {
  const auto logits = torch::tensor({0.1, 2.0, -1.0, 1.5, 0.3}).view({1, 5});
  const auto got = model::filter_top_k(logits, 2);
  const double inf = INFINITY;
  EXPECT_TRUE(torch::equal(got, torch::tensor({-inf, 2.0, -inf, 1.5, -inf}).view({1, 5})));
  EXPECT_TRUE(torch::equal(model::filter_top_k(logits, 0), logits));
}

TEST(Sampling, TopPKeepsTheSmallestNucleus) {
  // Probabilities .5, .3, .15, .05 (in a shuffled order).
  const auto probs = torch::tensor({0.15, 0.5, 0.05, 0.3}, torch::kFloat64);
  const auto logits = probs.log().view({1, 4});
  const double inf = INFINITY;
  auto kept = [&](double p) { return model::filter_top_p(logits, p).isfinite().view({4}); };
  EXPECT_TRUE(torch::equal(kept(0.7), torch::tensor({false, true, false, true})));   // .5 + .3 reaches .7
  EXPECT_TRUE(torch::equal(kept(0.5), torch::tensor({false, true, false, false})));  // .5 alone reaches .5
  EXPECT_TRUE(torch::equal(kept(0.9), torch::tensor({true, true, false, true})));
  EXPECT_TRUE(torch::equal(kept(0.01), torch::tensor({false, true, false, false})));  // never empty
  EXPECT_TRUE(torch::equal(model::filter_top_p(logits, 1.0), logits));
  (void)inf;
}
