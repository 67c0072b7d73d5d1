#!/usr/bin/env bash
# Sampling commands of the original scripts/image_sampling.sh, with its mistakes fixed:
#   * --num_channels was given twice (192, then 128); each command now gives it once;
#   * the one-step (PID) commands pointed at the teacher file: they take a student checkpoint;
#   * "--steps 35 --sampler heun_deter" costs 69 network calls; EDM's 35-call CIFAR-10 setting is --steps 18
#     (heun_deter uses 2*steps-1 calls).
# Student checkpoints carry their architecture in run_config.json, so they need no network flags.
#
#   bash scripts/image_sampling.sh cifar10-teacher | cifar10-pid | imagenet64-teacher | imagenet64-pid [extra flags]
#   bash scripts/image_sampling.sh edm2-img64-s-fid-teacher | edm2-img512-s-guid-fid-teacher | <EDM2 preset>-teacher | edm2-pid
# NUM_GPUS (default 1), STUDENT (a model*.pt / ema_*.pt), MPIRUN and DRY_RUN=1 as in distill_pid_diffusion.sh.
set -euo pipefail

NUM_GPUS=${NUM_GPUS:-1}
MPIRUN=${MPIRUN:-mpirun}
PYTHON=${PYTHON:-python}
LOG_ROOT=${LOG_ROOT:-./experiment/image_sampling}
WHAT=${1:-cifar10-teacher}
shift || true

COMMON=(--batch_size 128 --num_samples 128 --sigma_max 80 --sigma_min 0.002 --s_churn 0 --use_fp16 False)
CIFAR10_NET=(--attention_resolutions 2 --class_cond False --dropout 0.0 --image_size 32 --num_channels 128
             --num_res_blocks 4)
IMAGENET64_NET=(--attention_resolutions 2,4,8 --class_cond True --dropout 0.1 --image_size 64 --num_channels 192
                --num_res_blocks 3)

case "$WHAT" in
  cifar10-teacher) RUN=CIFAREDM; FLAGS=(--training_mode one_shot_pinn_edm_edm_teacher --sampler heun_deter
      --steps 18 --model_path ./model_zoo/edm-cifar10-32x32-uncond-vp.pkl "${CIFAR10_NET[@]}") ;;
  cifar10-pid) RUN=CIFARPID; FLAGS=(--training_mode one_shot_pinn_edm_edm_one_shot --sampler oneshot
      --model_path "${STUDENT:-./model_zoo/pid_cifar/pid_cifar.pt}" "${CIFAR10_NET[@]}") ;;
  imagenet64-teacher) RUN=ImageNetEDM; FLAGS=(--training_mode one_shot_pinn_edm_edm_teacher --sampler heun_deter
      --steps 79 --model_path ./model_zoo/edm-imagenet-64x64-cond-adm.pkl "${IMAGENET64_NET[@]}") ;;
  imagenet64-pid) RUN=ImageNetPID; FLAGS=(--training_mode one_shot_pinn_edm_edm_one_shot --sampler oneshot
      --model_path "${STUDENT:-./experiment/pid_imagenet/ema_0.99995_400000.pt}" "${IMAGENET64_NET[@]}") ;;
  # EDM2 teachers: <an EDM2 preset>-teacher (pid_diffusion/presets.py names the teacher, its guide and the weight);
  # they record their architecture (no network flags) and are sampled with EDM2's protocol (Heun, 32 steps, no
  # clamping) unless flags say otherwise
  edm2-*-teacher) RUN=$WHAT; FLAGS=(--preset "${WHAT%-teacher}") ;;
  edm2-pid) RUN=EDM2PID; FLAGS=(--training_mode one_shot_pinn_edm_edm_one_shot --sampler oneshot
      --model_path "${STUDENT:-./experiment/pid_edm2-img64-s/ema_0.99995_400000.pt}") ;;
  *) echo "usage: bash $0 cifar10-teacher|cifar10-pid|imagenet64-teacher|imagenet64-pid|<EDM2 preset>-teacher|"\
"edm2-pid [extra flags]" >&2; exit 2 ;;
esac

# shellcheck disable=SC2206
COMMAND=($MPIRUN -np "$NUM_GPUS" "$PYTHON" ./scripts/image_sample.py "${COMMON[@]}" "${FLAGS[@]}" "$@")
export OPENAI_LOGDIR=${OPENAI_LOGDIR:-$LOG_ROOT/$RUN}
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "OPENAI_LOGDIR=$OPENAI_LOGDIR"; printf '%q ' "${COMMAND[@]}"; echo
else
  exec "${COMMAND[@]}"
fi
