#!/usr/bin/env bash
# tests/resume_test.sh — kill a run at several moments, resume it, and compare with the
# same run left alone: each step logged exactly once, every logged value identical (but
# the timings), and model.bin identical to the byte. Also SIGINT/SIGTERM (finish the
# step, checkpoint, exit 130/143) and a non-finite loss (error naming the step, last
# checkpoint intact). Prints "resume: N passed, N failed" last.
set -u
cd "$(dirname "$0")/.."
export CUDA_VISIBLE_DEVICES=""  # the CPU path: --device auto stays on the CPU even beside a GPU
GKD=${GKD:-./gkd}
W=$(mktemp -d /tmp/gkd_resume.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # identical results need the same thread count
$GKD init --layers 1 --channels 48 --heads 2 --context 32 --seed 1 --out "$W/t.bin" 2>/dev/null
$GKD init --layers 1 --channels 16 --heads 2 --context 32 --seed 2 --out "$W/s.bin" 2>/dev/null
$GKD data --task arithmetic --out "$W/data" --train 200 --validation 8 --test 8 2>/dev/null
RUN=(distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/data/train.jsonl" --eval-data "$W/data/validation.jsonl"
     --eval-every 5 --task arithmetic --steps 30 --batch 8 --lambda 0.5 --lr 1e-3 --max-new-tokens 12 --seed 3
     --checkpoint-every 3 --quiet)

# the values of a run's metrics, without the timings
values() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    j = json.loads(line)
    j.pop("step_ms", None); j.pop("sample_ms", None)
    print(json.dumps(j, sort_keys=True))' "$1"; }

t0=$(date +%s%N)
$GKD "${RUN[@]}" --out "$W/ref" || bad "the uninterrupted run failed"
run_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
values "$W/ref/metrics.jsonl" >"$W/ref.values"
[ "$(grep -c '"loss"' "$W/ref.values")" -eq 30 ] && ok || bad "the reference run logged $(grep -c '"loss"' "$W/ref.values") steps"
[ ! -e "$W/ref/checkpoint.bin" ] && ok || bad "a finished run leaves its checkpoint behind"

# resume DIR until it finishes (a kill before the first checkpoint means starting over)
finish() {
  if [ -e "$1/checkpoint.bin" ]; then $GKD distill --resume "$1" --quiet
  else $GKD "${RUN[@]}" --out "$1" --overwrite; fi
}

compare() {  # NAME DIR
  values "$2/metrics.jsonl" >"$2.values"
  if cmp -s "$2.values" "$W/ref.values"; then ok; else bad "$1: metrics differ from the uninterrupted run: $(diff "$2.values" "$W/ref.values" | head -4)"; fi
  if cmp -s "$2/model.bin" "$W/ref/model.bin"; then ok; else bad "$1: model.bin differs"; fi
}

# 1. killed in the middle of writing the checkpoint of step 9: the one of step 6 is used
(GKD_FAULT=kill-in-checkpoint-write:9 exec $GKD "${RUN[@]}" --out "$W/k1" 2>/dev/null)
rc=$?
[ $rc -eq 137 ] && ok || bad "fault injection: exit $rc, wanted 137 (SIGKILL)"
[ -e "$W/k1/checkpoint.bin.tmp" ] && ok || bad "the torn checkpoint write left no trace (was the kill mid-write?)"
finish "$W/k1" && compare "killed during a checkpoint write" "$W/k1"

# 2. SIGKILL at several moments: fractions of the uninterrupted run's time
for percent in 15 40 65 90; do
  delay=$(printf '%d.%03d' $((run_ms * percent / 100000)) $((run_ms * percent / 100 % 1000)))
  d=$W/kill$delay
  $GKD "${RUN[@]}" --out "$d" 2>/dev/null &
  pid=$!
  sleep "$delay"
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
  finish "$d" 2>/dev/null && compare "SIGKILL after ${delay}s" "$d"
done

# 3. SIGINT and SIGTERM: finish the step, checkpoint, say where, exit 130 / 143
for sig in INT TERM; do
  d=$W/sig$sig
  $GKD "${RUN[@]}" --out "$d" 2>"$d.err" &
  pid=$!
  # signal once the run has logged 5 of its 30 steps: its handlers are in place and most
  # steps are ahead (a fraction of the uninterrupted run's time missed both ends on a
  # loaded machine: a signal before the handlers, or after the run's end)
  for _ in $(seq 4000); do
    [ "$(cat "$d/metrics.jsonl" 2>/dev/null | grep -c '"loss"')" -ge 5 ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.005
  done
  kill -$sig $pid
  wait $pid
  rc=$?
  want=$([ $sig = INT ] && echo 130 || echo 143)
  [ $rc -eq "$want" ] && ok || bad "SIG$sig: exit $rc, wanted $want"
  grep -q "continue with gkd distill --resume $d" "$d.err" && ok || bad "SIG$sig: no resume hint: $(cat "$d.err")"
  $GKD distill --resume "$d" --quiet && compare "SIG$sig" "$d"
done

# 4. a non-finite loss stops the run naming the step; the last checkpoint stays intact
d=$W/nan
GKD_FAULT=nan-loss:7 $GKD "${RUN[@]}" --out "$d" 2>"$d.err"
rc=$?
[ $rc -eq 1 ] && ok || bad "nan: exit $rc, wanted 1"
grep -q "step 7: the loss is not finite" "$d.err" && ok || bad "nan: $(cat "$d.err")"
$GKD distill --resume "$d" --quiet && compare "resumed after a non-finite loss" "$d"

# 5. resuming is strict
$GKD distill --resume "$W/ref" --quiet 2>"$W/err"; rc=$?
[ $rc -eq 1 ] && grep -q "no checkpoint to resume from" "$W/err" && ok || bad "resume without a checkpoint: exit $rc $(cat "$W/err")"
cp "$W/t.bin" "$W/fake"; mkdir -p "$W/fake.d"; cp "$W/t.bin" "$W/fake.d/checkpoint.bin"
$GKD distill --resume "$W/fake.d" 2>"$W/err"; rc=$?
[ $rc -eq 1 ] && grep -q "not a gkd training checkpoint" "$W/err" && ok || bad "resume from a model file: exit $rc $(cat "$W/err")"
GKD_FAULT=nan-loss:5 $GKD "${RUN[@]}" --out "$W/strict" 2>/dev/null
$GKD distill --resume "$W/strict" --lambda 1 2>"$W/err"; rc=$?
[ $rc -eq 1 ] && grep -q -- "--lambda cannot be given with it" "$W/err" && ok || bad "resume with a changed flag: exit $rc $(cat "$W/err")"
$GKD sft --resume "$W/strict" 2>"$W/err"; rc=$?
[ $rc -eq 1 ] && grep -q "this is a distill run" "$W/err" && ok || bad "resume with the wrong command: exit $rc $(cat "$W/err")"

# 6. one process per run folder: a second gkd on a live run's folder is refused naming the
# holder's pid, whether it resumes, overwrites or writes beside it; kill -9 leaves no stale lock
LONG=(distill --teacher "$W/t.bin" --student "$W/s.bin" --data "$W/data/train.jsonl" --steps 100000 --batch 8
      --lambda 0.5 --max-new-tokens 12 --checkpoint-every 1 --quiet)
( exec $GKD "${LONG[@]}" --out "$W/live" ) 2>"$W/live.err" &
holder=$!
for _ in $(seq 100); do [ -e "$W/live/checkpoint.bin" ] && break; sleep 0.1; done
[ -e "$W/live/checkpoint.bin" ] && ok || bad "the long run wrote no checkpoint: $(cat "$W/live.err")"
$GKD distill --resume "$W/live" --quiet 2>"$W/err"; rc=$?
[ $rc -eq 1 ] && grep -q "the run folder $W/live is in use by another gkd process (pid $holder," "$W/err" && ok ||
  bad "a second resume of a live run: exit $rc $(cat "$W/err")"
$GKD "${LONG[@]}" --out "$W/live" --overwrite 2>"$W/err"; rc=$?
[ $rc -eq 1 ] && grep -q "(pid $holder," "$W/err" && ok || bad "--overwrite of a live run: exit $rc $(cat "$W/err")"
[ -e "$W/live/checkpoint.bin" ] && kill -0 $holder 2>/dev/null && ok || bad "the refused --overwrite touched the live run"
kill -9 $holder; wait $holder 2>/dev/null
$GKD distill --resume "$W/live" --quiet --steps 1 2>/dev/null; rc=$?  # refused for the flag, not for a lock
[ $rc -eq 1 ] && ok || bad "resume with a flag was not refused"
( exec $GKD distill --resume "$W/live" --quiet ) 2>"$W/err" &
resumed=$!
sleep 1
kill -0 $resumed 2>/dev/null && ok || bad "after kill -9, resuming was refused: $(cat "$W/err")"
kill -9 $resumed; wait $resumed 2>/dev/null

echo "resume: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
