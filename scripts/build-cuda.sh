#!/usr/bin/env bash
# Build kb and the DeepSeek benchmark with CUDA (sm_90, H100/H200) on a machine with no CUDA toolkit.
#
# NVIDIA ships nvcc, the runtime, NVRTC, cuBLAS and cuRAND as PyPI wheels; this script unpacks them
# into a git-ignored prefix (.cuda/), patches the gaps between the wheel layout and a toolkit tree
# (see docs/gpu.md for each obstacle), and runs `cargo build --release --features cuda`.
#
# Usage: scripts/build-cuda.sh [cargo build args...]
#   default: builds the `kb` binary and the `deepseek-bench` binary, then copies them to .gpu/
# Env: CUDA_PREFIX (default .cuda), CARGO_TARGET_DIR (default target/cuda), CUDA_COMPUTE_CAP (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PREFIX=${CUDA_PREFIX:-$ROOT/.cuda}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

# 1. The wheels, pinned to CUDA 13.0 to match the GPU machine's toolkit and driver (580, CUDA 13.0).
WHEELS=(
  "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85" "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.0.35" "nvidia-nvvm==13.0.88"
)
if [ ! -x "$PREFIX/root/bin/nvcc" ] || [ ! -x "$PREFIX/root/nvvm/bin/cicc" ]; then
  mkdir -p "$PREFIX/wheels" "$PREFIX/unpack"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$PREFIX/wheels" "${WHEELS[@]}"
  # Unzip instead of `pip install`: all CUDA 13 wheels share one tree, nvidia/cu13/{bin,include,lib,nvvm},
  # which is already toolkit-shaped.
  for w in "$PREFIX"/wheels/*.whl; do unzip -qo "$w" -d "$PREFIX/unpack"; done
  ln -sfn "$PREFIX/unpack/nvidia/cu13" "$PREFIX/root"
fi
CUDA=$PREFIX/root
LIB=$CUDA/lib

# 2. The wheels carry only versioned sonames (libcublas.so.13); the linker's -lcublas wants libcublas.so.
for f in "$LIB"/lib*.so.[0-9]*; do
  base=$(basename "$f"); stem=${base%%.so.*}
  [ -e "$LIB/$stem.so" ] || ln -s "$base" "$LIB/$stem.so"
done

# 3. No wheel ships libcuda (it comes with the driver). cudarc links -lcuda, so build a stub with
#    soname libcuda.so.1 exporting every driver entry point cudarc declares; the real driver's
#    libcuda.so.1 is what the binary loads on the GPU machine.
if [ ! -e "$LIB/stubs/libcuda.so" ]; then
  mkdir -p "$LIB/stubs"
  find_sys() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null | head -1 || true; }
  SYS=$(find_sys)
  # A fresh machine has not unpacked cudarc yet (the CPU build does not use it).
  [ -f "$SYS" ] || { cargo fetch; SYS=$(find_sys); }
  grep -oE "pub unsafe fn cu[A-Za-z0-9_]+\(" "$SYS" | sed -E 's/pub unsafe fn (.*)\(/int \1(void){return 999;}/' | sort -u > "$LIB/stubs/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LIB/stubs/libcuda.so" "$LIB/stubs/cuda_stub.c"
fi

# 4. Toolkit discovery: cudarc reads the CUDA version from `nvcc --version` (13.0 -> cuda-13000),
#    and cudaforge (candle-kernels' build) finds nvcc through CUDA_HOME / PATH.
export CUDA_HOME=$CUDA CUDA_PATH=$CUDA CUDA_ROOT=$CUDA
export PATH=$CUDA/bin:$PATH
export LIBRARY_PATH=$LIB:$LIB/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
nvcc --version | tail -2

if [ $# -eq 0 ]; then
  set -- -p kb-inference --features cuda --bin deepseek-bench
  cargo build --release "$@"
  cargo build --release -p kb --features cuda
  mkdir -p "$ROOT/.gpu"
  cp "$CARGO_TARGET_DIR/release/deepseek-bench" "$ROOT/.gpu/"
  cp "$CARGO_TARGET_DIR/release/kb" "$ROOT/.gpu/" 2>/dev/null || true
  echo "built: .gpu/deepseek-bench .gpu/kb"
  echo "on the GPU machine: export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib"
else
  cargo build --release "$@"
fi
