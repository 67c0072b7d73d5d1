#!/usr/bin/env bash
# The whole method on a laptop, in minutes, on real data with nothing to download: PID distillation of the
# shipped digits teacher (a class-conditional DDPM++ trained with EDM's objective on scikit-learn's handwritten
# digits, model_zoo/digits-ddpmpp.pt) into a one-step generator, through the same scripts and code paths as a
# CIFAR-10 or ImageNet-64 run, on 2 CPU processes under mpirun (gloo); then digit FID and conditional accuracy
# (model_zoo/digits-classifier.pt) of every checkpoint, and pictures.
#
#   bash scripts/quickstart.sh                 # a new run folder experiment/quickstart-<time>
#   bash scripts/quickstart.sh --resume DIR    # continue the run in DIR
#   bash scripts/quickstart.sh --edm2          # the EDM2 route: PID of the shipped EDM2 digits teachers (pixel,
#                                              # autoguided, classifier-free guided, latent; pip install -e
#                                              # '.[latent]'), QUICKSTART_STEPS (default 300) each, and their tables
# Sizes: QUICKSTART_STEPS (default 1000), QUICKSTART_BATCH (64), QUICKSTART_SAMPLES (2000), NUM_PROCESSES (2);
# QUICKSTART_RUN_DIR names a new run folder.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
REMAKE=()
STEPS=${QUICKSTART_STEPS:-1000}
BATCH=${QUICKSTART_BATCH:-64}
SAMPLES=${QUICKSTART_SAMPLES:-2000}
NUM_PROCESSES=${NUM_PROCESSES:-2}
TEACHER=model_zoo/digits-ddpmpp.pt

if [[ "${1:-}" == "--edm2" ]]; then
  RUN_DIR=${QUICKSTART_RUN_DIR:-experiment/quickstart-edm2-$(date +%Y%m%d-%H%M%S)-$$}
  [[ ! -e "$RUN_DIR" ]] || { echo "error: $RUN_DIR exists; give another QUICKSTART_RUN_DIR" >&2; exit 2; }
  exec "$PYTHON" scripts/edm2_digits.py --distil_only --out "$RUN_DIR" --pid_steps "${QUICKSTART_STEPS:-300}" \
    --samples "${QUICKSTART_SAMPLES:-500}" --processes "$NUM_PROCESSES"
elif [[ "${1:-}" == "--resume" ]]; then
  RUN_DIR=${2:?usage: bash scripts/quickstart.sh --resume RUN_DIR}
  [[ -f "$RUN_DIR/run_config.json" ]] || { echo "error: $RUN_DIR is not a run folder" >&2; exit 2; }
  REMAKE=(--overwrite True)  # the demo's own sample folders of this run are made again from its newest checkpoint
else
  RUN_DIR=${QUICKSTART_RUN_DIR:-experiment/quickstart-$(date +%Y%m%d-%H%M%S)-$$}
  [[ ! -e "$RUN_DIR" ]] || { echo "error: $RUN_DIR exists; use --resume $RUN_DIR to continue it" >&2; exit 2; }
fi

MPIRUN=$(dirname "$PYTHON")/mpirun
[[ -x "$MPIRUN" ]] || MPIRUN=$(command -v mpirun || true)
if [[ -n "$MPIRUN" ]] && "$PYTHON" -c "from mpi4py import MPI" 2>/dev/null; then
  LAUNCH=("$MPIRUN" -np "$NUM_PROCESSES")
else
  echo "note: no working MPI runtime (mpirun + mpi4py) found: running a single process instead." \
       "Install one with: pip install -e '.[mpich]'"
  LAUNCH=()
fi
EVERY=$((STEPS / 8 > 0 ? STEPS / 8 : 1))  # a checkpoint, and its FID measured while training, every EVERY steps
START=$SECONDS
PHASES=()
phase_done() {  # the time of the phase that just ended, for the summary
  PHASES+=("$1 $((SECONDS - PHASE_START)) s")
  PHASE_START=$SECONDS
}
PHASE_START=$SECONDS

echo "== 1/4 PID distillation: $STEPS steps of $BATCH images, ${LAUNCH[*]:-1 process} -> $RUN_DIR"
OPENAI_LOGDIR=$RUN_DIR "${LAUNCH[@]}" "$PYTHON" scripts/cm_train.py --teacher_model_path "$TEACHER" \
  --training_mode one_shot_pinn_edm_edm --start_scales 250 --loss_norm l2 --weight_schedule uniform \
  --optimizer radam --lr 0.003 --global_batch_size "$BATCH" --total_training_steps "$STEPS" \
  --save_interval "$EVERY" --log_interval $((STEPS / 10 > 0 ? STEPS / 10 : 1)) --ema_rate 0.99,0.995 \
  --eval_interval "$EVERY" --eval_samples "$SAMPLES" --detector digits --fid_dataset digits
phase_done "distillation (with FID of every checkpoint)"

echo "== 2/4 the newest checkpoints beside the teacher's samplers: digit FID, conditional accuracy (same noises and labels)"
"$PYTHON" scripts/demo_metrics.py --run_dir "$RUN_DIR" --num_samples "$SAMPLES"
phase_done "teacher beside student"

echo "== 3/4 digit FID and conditional accuracy of every checkpoint (step 1 measured them: the same question, answered once)"
# one process: the walk finds every answer in the table (a walk that measures runs under mpirun as step 1 does)
"$PYTHON" scripts/fid_evaluation.py --exp_dir "$RUN_DIR" --detector digits --fid_dataset digits \
  --num_samples "$SAMPLES" --batch_size 500 --seed 0 --save_samples False 2> >(grep -v "sampling:" >&2)
phase_done "FID table and plot"

echo "== 4/4 samples: teacher (heun_deter, 18 steps = 35 calls) and student (1 call)"
OPENAI_LOGDIR=$RUN_DIR/samples_teacher "$PYTHON" scripts/image_sample.py --training_mode one_shot_pinn_edm_edm_teacher \
  --model_path "$TEACHER" --sampler heun_deter --steps 18 --num_samples 100 --batch_size 100 "${REMAKE[@]}" \
  2> >(grep -v "sampling:" >&2)
FINAL=$(ls "$RUN_DIR"/ema_0.99_*.pt | sort | tail -n 1)
OPENAI_LOGDIR=$RUN_DIR/samples_student "$PYTHON" scripts/image_sample.py --training_mode one_shot_pinn_edm_edm_one_shot \
  --model_path "$FINAL" --num_samples 100 --batch_size 100 "${REMAKE[@]}" 2> >(grep -v "sampling:" >&2)
phase_done "samples"

echo
echo "== summary ($((SECONDS - START)) s: $(IFS=,; echo "${PHASES[*]}" | sed 's/,/, /g')) — run folder $RUN_DIR"
"$PYTHON" scripts/demo_metrics.py --run_dir "$RUN_DIR" --show
echo "figures: $RUN_DIR/teacher_vs_student.png, $RUN_DIR/fid_vs_step.png; all checkpoints: $RUN_DIR/fid_results_0.csv"
