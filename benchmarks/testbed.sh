#!/bin/bash
# The CIFAR-10 testbed on one GPU, each part sized for a ten-minute call (docs/precision.md):
#
#   bash benchmarks/testbed.sh teacher   # train the half-width DDPM++ teacher on 3×32×32 digits, export it
#   bash benchmarks/testbed.sh study     # distil it: 3 precisions × 3 seeds, one process each, at once
#
# Environment: TEACHER (default experiment/digits32c64-ddpmpp.pt), RESULTS (default experiment/testbed-study),
# DEADLINE (seconds from the start; then SIGTERM: the teacher's run saves a checkpoint and is exported
# from it, each study run scores what it saved), STEPS (teacher: 8000, study: 2000); for the study also
# SEEDS (default "0 1 2") and COMPILE (0: eager, the default; 1: compiled with CUDA graphs). With $OUT set (the
# GPU machines' return folder) the teacher is also split into 15-MB pieces there (`cat` joins them) and
# the study's results are packed there as study.tgz.
set -u
PART=${1:?"say which part: teacher or study"}
export PYTHONUNBUFFERED=1
START=$(date +%s)
TEACHER=${TEACHER:-experiment/digits32c64-ddpmpp.pt}
elapsed() { echo $(( $(date +%s) - START )); }
machine() { date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
            python -c "import torch; print('torch', torch.__version__)"; }

if [ "$PART" = teacher ]; then
  DEADLINE=${DEADLINE:-100000}; STEPS=${STEPS:-8000}
  RUN=${RUN:-experiment/digits32c64-teacher}; LOG=$RUN.log
  mkdir -p "$(dirname "$RUN")"
  [ -e "$TEACHER" ] && { echo "$TEACHER exists; move it away to train another" >&2; exit 2; }
  # exec: the background PID is Python's, so that SIGTERM reaches the training loop
  train() { total=$1; shift; OPENAI_LOGDIR=$RUN exec python scripts/train_teacher.py --image_size 32 --image_channels 3 \
      --num_channels 64 --num_res_blocks 4 --channel_mult 2,2,2 --attention_resolutions 2 --dropout 0.13 \
      --mixed_precision bf16 --attention sdpa --channels_last True --cudnn_benchmark True --fused_optimizer True \
      --compile True --compile_mode reduce-overhead --save_interval 500 --lr_anneal_steps "$STEPS" \
      --total_training_steps "$total" "$@"; }
  machine >> "$LOG"
  train "$STEPS" >> "$LOG" 2>&1 &
  PID=$!
  while kill -0 $PID 2>/dev/null && [ "$(elapsed)" -lt "$DEADLINE" ]; do sleep 2; done
  kill -0 $PID 2>/dev/null && kill -TERM $PID
  wait $PID; RC=$?  # 0: done; 143 (128 + SIGTERM): stopped at the deadline after a checkpoint
  if [ $RC -ne 0 ] && [ $RC -ne 143 ]; then echo "the teacher's training failed (exit $RC; see $LOG)" >&2; exit 1; fi
  LAST=$(ls "$RUN" | sed -n 's/^model0*\([0-9][0-9]*\)\.pt$/\1/p' | sort -n | tail -1)
  [ -n "$LAST" ] || { echo "no checkpoint was saved in $RUN (see $LOG)" >&2; exit 1; }
  echo "== training ended at $(elapsed) s; exporting step $LAST" >> "$LOG"
  (train "$LAST" --export "$TEACHER") >> "$LOG" 2>&1 || { echo "export failed (see $LOG)" >&2; exit 1; }
  sha256sum "$TEACHER" >> "$LOG"
  if [ -n "${OUT:-}" ]; then split -b 15M -d "$TEACHER" "$OUT/teacher.pt.part"; cp "$LOG" "$OUT/"; fi
  exit 0
fi

[ "$PART" = study ] || { echo "unknown part $PART: say teacher or study" >&2; exit 2; }
[ -f "$TEACHER" ] || { echo "no teacher at $TEACHER: run 'bash benchmarks/testbed.sh teacher' first" >&2; exit 2; }
DEADLINE=${DEADLINE:-100000}; STEPS=${STEPS:-2000}
RESULTS=${RESULTS:-experiment/testbed-study}
if ls "$RESULTS"/*.json > /dev/null 2>&1; then echo "$RESULTS already holds a study; set RESULTS to another folder" >&2; exit 2; fi
# COMPILE=0: eager (nine cold compilations at once outlast a ten-minute call on 16 cores); COMPILE=1: CUDA graphs
case "${COMPILE:-0}" in
  0) SPEED=+compile=false ;;
  1) SPEED=+compile_mode=reduce-overhead ;;
  *) echo "COMPILE is 0 (eager) or 1 (compiled with CUDA graphs), not ${COMPILE}" >&2; exit 2 ;;
esac
SEEDS=(${SEEDS:-0 1 2})
for seed in "${SEEDS[@]}"; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "SEEDS holds whole numbers separated by spaces (e.g. \"0 1 2\"), not $seed" >&2; exit 2; }
done
mkdir -p "$RESULTS"
{ machine; sha256sum "$TEACHER"; } > "$RESULTS/meta.txt"
MODES=(default use_fp16 use_fp16+student_precision=fp32_output)
NAMES=(default use_fp16 use_fp16-fp32_output)
# the CPU's threads shared out, so that the runs do not oversubscribe it
THREADS=$(( $(nproc) / (${#SEEDS[@]} * ${#MODES[@]}) ))
export OMP_NUM_THREADS=$(( THREADS > 0 ? THREADS : 1 ))
PIDS=()
for seed in "${SEEDS[@]}"; do
  for i in "${!MODES[@]}"; do
    # the teacher's own samplers are scored once, by the first run
    python benchmarks/precision_study.py --teacher "$TEACHER" --modes "${MODES[$i]}$SPEED+seed=$seed" --steps "$STEPS" \
        --eval_every 250 --num_samples 2000 --score_teacher "$([ ${#PIDS[@]} -eq 0 ] && echo True || echo False)" \
        --json "$RESULTS/${NAMES[$i]}-seed$seed.json" > "$RESULTS/${NAMES[$i]}-seed$seed.log" 2>&1 &
    PIDS+=($!)
  done
done
alive() { for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
while alive && [ "$(elapsed)" -lt "$DEADLINE" ]; do sleep 3; done
if alive; then echo "SIGTERM at $(elapsed) s" >> "$RESULTS/meta.txt"; kill -TERM "${PIDS[@]}" 2>/dev/null; fi
STOPPED=$(elapsed)  # the runs score their checkpoints now; GRACE seconds later what is left is killed
while alive && [ $(( $(elapsed) - STOPPED )) -lt "${GRACE:-120}" ]; do sleep 2; done
kill -KILL "${PIDS[@]}" 2>/dev/null
echo "done at $(elapsed) s" >> "$RESULTS/meta.txt"
if ls "$RESULTS"/*.json > /dev/null 2>&1; then
  python benchmarks/precision_study.py --table --json "$(ls "$RESULTS"/*.json | paste -sd,)" | tee "$RESULTS/table.md"
else
  echo "no run wrote its results (see $RESULTS/*.log)" | tee "$RESULTS/table.md"
fi
if [ -n "${OUT:-}" ]; then tar czf "$OUT/study.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"; fi
