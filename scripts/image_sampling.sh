#!/usr/bin/env bash
# Sampling commands of the original scripts/image_sampling.sh, with its mistakes fixed:
#   * --num_channels was given twice (192, then 128); each command now gives it once;
#   * the one-step (PID) commands pointed at the teacher file: they take a student checkpoint;
#   * "--steps 35 --sampler heun_deter" costs 69 network calls; EDM's 35-call CIFAR-10 setting is --steps 18
#     (heun_deter uses 2*steps-1 calls).
# Student checkpoints carry their architecture in run_config.json, so they need no network flags.
#
#   bash scripts/image_sampling.sh cifar10-teacher | cifar10-pid | imagenet64-teacher | imagenet64-pid [extra flags]
#   bash scripts/image_sampling.sh edm2-img64-s-teacher | edm2-img64-s-autog-teacher | edm2-img512-xs-teacher | edm2-pid
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
  # EDM2 teachers record their architecture (no network flags); EDM2's sampler is heun_deter with 32 steps (63 calls)
  # and no clamping (EDM2 clamps only the final images, and latents not at all)
  edm2-img64-s-teacher) RUN=EDM2S; FLAGS=(--training_mode one_shot_pinn_edm_edm_teacher --sampler heun_deter --steps 32
      --clip_denoised False --model_path ./model_zoo/edm2-img64-s-1073741-0.075.pkl) ;;
  edm2-img64-s-autog-teacher) RUN=EDM2SAutog; FLAGS=(--training_mode one_shot_pinn_edm_edm_teacher --sampler heun_deter
      --steps 32 --clip_denoised False --model_path ./model_zoo/edm2-img64-s-1073741-0.045.pkl
      --guide_model_path ./model_zoo/edm2-img64-xs-0134217-0.110.pkl --guidance 1.7) ;;
  edm2-img512-xs-teacher) RUN=EDM2XS512; FLAGS=(--training_mode one_shot_pinn_edm_edm_teacher --sampler heun_deter
      --steps 32 --clip_denoised False --model_path ./model_zoo/edm2-img512-xs-2147483-0.135.pkl) ;;
  edm2-pid) RUN=EDM2PID; FLAGS=(--training_mode one_shot_pinn_edm_edm_one_shot --sampler oneshot
      --model_path "${STUDENT:-./experiment/pid_edm2-img64-s/ema_0.99995_400000.pt}") ;;
  *) echo "usage: bash $0 cifar10-teacher|cifar10-pid|imagenet64-teacher|imagenet64-pid|edm2-img64-s-teacher|"\
"edm2-img64-s-autog-teacher|edm2-img512-xs-teacher|edm2-pid [extra flags]" >&2; exit 2 ;;
esac

# shellcheck disable=SC2206
COMMAND=($MPIRUN -np "$NUM_GPUS" "$PYTHON" ./scripts/image_sample.py "${COMMON[@]}" "${FLAGS[@]}" "$@")
export OPENAI_LOGDIR=${OPENAI_LOGDIR:-$LOG_ROOT/$RUN}
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "OPENAI_LOGDIR=$OPENAI_LOGDIR"; printf '%q ' "${COMMAND[@]}"; echo
else
  exec "${COMMAND[@]}"
fi
