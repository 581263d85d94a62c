// What the routing's counting kernels (grouping_kernels.cu, aux_loss_kernels.cu) take, for the host
// code that chooses them.
#pragma once

namespace moe::model::kernels {

/// The most experts the counting kernels take (per-expert counters in shared memory; the grouping's
/// place kernel keeps one per warp of a block as well: 9 x 1024 x 4 bytes).
constexpr int kMaxCountedExperts = 1024;

}  // namespace moe::model::kernels
