#!/usr/bin/env bash
# kernel_libraries.sh — gkd's own register tiles (AVX2 and, where the CPU has it, AVX-512)
# against kept libraries on the products of gkd's reference step: OpenBLAS's sgemm,
# oneDNN's dnnl_sgemm (libdnnl-dev) and libxsmm's JIT kernels (libxsmm-dev), each where
# installed (dev/kernel_libraries.cpp says what each case is). Twice: with the
# environment's OpenBLAS kernels, then, where the environment forces them
# (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE), with OpenBLAS's own choice for this CPU.
#
#   dev/kernel_libraries.sh [THREADS] [CASE]     (THREADS: default nproc; CASE: a part of a case's name)
# About a minute on 2 cores. Every method's result is checked against gkd's tile (rounding only).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
threads=${1:-$(nproc)}; case_filter=${2:-}
make -s build/kernel_libraries
echo "**the environment's OpenBLAS kernels**"
echo
OMP_NUM_THREADS=$threads ./build/kernel_libraries $case_filter 2>/dev/null
if [ -n "${OPENBLAS_CORETYPE:-}${OPENBLAS_L2_SIZE:-}" ]; then
  echo
  echo "**OpenBLAS's own kernel choice (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for this run)**"
  echo
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=$threads ./build/kernel_libraries $case_filter 2>/dev/null
fi
