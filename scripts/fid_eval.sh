#!/usr/bin/env bash
# FID of every checkpoint in a run folder (the original scripts/fid_eval.sh).
#
#   bash scripts/fid_eval.sh cifar10 [EXP_DIR] [extra flags]     # default EXP_DIR ./model_zoo/pid_cifar
#   bash scripts/fid_eval.sh imagenet64 [EXP_DIR] [extra flags]  # default EXP_DIR ./experiment/pid_imagenet
#   bash scripts/fid_eval.sh edm2-img64|edm2-img512 [EXP_DIR]    # EDM2 students, against EDM2's statistics
# Needs model_zoo/inception-2015-12-05.pt and model_zoo/stats/{cifar10-32x32,imagenet-64x64}.npz (EDM2: {img64,img512}.pkl)
# (model_zoo/README.md). NUM_GPUS (default 1), MPIRUN and DRY_RUN=1 as in distill_pid_diffusion.sh.
# Evaluates every *.pt of EXP_DIR but optimizer and trainer-state files (the released pid_cifar.pt too);
# --checkpoints a.pt,b.pt names some. The architecture flags below, the original's, describe a file
# with no run_config.json beside it; a checkpoint of this package's runs is checked against them.
# The original's ImageNet command left --seed at 42; both datasets use seed 0 here.
set -euo pipefail

NUM_GPUS=${NUM_GPUS:-1}
MPIRUN=${MPIRUN:-mpirun}
PYTHON=${PYTHON:-python}
WHAT=${1:-cifar10}
shift || true

case "$WHAT" in
  cifar10) EXP_DIR=${1:-./model_zoo/pid_cifar}
           FLAGS=(--fid_dataset cifar10 --batch_size 125 --use_fp16 False --image_size 32 --num_channels 128
                  --num_res_blocks 4 --attention_resolutions 2 --class_cond False) ;;
  imagenet64) EXP_DIR=${1:-./experiment/pid_imagenet}
              FLAGS=(--fid_dataset imagenet --batch_size 250 --use_fp16 True --image_size 64 --num_channels 192
                     --num_res_blocks 3 --attention_resolutions 32,16,8 --class_cond True) ;;
  # EDM2 students record their architecture in run_config.json: no network flags
  edm2-img64) EXP_DIR=${1:-./experiment/pid_edm2-img64-s}
              FLAGS=(--fid_dataset edm2-img64 --batch_size 250 --use_fp16 False) ;;
  edm2-img512) EXP_DIR=${1:-./experiment/pid_edm2-img512-xs}  # latents, decoded: pip install -e '.[latent]'
               FLAGS=(--fid_dataset edm2-img512 --batch_size 50 --use_fp16 False) ;;
  *) echo "usage: bash $0 cifar10|imagenet64|edm2-img64|edm2-img512 [EXP_DIR] [extra flags]" >&2; exit 2 ;;
esac
shift || true

# shellcheck disable=SC2206
COMMAND=($MPIRUN -np "$NUM_GPUS" "$PYTHON" ./scripts/fid_evaluation.py --exp_dir "$EXP_DIR"
         --training_mode one_shot_pinn_edm_edm_one_shot --sampler oneshot --sigma_max 80 --sigma_min 0.002
         --num_samples 50000 --seed 0 "${FLAGS[@]}" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${COMMAND[@]}"; echo
else
  exec "${COMMAND[@]}"
fi
