// Test helpers: seeding + default-dtype guard, and tolerance checks that report the worst element.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

namespace moe::test {

/// Sets the default dtype (float64 for reference checks) and a seed; restores the dtype on exit.
class DtypeAndSeed {
 public:
  explicit DtypeAndSeed(caffe2::TypeMeta dtype = caffe2::TypeMeta::Make<double>(), uint64_t seed = 0)
      : saved_(torch::get_default_dtype()) {
    torch::set_default_dtype(dtype);
    torch::manual_seed(seed);
  }
  ~DtypeAndSeed() { torch::set_default_dtype(saved_); }

 private:
  caffe2::TypeMeta saved_;
};

/// |actual - expected| <= atol + rtol * |expected| everywhere; on failure names the worst element,
/// its values and the share of the tolerance it used.
inline ::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected, double atol,
                                            double rtol) {
  if (!actual.defined() || !expected.defined()) {
    return ::testing::AssertionFailure() << "undefined tensor (actual " << actual.defined() << ", expected "
                                         << expected.defined() << ")";
  }
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != expected " << expected.sizes();
  }
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  const auto a = actual.detach().to(torch::kFloat64).cpu(), e = expected.detach().to(torch::kFloat64).cpu();
  const auto err = (a - e).abs();
  const auto used = torch::where(err == 0, torch::zeros_like(err), err / (atol + rtol * e.abs()));
  const auto worst = used.flatten().argmax().item<int64_t>();
  const double share = used.flatten()[worst].item<double>();
  if (share <= 1.0 && !torch::isnan(a).any().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max error " << err.max().item<double>() << "; worst flat index " << worst
                                       << ": actual " << a.flatten()[worst].item<double>() << " vs expected "
                                       << e.flatten()[worst].item<double>() << " uses " << share
                                       << "x the tolerance (atol " << atol << ", rtol " << rtol << ")";
}

/// A gradient that was never produced (a parameter not used) counts as zeros.
inline torch::Tensor grad_or_zeros(const torch::Tensor& p) {
  return p.grad().defined() ? p.grad().clone() : torch::zeros_like(p);
}

}  // namespace moe::test
