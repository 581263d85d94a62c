// The rotary embedding in one pass: each thread reads an element and its partner D/2 away and
// writes both rotated, where ATen's operators take three passes (a product, a roll, an addcmul)
// and a cast, each writing a tensor as large as x (float32 for two of them).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "model/kernels/element_convert.cuh"
#include "model/kernels/grid.cuh"
#include "model/kernels/rotary_kernels.h"
#include "model/kernels/rotary_math.h"

namespace moe::model::kernels {

namespace {

template <typename T>
__global__ void rotary_kernel(const T* __restrict__ x, const float* __restrict__ cos,
                              const float* __restrict__ signed_sin, float sign, T* __restrict__ out, RotaryShape s) {
  const int64_t half = s.dim / 2;
  const int64_t items = s.batch * s.time * s.heads * half;
  for (int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = item % half, row = item / half;  // row: (b, t, h) in order
    const int64_t h = row % s.heads, bt = row / s.heads;
    const int64_t t = bt % s.time, b = bt / s.time;
    const T* in = x + b * s.stride_batch + t * s.stride_time + h * s.stride_head;
    const float* c = cos + bt * s.dim;
    const float* sn = signed_sin + bt * s.dim;
    const float first = to_float(in[j]), second = to_float(in[j + half]);
    T* o = out + row * s.dim;
    o[j] = from_float<T>(rotary_element(first, second, c[j], sn[j], sign));
    o[j + half] = from_float<T>(rotary_element(second, first, c[j + half], sn[j + half], sign));
  }
}

template <typename T>
cudaError_t launch_as(const void* x, const float* cos, const float* signed_sin, float sign, void* out,
                      const RotaryShape& s, cudaStream_t stream) {
  const int64_t items = s.batch * s.time * s.heads * (s.dim / 2);
  rotary_kernel<T><<<blocks_for(items), kThreads, 0, stream>>>(static_cast<const T*>(x), cos, signed_sin, sign,
                                                               static_cast<T*>(out), s);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rotary(ElementType type, const void* x, const float* cos, const float* signed_sin, float sign,
                          void* out, const RotaryShape& shape, cudaStream_t stream) {
  if (shape.batch * shape.time * shape.heads * shape.dim == 0) return cudaSuccess;
  return with_element_type(
      type, [&](auto t) { return launch_as<decltype(t)>(x, cos, signed_sin, sign, out, shape, stream); });
}

}  // namespace moe::model::kernels
