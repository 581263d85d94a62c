// The routed SwiGLU experts of one layer as two grouped matrix products over all of them at once
// (ATen's _grouped_mm: one CUTLASS kernel on sm90 bfloat16, a per-group fallback elsewhere):
//   [gate | up] = rows_e @ [gate_e; up_e]^T,  a = act(gate) * up,  out_e = a_e @ down_e^T
// for every expert e on its contiguous slice of rows. The slice lengths stay on the device, so
// this never synchronises with the host. The weights are stacked per call from the per-expert
// parameters: parameter names (checkpoints, export, gradient sync) do not change.
#pragma once
#include <torch/types.h>

#include <string>
#include <vector>

#include "model/feed_forward.h"

namespace moe::model {

/// rows: [M, hidden], the first counts[0] rows for experts[0], the next counts[1] for experts[1],
/// ...; counts: [experts] int64 (any device). Rows past sum(counts) get zero output and zero
/// gradient: masked on both sides (the kernel writes neither), unless all_rows_counted promises
/// sum(counts) == M (no copy dropped), which spares two passes over [M, hidden] each way.
/// dtype: the dtype of the matrix products (bfloat16 under autocast). Returns [M, hidden] in
/// dtype. Differentiable in rows and every expert weight.
torch::Tensor grouped_swiglu(const torch::Tensor& rows, const torch::Tensor& counts,
                             const std::vector<FeedForward>& experts, c10::ScalarType dtype, bool training,
                             bool all_rows_counted = false);

}  // namespace moe::model
