# LibTorch, and the CUDA/NCCL paths when the CUDA toolkit is present.
#
# moe::torch              what every target links.
# MOE_WITH_CUDA           the CUDA toolkit and NCCL were found: our CUDA/NCCL code is compiled and
#                         linked (CI compiles it even without a GPU).
# MOE_TORCH_CUDA          libtorch_cuda.so can be loaded here (every library it needs resolves), so
#                         tensors can live on GPUs. The PyPI wheel installed for the CPU build
#                         omits cuDNN, cuSPARSELt, cuFile and NVSHMEM on purpose: there we link
#                         only libtorch_cpu + libc10, which run without any GPU library but cudart.
find_package(Torch REQUIRED)
# Torch's config appends to CMAKE_CUDA_FLAGS a -gencode for every architecture its wheel was built
# for, some of which nvcc 13 no longer knows; our kernels name their own (CUDA_ARCHITECTURES).
unset(CMAKE_CUDA_FLAGS)
find_package(CUDAToolkit QUIET)
find_library(MOE_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
find_path(MOE_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})

set(MOE_WITH_CUDA OFF)
if(CUDAToolkit_FOUND AND MOE_NCCL_LIBRARY AND MOE_NCCL_INCLUDE_DIR)
  set(MOE_WITH_CUDA ON)
endif()

set(MOE_TORCH_CUDA OFF)
set(_torch_cuda_lib "${TORCH_INSTALL_PREFIX}/lib/libtorch_cuda.so")
if(MOE_WITH_CUDA AND EXISTS "${_torch_cuda_lib}")
  execute_process(COMMAND ldd "${_torch_cuda_lib}" OUTPUT_VARIABLE _ldd ERROR_QUIET)
  if(NOT _ldd MATCHES "not found")
    set(MOE_TORCH_CUDA ON)
  endif()
endif()

add_library(moe_torch INTERFACE)
add_library(moe::torch ALIAS moe_torch)
target_include_directories(moe_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
if(MOE_TORCH_CUDA)
  target_link_libraries(moe_torch INTERFACE torch_library c10 c10_cuda)
else()
  target_link_libraries(moe_torch INTERFACE torch_cpu_library c10)
endif()
if(MOE_WITH_CUDA)
  target_link_libraries(moe_torch INTERFACE c10_cuda CUDA::cudart ${MOE_NCCL_LIBRARY})
  target_include_directories(moe_torch INTERFACE ${MOE_NCCL_INCLUDE_DIR})
  target_compile_definitions(moe_torch INTERFACE MOE_WITH_CUDA=1)
endif()
if(MOE_TORCH_CUDA)
  target_compile_definitions(moe_torch INTERFACE MOE_TORCH_CUDA=1)
endif()
message(STATUS "LibTorch ${Torch_VERSION} at ${TORCH_INSTALL_PREFIX}; "
               "CUDA/NCCL code compiled: ${MOE_WITH_CUDA}; tensors on GPU: ${MOE_TORCH_CUDA}")
