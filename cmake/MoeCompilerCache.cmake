# ccache for rebuilds. PCH-aware settings: without them ccache refuses to cache PCH users.
find_program(MOE_CCACHE ccache)
if(MOE_CCACHE)
  set(_launcher ${CMAKE_COMMAND} -E env
      CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
      CCACHE_MAXSIZE=5G ${MOE_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${_launcher})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${_launcher})
  message(STATUS "ccache: ${MOE_CCACHE}")
endif()
