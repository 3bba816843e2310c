#!/usr/bin/env bash
# compare_pytorch.sh — gkd's on-policy GKD step against the same step in PyTorch eager
# (dev/pytorch_gkd_step.py), on the same machine, in one run: the two alternate ROUNDS
# times (so that both see the same machine state) and the table gives each phase's median
# over the rounds, and the ratio.
#
#   dev/compare_pytorch.sh [THREADS] [ROUNDS] [extra flags for both...]
#   DEVICE=cuda dev/compare_pytorch.sh 16 3 [--tf32] [shape flags]     (on a GPU)
# Defaults: 2 threads, 3 rounds, the CPU, the reference configuration. Shape flags are
# given once, in gkd bench's spelling (--student --teacher --vocab --context --batch
# --prompt-tokens --new-tokens --tf32), and translated for the PyTorch script.
# STEPS sets the timed steps per round (default 5; 2 suits the GPT-2 pair's 15 s steps).
# PY picks the Python with torch (default /usr/bin/python3 on the CPU, python3 on a GPU).
# On the CPU it prints what the figures depend on, from both processes: the CPU and its
# vector ISA, the thread count, each side's BLAS (OpenBLAS's own config string; PyTorch's
# build setting and the libraries loaded after a matmul) and each side's sgemm rate.
# OPENBLAS_CORETYPE, when the environment sets it, forces OpenBLAS's kernel choice in both
# processes alike: the report says so on each side. On the CPU, where the environment
# forces OpenBLAS's kernels (OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE), the comparison runs
# twice: with the environment's kernels on both sides, then with OpenBLAS's own choice on
# both sides (both variables unset for those runs alone). KERNELS=this runs only the first.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${DEVICE:-cpu}" = cpu ] && [ "${KERNELS:-both}" = both ] && [ -n "${OPENBLAS_CORETYPE:-}${OPENBLAS_L2_SIZE:-}" ]; then
  echo "**the environment's OpenBLAS kernels, both sides (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset})**"
  echo
  KERNELS=this "$0" "$@"
  echo
  echo "**OpenBLAS's own kernel choice, both sides (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for these runs)**"
  echo
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE KERNELS=this "$0" "$@"
  exit
fi
threads=${1:-2}; rounds=${2:-3}; shift $(( $# < 2 ? $# : 2 )) || true
device=${DEVICE:-cpu}
steps=${STEPS:-5}
if [ "$device" = cuda ]; then py=${PY:-python3}; else py=${PY:-/usr/bin/python3}; fi
torch_flags=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --prompt-tokens) torch_flags+=(--prompt-len "${args[$((i + 1))]}"); i=$((i + 1)) ;;
    --vocab) v="${args[$((i + 1))]}"; [ "$v" = byte ] && v=257; torch_flags+=(--vocab "$v"); i=$((i + 1)) ;;
    --tf32) torch_flags+=(--tf32) ;;
    *) torch_flags+=("${args[$i]}") ;;
  esac
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for r in $(seq "$rounds"); do
  OMP_NUM_THREADS=$threads "$here/gkd" bench --json --steps "$steps" --device "$device" "$@" >> "$work/gkd.jsonl"
  OMP_NUM_THREADS=$threads "$py" "$here/dev/pytorch_gkd_step.py" --threads "$threads" --steps "$steps" --device "$device" \
      "${torch_flags[@]}" >> "$work/torch.jsonl"
  echo "round $r of $rounds done" >&2
done
"$py" - "$work/gkd.jsonl" "$work/torch.jsonl" "$threads" "$device" "$*" "$steps" <<'PY'
import json, statistics, sys
g = [json.loads(l) for l in open(sys.argv[1])]
t = [json.loads(l) for l in open(sys.argv[2])]
threads, device, flags = sys.argv[3], sys.argv[4], sys.argv[5]
med = lambda rows, k: statistics.median(r[k] for r in rows)
phases = [("sample (student, KV cache)", "sample_ms", "sample_ms"),
          ("teacher forward" + (" (gkd: last layer at the targets)" if g[0].get("teacher_trimmed") else ""), "teacher_ms", "teacher_ms"),
          ("student forward" + (" (gkd: sampling's activations, reused)" if g[0].get("forward_reused") else ""),
           "forward_ms", "student_forward_ms"), ("loss (JSD)", "loss_ms", "loss_ms"),
          ("student backward (gkd: + grad norm; PyTorch: + clipping)", "backward_ms", "backward_ms"), ("AdamW (gkd: + clipping)", "update_ms", "update_ms"),
          ("whole step", "step_ms", "step_ms")]
where = f"{threads} threads" if device == "cpu" else f"{g[0]['device']}, {g[0]['precision']}"
print(f"on-policy GKD step ({flags or 'reference configuration'}), {where}, median of {len(g)} rounds x {sys.argv[6]} steps")
if device == "cpu":
    # what the figures depend on, from both processes of this run
    print(f"\nmachine: {g[0]['cpu']}, {g[0]['vector_isa']}, {threads} threads")
    print(f"gkd: {g[0]['gkd_kernels']}; matmuls through {g[0]['matmuls']}; "
          f"sgemm 1024^3 (or the step's shape) {med(g, 'sgemm_gflops'):.0f} GFLOP/s")
    print(f"PyTorch {t[0]['torch']} eager: its kernels {t[0]['cpu_capability']}; built with BLAS_INFO={t[0]['blas_info']}, "
          f"loaded {', '.join(t[0]['blas_loaded'])} (kernels for {t[0]['blas_kernels']}); "
          f"torch.mm 1024^3 {med(t, 'sgemm_gflops'):.0f} GFLOP/s\n")
else:
    print(f"(PyTorch {t[0]['torch']} eager on {t[0]['gpu']}, TF32 {'on' if t[0]['tf32'] else 'off'}; "
          f"cuBLAS SGEMM {med(g, 'sgemm_tflops_4096'):.1f} TFLOP/s at 4096^3)\n")
print("| phase | gkd ms | PyTorch ms | PyTorch / gkd |")
print("|---|---:|---:|---:|")
for name, gk, tk in phases:
    a, b = med(g, gk), med(t, tk)
    print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
# the step's work as the algorithm's (PyTorch's: a student forward included); with the
# forward reused, gkd also says what share the FLOPs it ran reach
ran = (f"; {100 * med(g, 'step_run_gflops') / med(g, 'sgemm_gflops'):.0f}% counting only the FLOPs gkd ran, its student "
       f"forward being sampling's and the teacher's last layer trimmed to the targets"
       if g[0].get("forward_reused") else "")
print("\ngkd: " + (f"{med(g, 'step_gflops'):.0f} GFLOP/s over the step ({100 * med(g, 'step_gflops') / med(g, 'sgemm_gflops'):.0f}% "
                  f"of sgemm{ran}), peak RSS {med(g, 'peak_rss_mb'):.0f} MB" if device == "cpu" else
                  f"{med(g, 'step_tflops'):.2f} TFLOP/s over the step, MFU {100 * med(g, 'step_mfu'):.1f}%; peak device "
                  f"memory gkd {med(g, 'peak_device_memory_mb'):.0f} MB, PyTorch {med(t, 'peak_device_memory_mb'):.0f} MB"))
PY
