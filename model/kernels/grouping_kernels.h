// Launchers of the copies' grouping by expert (grouping_kernels.cu) on raw device pointers: plain
// C++, no LibTorch. model/fused_grouping.h is what the model calls.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/kernels/expert_limits.h"

namespace moe::model::kernels {

/// copies = tokens x top_k expert ids, experts at most kMaxCountedExperts, copies below 2^31.
struct GroupingShape {
  int64_t copies;
  int top_k, experts;
};

/// The int32 scratch the launch needs (one count per block and expert).
int64_t grouping_workspace_ints(const GroupingShape& shape);

/// Counting sort of ids [copies] int64 in [0, experts): copy_order [copies] (the flat indices by
/// expert, ties in index order), token_of_copy [copies] (copy_order / top_k), position_of_copy
/// [copies] (copy_order's inverse), routed [experts] (copies per expert), all int64. Two kernels:
/// per-block counts, then each block places its copies after the earlier experts' and blocks'.
cudaError_t launch_group_copies(const int64_t* ids, int64_t* copy_order, int64_t* token_of_copy,
                                int64_t* position_of_copy, int64_t* routed, int* workspace, const GroupingShape& shape,
                                cudaStream_t stream);

}  // namespace moe::model::kernels
