# moe_add_test(NAME <name> SOURCES <src...> [LIBS <libs...>] [MPI] [RUNS "<ranks>[:<args>]" ...] [TIMEOUT s])
# One GoogleTest executable per test file. Without MPI it runs once, as is. With MPI it uses the
# shared tests/mpi_test_main.cpp and runs under mpiexec once per RUNS entry, e.g. "2" or
# "4:--ep_size=2" or "2:--device=cuda --gtest_filter=X" (registered as <name>_np<ranks>[_<args>]). Every run has a TIMEOUT so that a
# hang fails instead of blocking CI.
find_package(GTest REQUIRED)

function(moe_add_test)
  cmake_parse_arguments(T "MPI" "NAME;TIMEOUT" "SOURCES;LIBS;RUNS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set(_env "OMP_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1")
  if(T_MPI)
    add_executable(${T_NAME} ${T_SOURCES} ${CMAKE_SOURCE_DIR}/tests/mpi_test_main.cpp)
    target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest MPI::MPI_CXX)
  else()
    add_executable(${T_NAME} ${T_SOURCES})
    target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  endif()
  target_include_directories(${T_NAME} PRIVATE ${CMAKE_SOURCE_DIR})
  moe_use_pch(${T_NAME})
  if(NOT T_MPI)
    add_test(NAME ${T_NAME} COMMAND $<TARGET_FILE:${T_NAME}>)
    set_tests_properties(${T_NAME} PROPERTIES TIMEOUT ${T_TIMEOUT} ENVIRONMENT "${_env}")
    return()
  endif()
  foreach(_run IN LISTS T_RUNS)
    string(REPLACE ":" ";" _parts "${_run}")
    list(GET _parts 0 _ranks)
    set(_args "")
    set(_suffix "")
    list(LENGTH _parts _n)
    if(_n GREATER 1)
      list(GET _parts 1 _args)
      string(REGEX REPLACE "[^A-Za-z0-9]+" "_" _suffix "${_args}")
      string(REPLACE " " ";" _args "${_args}")  # several arguments
    endif()
    add_test(NAME ${T_NAME}_np${_ranks}${_suffix}
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${_ranks} --oversubscribe ${MPIEXEC_PREFLAGS}
                     $<TARGET_FILE:${T_NAME}> ${_args} ${MPIEXEC_POSTFLAGS})
    set_tests_properties(${T_NAME}_np${_ranks}${_suffix} PROPERTIES TIMEOUT ${T_TIMEOUT} ENVIRONMENT "${_env}"
                         PROCESSORS ${_ranks})
  endforeach()
endfunction()
