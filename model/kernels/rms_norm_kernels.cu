// RMSNorm in one pass each way, the output written in the dtype of the products
// that read it and, where a residual's add comes before it, that add in the
// same pass: a warp per row reduces the squares (forward) or the weighted dot
// with the gradient (backward) and writes the row, where ATen writes the sum,
// reads it back, writes float32 that each consumer casts, and in the backward
// casts each consumer's gradient to float32, adds them, runs the norm's kernel,
// adds the residual's gradient and casts it for the branch. The weight's
// gradient: column sums over chunks of rows, added by the caller
// (deterministic).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "model/kernels/element_convert.cuh"
#include "model/kernels/grid.cuh"
#include "model/kernels/rms_norm_kernels.h"
#include "model/kernels/rms_norm_math.h"

namespace moe::model::kernels {

namespace {

constexpr int kWarp = 32;

__device__ inline float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ inline int lane_of_thread() { return threadIdx.x % kWarp; }
__device__ inline int64_t first_row_of_warp() { return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; }
__device__ inline int64_t warps_in_grid() { return int64_t(gridDim.x) * (blockDim.x / kWarp); }

// One warp per row, grid-stride over the rows.
template <typename O, typename D>
__global__ void rms_norm_forward_kernel(RmsNormForward p) {
  const int lane = lane_of_thread();
  const auto *delta = static_cast<const D *>(p.delta);
  for (int64_t row = first_row_of_warp(); row < p.rows; row += warps_in_grid()) {
    const int64_t base = row * p.dim;
    // The input: x, or x + delta written once (float32, as ATen's add of a bf16
    // term to float32).
    const float *in = p.x + base;
    if (delta != nullptr) {
      for (int64_t j = lane; j < p.dim; j += kWarp) p.sum[base + j] = p.x[base + j] + to_float(delta[base + j]);
      __syncwarp();
      in = p.sum + base;
    }
    float squares = 0.f;
    for (int64_t j = lane; j < p.dim; j += kWarp) squares += in[j] * in[j];
    const float r = rms_inverse(warp_sum(squares), p.dim, p.eps);
    O *out = static_cast<O *>(p.out) + base;
    for (int64_t j = lane; j < p.dim; j += kWarp) out[j] = from_float<O>(rms_norm_element(in[j], r, p.weight[j]));
    if (lane == 0) p.rstd[row] = r;
  }
}

template <typename G, typename D>
__global__ void rms_norm_grad_input_kernel(RmsNormBackward p) {
  const int lane = lane_of_thread();
  const auto *grad = static_cast<const G *>(p.grad);
  auto *grad_delta = static_cast<D *>(p.grad_delta);
  for (int64_t row = first_row_of_warp(); row < p.rows; row += warps_in_grid()) {
    const int64_t base = row * p.dim;
    const G *g = grad + base;
    const float *in = p.input + base;
    float dot = 0.f;
    for (int64_t j = lane; j < p.dim; j += kWarp) dot += p.weight[j] * to_float(g[j]) * in[j];
    const float r = p.rstd[row];
    const float correction = rms_grad_correction(warp_sum(dot), r, p.dim);
    for (int64_t j = lane; j < p.dim; j += kWarp) {
      float d = rms_norm_grad_element(to_float(g[j]), in[j], p.weight[j], r, correction);
      if (p.grad_sum != nullptr) d += p.grad_sum[base + j];
      p.grad_input[base + j] = d;
      if (grad_delta != nullptr) grad_delta[base + j] = from_float<D>(d);
    }
  }
}

// Block (32 columns) x (8 row lanes): each thread sums its column over a
// strided share of the chunk's rows, then the 8 partial sums are added in a
// fixed order.
constexpr int kRowLanes = 8;

template <typename G>
__global__ void rms_norm_grad_weight_kernel(RmsNormBackward p) {
  __shared__ float sums[kRowLanes][kWarp + 1];
  const auto *grad = static_cast<const G *>(p.grad);
  const int64_t column = int64_t(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t chunk = blockIdx.y, first = chunk * kRmsWeightGradRowsPerChunk;
  const int64_t last = min(p.rows, first + kRmsWeightGradRowsPerChunk);
  float sum = 0.f;
  if (column < p.dim) {
    for (int64_t row = first + threadIdx.y; row < last; row += kRowLanes) {
      const int64_t at = row * p.dim + column;
      sum += to_float(grad[at]) * (p.input[at] * p.rstd[row]);
    }
  }
  sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && column < p.dim) {
    float total = 0.f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += sums[lane][threadIdx.x];
    p.weight_partials[chunk * p.dim + column] = total;
  }
}

unsigned int blocks_for_rows(int64_t rows) { return blocks_for(rows * kWarp); }

}  // namespace

cudaError_t launch_rms_norm_forward(const RmsNormForward &p, cudaStream_t stream) {
  if (p.rows * p.dim == 0) return cudaSuccess;
  return with_element_type(p.out_type, [&](auto out_tag) {
    return with_element_type(p.delta_type, [&](auto delta_tag) {
      rms_norm_forward_kernel<decltype(out_tag), decltype(delta_tag)>
          <<<blocks_for_rows(p.rows), kThreads, 0, stream>>>(p);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_rms_norm_backward(const RmsNormBackward &p, cudaStream_t stream) {
  if (p.rows * p.dim == 0) return cudaSuccess;
  return with_element_type(p.grad_type, [&](auto grad_tag) {
    using G = decltype(grad_tag);
    const auto error = with_element_type(p.delta_type, [&](auto delta_tag) {
      rms_norm_grad_input_kernel<G, decltype(delta_tag)><<<blocks_for_rows(p.rows), kThreads, 0, stream>>>(p);
      return cudaGetLastError();
    });
    if (error != cudaSuccess) return error;
    const dim3 grid(static_cast<unsigned int>((p.dim + kWarp - 1) / kWarp),
                    static_cast<unsigned int>(rms_weight_grad_chunks(p.rows)));
    rms_norm_grad_weight_kernel<G><<<grid, dim3(kWarp, kRowLanes), 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace moe::model::kernels
