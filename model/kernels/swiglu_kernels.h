// Launchers of the fused SwiGLU kernels (swiglu_kernels.cu) on raw device pointers: plain C++, no
// LibTorch, so that nvcc compiles the kernels without LibTorch's headers. model/fused_swiglu.h is
// what the model calls. Layouts: hidden [rows, 2I] = [gate | up] per row, everything contiguous.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "model/kernels/element_type.h"

namespace moe::model::kernels {

/// out[r, c] = silu(gate[r, c]) * up[r, c]. Returns the launch's error (cudaSuccess when queued).
cudaError_t launch_swiglu_forward(ElementType type, const void* hidden, void* out, int64_t rows, int64_t inter,
                                  cudaStream_t stream);

/// From grad [rows, I]: grad_hidden [rows, 2I] = [d gate | d up] and, where product is not null,
/// the forward's product again [rows, I], in one pass over grad and hidden.
cudaError_t launch_swiglu_backward(ElementType type, const void* grad, const void* hidden, void* grad_hidden,
                                   void* product, int64_t rows, int64_t inter, cudaStream_t stream);

}  // namespace moe::model::kernels
