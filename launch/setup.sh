#!/usr/bin/env bash
# Idempotent set-up: Debian packages, the pinned LibTorch, then a CMake build in build/.
# Safe to run again: each step checks what is already there.
# Usage: launch/setup.sh [--python] [--programs] [--slurm]
#   --programs        build only the programs the quickstart runs (moe-prepare, moe-train,
#                     moe-generate); without it, everything: the other programs, tests, benchmarks
#   --slurm           also Slurm and munge (Debian's slurmctld, slurmd, slurm-client, munge), for
#                     the test that runs launch/slurm.sbatch on a private Slurm; nothing is started
#   --python          also the Python tools of export/import and the tokenizers of Hugging Face
#                     (.deps/python: transformers, tokenizers, safetensors, sentencepiece,
#                     matplotlib for the scaling report's plots), and
#                     what Python's torch needs on a CPU machine (see PYTHON_TORCH_WHEELS)
#   MOE_NO_APT=1      skip the Debian packages (machines without apt, e.g. the GPU box's bundle)
#   MOE_BUILD_TYPE=X  CMake build type (default Release)
#   MOE_CMAKE_ARGS=.. more CMake arguments at configure time (bench/gpu_machine_env.sh sets them where
#                     a library comes from the GPU machine's bundle)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
TORCH_VERSION=2.11.0
# The PyPI torch wheel is a CUDA build. Its CPU library (libtorch_cpu.so) still needs exactly two
# CUDA runtime libraries at load time, libcudart.so.13 and libcupti.so.13; these two wheels carry
# them at the path the wheel's RPATH names. Nothing else of the CUDA stack is installed.
CPU_RUNTIME_WHEELS=(nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
# Python's `import torch` (of the same wheel) also loads these three at start-up, GPU or not; they
# land beside the two above, where the wheel's RPATH looks.
PYTHON_TORCH_WHEELS=(nvidia-cufile==1.15.1.6 nvidia-cusparselt-cu13==0.8.0 nvidia-nvshmem-cu13==3.4.5)
PYTHON_TOOLS=(transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 sentencepiece==0.2.3 numpy matplotlib
              filelock typing-extensions sympy networkx jinja2 fsspec "setuptools<82")
APT_PACKAGES=(cmake ninja-build g++ ccache python3-pip openmpi-bin libopenmpi-dev
              libboost-program-options-dev libgtest-dev libgmock-dev
              libsentencepiece-dev sentencepiece libonig-dev libicu-dev nlohmann-json3-dev zlib1g-dev pkg-config fortunes
              clang libclang-rt-dev)

# SentencePiece's C++ library, built from its PyPI source release into .deps/sentencepiece: its BPE
# encoder is 2.3x faster than Debian's 0.1.97 (4.6 vs 2.0 MB/s on one core, measured). The source
# release bundles abseil-cpp and protobuf-lite; the build takes about 3 minutes on 2 cores. Without
# it (no PyPI: the GPU box's bundle) the build uses Debian's library.
SENTENCEPIECE_VERSION=0.2.2

# Oniguruma 6.9.10: the regex engine, with its Unicode 16 tables, that the pinned `tokenizers`
# library splits text with; the native byte-level BPE must split the same way. Debian bookworm's
# 6.9.8 has older tables: a letter new in Unicode 16 (U+139C0, say) split a word the library keeps
# whole (measured on tests/trainer/data/hf_prepare_check.py). PyPI has no source release of it; the
# onigurumacffi wheel ships the built library, which .deps/oniguruma takes (the header stays
# Debian's: the same 6.9 interface). Without it the build uses Debian's library and warns.
ONIGURUMA_WHEEL=onigurumacffi==1.5.0
ONIGURUMA_VERSION=6.9.10

# What --slurm adds (the Slurm test; the daemons are started by the test, not by the packages).
SLURM_APT_PACKAGES=(slurmctld slurmd slurm-client munge iproute2)

# What --programs builds: the main job's programs.
USER_PROGRAMS=(moe-prepare moe-train moe-generate)

log() { echo "[setup] $*"; }

install_debian_packages() {
  [ "${MOE_NO_APT:-0}" = 1 ] && { log "MOE_NO_APT=1: skipping Debian packages"; return; }
  local missing=() p wanted=("${APT_PACKAGES[@]}")
  [ "$slurm" = 1 ] && wanted+=("${SLURM_APT_PACKAGES[@]}")
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { log "Debian packages: all present"; return; }
  log "installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Prints the CMake prefix of a LibTorch $TORCH_VERSION: the machine's own torch if it has that
# version (the GPU box), else the project-local one in .deps/torch, installed on first use.
torch_cmake_prefix() {
  local sys
  if sys="$(python3 -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1); " 2>/dev/null \
            && python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"; then
    log "using the installed torch $TORCH_VERSION" >&2; echo "$sys"; return
  fi
  local prefix="$root/.deps/torch"
  if [ ! -d "$prefix/torch-$TORCH_VERSION.dist-info" ] || [ ! -d "$prefix/nvidia/cu13/lib" ]; then
    log "installing LibTorch $TORCH_VERSION (PyPI wheel, no dependencies) into .deps/torch" >&2
    rm -rf "$prefix"
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$prefix" \
      "torch==$TORCH_VERSION" "${CPU_RUNTIME_WHEELS[@]}" >&2
  fi
  echo "$prefix/torch/share/cmake"
}

# A library of ours from PyPI into .deps/NAME, once per version: pip downloads the release (pip's
# options say which kind) into a temporary directory, INSTALL_FUNCTION TMP PREFIX puts it in place and
# writes PREFIX/VERSION. If either fails, the build uses Debian's library and the warning says so.
install_from_pypi() {  # LABEL NAME VERSION INSTALL_FUNCTION WARNING PIP_OPTIONS...
  local label="$1" prefix="$root/.deps/$2" version="$3" install="$4" warning="$5"
  shift 5
  [ "$(cat "$prefix/VERSION" 2>/dev/null)" = "$version" ] && { log "$label $version: present"; return; }
  log "$label $version from PyPI into .deps/$(basename "$prefix")"
  local tmp; tmp="$(mktemp -d)"
  if ! python3 -m pip download -q --disable-pip-version-check --retries 1 --timeout 20 --no-deps --dest "$tmp" \
         "$@" >&2 || ! "$install" "$tmp" "$prefix"; then
    log "WARNING: no $label $version (PyPI unreachable, or the install failed): $warning"
  fi
  rm -rf "$tmp"
}

install_sentencepiece() {
  install_from_pypi SentencePiece sentencepiece "$SENTENCEPIECE_VERSION" build_sentencepiece \
    "building with Debian's SentencePiece, whose encoding is 2.3x slower" \
    --no-binary :all: "sentencepiece==$SENTENCEPIECE_VERSION"
}

build_sentencepiece() {
  local tmp="$1" prefix="$2"
  # Called in a condition, where `set -e` does not stop: each step says it failed itself.
  tar xzf "$tmp/sentencepiece-$SENTENCEPIECE_VERSION.tar.gz" -C "$tmp" || return 1
  local src="$tmp/sentencepiece-$SENTENCEPIECE_VERSION/sentencepiece"
  # abseil-cpp is in the source release, yet its CMakeLists would clone it again from GitHub.
  sed -i '/FetchContent_Populate(abseil-cpp/,/GIT_TAG/d' "$src/CMakeLists.txt" || return 1
  cmake -S "$src" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPM_ENABLE_SHARED=OFF \
    -DSPM_ENABLE_TCMALLOC=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DCMAKE_INSTALL_PREFIX="$tmp/install" >/dev/null || return 1
  cmake --build "$tmp/build" -j"$(nproc)" --target install >/dev/null || return 1  # spm_train links every absl part needed
  rm -rf "$prefix"; mkdir -p "$prefix/include" "$prefix/lib"
  cp "$tmp/install/include/"*.h "$prefix/include/" &&
    (cd "$src/third_party/abseil-cpp" && find absl \( -name '*.h' -o -name '*.inc' \) -exec cp --parents {} "$prefix/include/" \;) &&
    cp "$tmp/install/lib/"*.a "$prefix/lib/" &&
    find "$tmp/build" -name 'libabsl_*.a' -exec cp {} "$prefix/lib/" \; || { rm -rf "$prefix"; return 1; }
  echo "$SENTENCEPIECE_VERSION" > "$prefix/VERSION"
}

install_oniguruma() {
  install_from_pypi Oniguruma oniguruma "$ONIGURUMA_VERSION" unpack_oniguruma \
    "building with Debian's, whose older Unicode tables can split a rare new letter differently from the tokenizers library" \
    --only-binary :all: "$ONIGURUMA_WHEEL"
}

unpack_oniguruma() {
  local tmp="$1" prefix="$2" library
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/wheel" || return 1
  library="$(find "$tmp/wheel" -name 'libonig*.so*' | head -1)"
  [ -n "$library" ] || return 1
  local version; version="$(python3 -c 'import ctypes, sys
onig = ctypes.CDLL(sys.argv[1]); onig.onig_version.restype = ctypes.c_char_p; print(onig.onig_version().decode())' "$library")"
  [ "$version" = "$ONIGURUMA_VERSION" ] || { log "the wheel's Oniguruma is $version, not $ONIGURUMA_VERSION"; return 1; }
  rm -rf "$prefix"; mkdir -p "$prefix/lib"
  cp "$library" "$prefix/lib/" && echo "$ONIGURUMA_VERSION" > "$prefix/VERSION"  # its own name: the SONAME
}

configure_and_build() {
  local prefix="$1" build="$root/build" targets=()
  local sp_stamp="sentencepiece:$(cat "$root/.deps/sentencepiece/VERSION" 2>/dev/null),oniguruma:$(cat "$root/.deps/oniguruma/VERSION" 2>/dev/null)"
  [ "$programs_only" = 1 ] && targets=(--target "${USER_PROGRAMS[@]}")
  if [ ! -f "$build/build.ninja" ] || ! grep -q "$prefix" "$build/CMakeCache.txt" 2>/dev/null ||
     ! grep -q "MOE_SETUP_STAMP:STRING=$sp_stamp" "$build/CMakeCache.txt" 2>/dev/null; then
    log "configuring build/"
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${MOE_BUILD_TYPE:-Release}" \
      -DCMAKE_PREFIX_PATH="$prefix" -DMOE_SETUP_STAMP="$sp_stamp" ${MOE_CMAKE_ARGS:-} >/dev/null
  fi
  log "building ${targets[*]:-everything} (a first build takes several minutes on 2 cores)"
  cmake --build "$build" -j"$(nproc)" "${targets[@]}"
}

# The Python tools in .deps/python (tools/pytool puts it on PYTHONPATH). Torch itself is the
# machine's (GPU box) or the LibTorch wheel of .deps/torch: one copy for C++ and Python.
install_python_tools() {
  local target="$root/.deps/python" stamp="$root/.deps/python/.installed"
  local want="${PYTHON_TOOLS[*]} ${PYTHON_TORCH_WHEELS[*]}"
  local torch_libs=1
  [ -d "$root/.deps/torch/torch" ] && [ ! -d "$root/.deps/torch/nvidia/nvshmem" ] && torch_libs=0
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ "$torch_libs" = 1 ] && { log "Python tools: present"; return; }
  log "installing the Python tools into .deps/python: ${PYTHON_TOOLS[*]}"
  rm -rf "$target"
  local pip=(python3 -m pip install -q --disable-pip-version-check --no-warn-conflicts --root-user-action=ignore)
  "${pip[@]}" --target "$target" "${PYTHON_TOOLS[@]}"
  if [ "$torch_libs" = 0 ]; then  # merged into .deps/torch/nvidia/ (pip --target would replace it)
    local tmp; tmp="$(mktemp -d)"
    "${pip[@]}" --no-deps --target "$tmp" "${PYTHON_TORCH_WHEELS[@]}"
    cp -a "$tmp/nvidia/." "$root/.deps/torch/nvidia/"
    rm -rf "$tmp"
  fi
  echo "$want" > "$stamp"
}

python_tools=0 programs_only=0 slurm=0
for arg in "$@"; do
  case "$arg" in
    --python) python_tools=1 ;;
    --programs) programs_only=1 ;;
    --slurm) slurm=1 ;;
    *) echo "usage: launch/setup.sh [--python] [--programs] [--slurm]" >&2; exit 2 ;;
  esac
done
install_debian_packages
install_sentencepiece
install_oniguruma
configure_and_build "$(torch_cmake_prefix)"
if [ "$python_tools" = 1 ]; then install_python_tools; fi
log "done: binaries in build/bin"
