// Fused SwiGLU forward and backward: one pass each, where ATen's operators take two (silu, mul)
// and four (silu, mul, mul, silu_backward), each writing a [rows, I] intermediate. Each thread
// handles kVector consecutive columns of one row through 16-byte loads where the rows allow it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "model/kernels/element_convert.cuh"
#include "model/kernels/grid.cuh"
#include "model/kernels/swiglu_kernels.h"
#include "model/kernels/swiglu_math.h"

namespace moe::model::kernels {

namespace {

template <typename T, int kVector>
struct alignas(sizeof(T) * kVector) Pack {
  T v[kVector];
};

// Row r, first column c of work item `item`; kVector divides inter.
struct Place {
  int64_t row, column;
};
template <int kVector>
__device__ inline Place place_of(int64_t item, int64_t inter) {
  const int64_t per_row = inter / kVector;
  const int64_t row = item / per_row;
  return {row, (item - row * per_row) * kVector};
}

template <typename T, int kVector>
__global__ void swiglu_forward_kernel(const T* __restrict__ hidden, T* __restrict__ out, int64_t rows, int64_t inter) {
  using P = Pack<T, kVector>;
  const int64_t items = rows * (inter / kVector);
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const auto [row, column] = place_of<kVector>(item, inter);
    const T* gate_row = hidden + row * 2 * inter;
    const P gate = *reinterpret_cast<const P*>(gate_row + column);
    const P up = *reinterpret_cast<const P*>(gate_row + inter + column);
    P result;
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      result.v[j] = from_float<T>(swiglu_product(to_float(gate.v[j]), to_float(up.v[j]), RoundTo<T>{}));
    }
    *reinterpret_cast<P*>(out + row * inter + column) = result;
  }
}

template <typename T, int kVector>
__global__ void swiglu_backward_kernel(const T* __restrict__ grad, const T* __restrict__ hidden,
                                       T* __restrict__ grad_hidden, T* __restrict__ product, int64_t rows,
                                       int64_t inter) {
  using P = Pack<T, kVector>;
  const int64_t items = rows * (inter / kVector);
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const auto [row, column] = place_of<kVector>(item, inter);
    const int64_t hidden_offset = row * 2 * inter + column, out_offset = row * inter + column;
    const P g = *reinterpret_cast<const P*>(grad + out_offset);
    const P gate = *reinterpret_cast<const P*>(hidden + hidden_offset);
    const P up = *reinterpret_cast<const P*>(hidden + hidden_offset + inter);
    P grad_gate, grad_up, recomputed;
#pragma unroll
    for (int j = 0; j < kVector; ++j) {
      const auto d = swiglu_backward(to_float(g.v[j]), to_float(gate.v[j]), to_float(up.v[j]), RoundTo<T>{});
      grad_gate.v[j] = from_float<T>(d.grad_gate);
      grad_up.v[j] = from_float<T>(d.grad_up);
      recomputed.v[j] = from_float<T>(d.product);
    }
    *reinterpret_cast<P*>(grad_hidden + hidden_offset) = grad_gate;
    *reinterpret_cast<P*>(grad_hidden + hidden_offset + inter) = grad_up;
    if (product != nullptr) *reinterpret_cast<P*>(product + out_offset) = recomputed;
  }
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The widest vector (16 bytes) where inter and every pointer allow it, else one element per thread.
template <typename T>
cudaError_t forward_as(const void* hidden, void* out, int64_t rows, int64_t inter, cudaStream_t stream) {
  constexpr int kWide = 16 / sizeof(T);
  const auto* in = static_cast<const T*>(hidden);
  auto* result = static_cast<T*>(out);
  if (inter % kWide == 0 && aligned(hidden, 16) && aligned(out, 16)) {
    swiglu_forward_kernel<T, kWide><<<blocks_for(rows * inter / kWide), kThreads, 0, stream>>>(in, result, rows, inter);
  } else {
    swiglu_forward_kernel<T, 1><<<blocks_for(rows * inter), kThreads, 0, stream>>>(in, result, rows, inter);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_as(const void* grad, const void* hidden, void* grad_hidden, void* product, int64_t rows,
                        int64_t inter, cudaStream_t stream) {
  constexpr int kWide = 16 / sizeof(T);
  const auto* g = static_cast<const T*>(grad);
  const auto* h = static_cast<const T*>(hidden);
  auto* gh = static_cast<T*>(grad_hidden);
  auto* p = static_cast<T*>(product);
  const bool wide = inter % kWide == 0 && aligned(grad, 16) && aligned(hidden, 16) && aligned(grad_hidden, 16) &&
                    (product == nullptr || aligned(product, 16));
  if (wide) {
    swiglu_backward_kernel<T, kWide>
        <<<blocks_for(rows * inter / kWide), kThreads, 0, stream>>>(g, h, gh, p, rows, inter);
  } else {
    swiglu_backward_kernel<T, 1><<<blocks_for(rows * inter), kThreads, 0, stream>>>(g, h, gh, p, rows, inter);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_swiglu_forward(ElementType type, const void* hidden, void* out, int64_t rows, int64_t inter,
                                  cudaStream_t stream) {
  if (rows == 0 || inter == 0) return cudaSuccess;
  return with_element_type(type, [&](auto t) { return forward_as<decltype(t)>(hidden, out, rows, inter, stream); });
}

cudaError_t launch_swiglu_backward(ElementType type, const void* grad, const void* hidden, void* grad_hidden,
                                   void* product, int64_t rows, int64_t inter, cudaStream_t stream) {
  if (rows == 0 || inter == 0) return cudaSuccess;
  return with_element_type(
      type, [&](auto t) { return backward_as<decltype(t)>(grad, hidden, grad_hidden, product, rows, inter, stream); });
}

}  // namespace moe::model::kernels
