// MOE_HOST_DEVICE: element math compiled for the GPU by nvcc and for the CPU by the host compiler
// (the kernels and the CPU loops that check them run the same functions).
#pragma once

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif
