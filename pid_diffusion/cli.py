"""The official flag surface (names, defaults, meanings; docs/differences.md lists what changed),
turned into objects once.

Flags are typed by their default as in the original (`bool` flags accept yes/true/t/y/1 and
no/false/f/n/0). Flags the original accepts but PID never uses are still accepted, and a warning
says so when one is given.
"""

import argparse
import dataclasses
import datetime
import os
import signal
import sys
import traceback

from . import dist
from .evaluation import ONE_SHOT_MODE, TEACHER_MODE, sampler_options
from .generate import GenerationRequest
from .speed import ONE_BUCKET, ORIGINAL_DDP_BUCKET_MB, SpeedSettings, resolve_speed

MODEL_FLAGS = {
    "sigma_min": (0.002, "smallest noise level σ_min of the ρ-grid (the one-step sample's level)"),
    "sigma_max": (80.0, "largest noise level σ_max; the noise z = σ_max·ε"),
    "rho": (7.0, "curvature ρ of the noise-level grid σ_max … σ_min (PID's training grid, the teacher samplers' "
                 "steps); the original fixes it at EDM's 7"),
    "image_size": (64, "image side: 32 builds DDPM++ (SongUNet), 64 builds ADM (DhariwalUNet); only needed "
                       "for teacher files that do not record their architecture"),
    "num_channels": (128, "base channel count (model_channels)"),
    "num_res_blocks": (2, "residual blocks per resolution (num_blocks)"),
    "attention_resolutions": ("32,16,8", "attention at image_size // r for each downsampling factor r "
                                         "(\"2\" at 32×32 means 16×16; ADM ImageNet-64 is \"2,4,8\")"),
    "channel_mult": ("", "per-level channel multipliers, e.g. \"2,2,2\"; empty = by image size"),
    "dropout": (0.0, "student dropout (the teacher runs in eval mode)"),
    "class_cond": (False, "class-conditional network (10 classes at 32×32, 1000 at 64×64)"),
    "use_fp16": (False, "float16 autocast for every network (training adds the original's dynamic loss scaling; "
                        "a teacher file's own use_fp16 is ignored)"),
    "learn_sigma": (False, "6 output channels (unsupported: EDM teachers predict 3)"),
    "weight_schedule": ("karras", "loss weighting λ(t): snr, snr+1, karras, truncated-snr, uniform"),
    "loss_norm": ("lpips", "distance between implied and teacher denoised images: l1, l2, lpips"),
    "num_heads": (4, None), "num_heads_upsample": (-1, None), "num_head_channels": (-1, None),
    "use_checkpoint": (False, None), "use_scale_shift_norm": (True, None), "resblock_updown": (False, None),
    "use_new_attention_order": (False, None), "continuous": (False, None),
}

TRAIN_FLAGS = {
    "teacher_model_path": ("", "teacher file: an EDM .pkl, our .pt, or an extracted EDM state dict (.ckpt); a path or "
                               "an http(s) URL (fetched once into torch hub's cache)"),
    "teacher_dropout": (0.1, None),
    "training_mode": ("one_shot_pinn_edm_edm", "must be one_shot_pinn_edm_edm (PID); the original's default "
                                               "consistency_distillation is not part of this package"),
    "target_ema_mode": ("fixed", None),
    "scale_mode": ("fixed", "N schedule: fixed (N = start_scales) or progressive (grows to end_scales)"),
    "total_training_steps": (600000, "stop after this many optimizer steps"),
    "start_ema": (0.0, None),
    "start_scales": (40, "N, the number of ρ-grid noise levels (the scripts use 250)"),
    "end_scales": (40, "final N with --scale_mode progressive"),
    "distill_steps_per_iter": (50000, None),
    "data_dir": ("../cifar10/train", None),
    "schedule_sampler": ("uniform", None),
    "lr": (1e-4, "learning rate"),
    "weight_decay": (0.0, "weight decay"),
    "lr_anneal_steps": (0, "linear decay of the learning rate to 0 over this many steps (0 = constant)"),
    "global_batch_size": (2048, "images per step over all processes"),
    "batch_size": (-1, "images per step per process (-1 = global_batch_size / number of processes)"),
    "microbatch": (-1, "gradient-accumulation chunk per process (-1 = whole batch); gradients are summed"),
    "ema_rate": ("0.9999", "comma-separated EMA rates, e.g. 0.999,0.9999,0.99995"),
    "log_interval": (10, "log every this many steps"),
    "save_interval": (10000, "checkpoint every this many steps (and at the end)"),
    "resume_checkpoint": ("", "model%06d.pt to resume from (default: newest complete checkpoint in the run folder)"),
    "fp16_scale_growth": (1e-3, "log2 loss-scale growth per fp16 step"),
    "methodology": ("Euler", None),
    "use_target_model": (False, None),
    "optimizer": ("radam", "radam or adam"),
    "opt_eps": (1e-8, "optimizer epsilon"),
    "eval_interval": (0, "FID of every EMA network and the raw one every this many steps, from --eval_samples "
                         "one-step samples against --fid_dataset / --ref_path with --detector (0 = off; the "
                         "original accepted the flag and ignored it)"),
    "eval_samples": (10000, "samples of each FID during training (fid_evaluation.py's 50,000 stay the measurement)"),
    "random_init_stu": (False, None),
    "seed": (0, "seed of the training noise: the global batch of a step depends only on (seed, step)"),
    "speed": ("auto", "preset of the speed and precision options below: reference (the original's numerics), eager "
                      "(same numbers, faster; no compilation), fast (bf16 teacher and LPIPS, float32 student, "
                      "compiled, channels-last; measured quality-neutral); auto = fast on CUDA, eager on CPU. Options "
                      "given explicitly override the preset"),
    "mixed_precision": ("", "fp32, fp16 or bf16 autocast (fp16 with --use_fp16)"),
    "lpips_vgg_weights": ("", "path or http(s) URL of torchvision's vgg16-397923af.pth (default: model_zoo/, "
                              "torch hub cache)"),
    "lpips_lin_weights": ("", "path or http(s) URL of piq's lpips_weights.pt or lpips' vgg.pth (default: "
                              "model_zoo/, hub cache)"),
    "student_precision": ("autocast", "with --mixed_precision fp16/bf16: autocast (the student in that precision "
                                      "too), fp32_output (its output layers in float32), fp32 (all of it in float32)"),
    "batched_student": (True, "speed: both student evaluations of the PID residual in one call on a doubled batch"),
    "channels_last": (False, "speed: channels-last memory layout on CUDA (slower without --compile: GroupNorm copies)"),
    "attention": ("sdpa", "speed: sdpa (fused attention) or reference (the original's explicit softmax)"),
    "compile": (False, "speed: torch.compile the student, teacher and LPIPS (minutes of compilation first)"),
    "compile_mode": ("default", "speed: torch.compile mode: default, or reduce-overhead (CUDA graphs)"),
    "fused_optimizer": (True, "speed: multi-tensor / fused optimizer kernels"),
    "cudnn_benchmark": (True, "speed: cuDNN times its convolution algorithms once and keeps the fastest"),
    "ddp_bucket_cap_mb": (ORIGINAL_DDP_BUCKET_MB,
                          f"speed: several processes all-reduce gradients in DDP buckets of this many MiB (the "
                          f"original's {ORIGINAL_DDP_BUCKET_MB}); {ONE_BUCKET} = one bucket, so a compiled student "
                          "stays one graph and the all-reduce follows the whole backward (best on NVLink; on slower "
                          "links a bucket size lets it overlap the backward)"),
    "log_format": ("", "what the run logs to, comma-separated: stdout, log (log.txt), csv (progress.csv), tensorboard "
                       "(event files in the run folder, with the sample grids; pip install -e '.[tensorboard]'); "
                       "default: $OPENAI_LOG_FORMAT, else stdout,log,csv, as the original's logger"),
    "allow_changed_settings": (False, "resume a run folder although settings that define the run (teacher, network, "
                                      "loss, N, seed, lr, EMA rates, batch) differ; the change is recorded in "
                                      "run_config.json"),
}

LOOP_FLAG_NAMES = ("global_batch_size", "batch_size", "microbatch", "lr", "weight_decay", "lr_anneal_steps", "optimizer",
                   "opt_eps", "ema_rate", "log_interval", "save_interval", "total_training_steps", "resume_checkpoint",
                   "fp16_scale_growth", "seed", "mixed_precision", "channels_last", "attention", "compile",
                   "compile_mode", "fused_optimizer", "cudnn_benchmark", "ddp_bucket_cap_mb", "allow_changed_settings",
                   "log_format")
"""The flags of the training loop that PID distillation and teacher training share."""

TEACHER_FLAGS = {
    **{name: TRAIN_FLAGS[name] for name in LOOP_FLAG_NAMES},
    "dataset": ("digits", "training data: digits (scikit-learn's 8×8 handwritten digits, training split)"),
    "num_channels": (16, "base channel count of the DDPM++ (model_channels)"),
    "num_res_blocks": (2, "residual blocks per resolution"),
    "dropout": (0.1, "dropout in the residual blocks"),
    "global_batch_size": (128, "images per step over all processes"),
    "lr": (2e-3, "learning rate"),
    "lr_anneal_steps": (8000, "linear decay of the learning rate to 0 over this many steps (0 = constant)"),
    "optimizer": ("adam", "radam or adam"),
    "ema_rate": ("0.999", "comma-separated EMA rates"),
    "log_interval": (500, "log every this many steps"),
    "save_interval": (2000, "checkpoint every this many steps (and at the end)"),
    "total_training_steps": (8000, "stop after this many optimizer steps"),
    "mixed_precision": ("fp32", "fp32, fp16 or bf16 autocast"),
    "export": ("", "after training, write the EMA network as a teacher file here (refused if it exists)"),
    "export_ema_rate": (-1.0, "the EMA rate to export (default: the first of --ema_rate)"),
}
"""scripts/train_teacher.py: the loop's flags (defaults for the digits teacher), data and network."""

SAMPLE_FLAGS = {
    "training_mode": (ONE_SHOT_MODE, f"{ONE_SHOT_MODE} (the PID student, one step) or {TEACHER_MODE} (the EDM "
                                     "teacher with any sampler)"),
    "generator": ("determ", "accepted for compatibility: noise is always seeded per sample"),
    "clip_denoised": (True, "clamp every denoiser output and the result to [-1, 1], as the original"),
    "num_samples": (10000, "number of images"),
    "batch_size": (16, "images per batch per process"),
    "sampler": ("heun", "heun_deter, heun, euler, dpm, ancestral, onestep, oneshot, progdist, multistep "
                        "(the student always uses oneshot)"),
    "s_churn": (0.0, "stochastic churn of heun / dpm"),
    "s_tmin": (0.0, "churn only for σ ≥ s_tmin"),
    "s_tmax": (float("inf"), "churn only for σ ≤ s_tmax"),
    "s_noise": (1.0, "noise inflation of churn"),
    "steps": (40, "sampler steps; heun_deter costs 2·steps − 1 network calls (EDM's 35-call CIFAR setting "
                  "is --steps 18)"),
    "model_path": ("", "teacher file (teacher mode) or student checkpoint model*.pt / ema_*.pt (one-shot mode)"),
    "seed": (42, "seed: sample i's noise and label depend only on (seed, i)"),
    "class_label": (-1, "class-conditional models: give every sample this label (e.g. one digit); -1 = drawn "
                        "uniformly per sample"),
    "ts": ("", "grid indices for --sampler multistep, e.g. 0,22,39"),
}
OVERWRITE_FLAG = {
    "overwrite": (False, "replace the samples file and grid of the output folder if they exist (refused otherwise)"),
}
FID_FLAGS = {
    "fid_dataset": ("cifar10", "reference statistics: cifar10 or imagenet (model_zoo/stats/{cifar10-32x32,"
                               "imagenet-64x64}.npz), or digits (computed from the real digits; --detector digits)"),
    "exp_dir": ("", "folder of checkpoints to evaluate (a training run folder)"),
    "ref_path": ("", "reference statistics .npz (mu, sigma) instead of --fid_dataset's; a path or an http(s) URL"),
    "detector": ("inception", "feature detector: inception (TF-Inception TorchScript), digits (the digits "
                              "classifier's features; also gives class accuracy) or pixels (raw pixels)"),
    "detector_path": ("", "path or http(s) URL of inception-2015-12-05.pt or digits-classifier.pt (default: "
                          "model_zoo/, torch hub cache)"),
    "detector_feed": ("float", "float: unquantised pixels, as the original; uint8: rounded pixels, as EDM"),
    "checkpoints": ("", "comma-separated checkpoint files to evaluate (in --exp_dir, or paths); default: every "
                        "*.pt of --exp_dir but optimizer and trainer-state files, as the original"),
    "save_samples": (True, "write FID/{name}_samples_NxHxWx3.npz with every sample, as the original"),
}
TRAIN_FLAGS.update({name: FID_FLAGS[name] for name in ("detector", "detector_path", "detector_feed", "fid_dataset",
                                                          "ref_path")})  # FID during training: the FID script's flags
TRAINING_MODES = ("one_shot_pinn_edm_edm",)
NETWORK_FLAG_NAMES = ("image_size", "num_channels", "num_res_blocks", "attention_resolutions", "channel_mult",
                      "class_cond", "learn_sigma")


def str2bool(value):
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


SPEED_FLAG_NAMES = ("mixed_precision", "student_precision", "batched_student", "attention", "fused_optimizer",
                    "channels_last", "compile", "cudnn_benchmark", "ddp_bucket_cap_mb")
"""The options a --speed preset sets (those given explicitly win)."""


def add_flags(parser, flags, preset_flags=()):
    for name, (default, help_text) in flags.items():
        kind = str2bool if isinstance(default, bool) else (str if default is None else type(default))
        shown = "set by --speed" if name in preset_flags else repr(default)
        text = (help_text or "accepted for compatibility; PID ignores it") + f" (default: {shown})"
        parser.add_argument(f"--{name}", default=default, type=kind, metavar=type(default).__name__.upper(),
                            help=text.replace("%", "%%"))  # argparse %-formats help texts


def given_flags(argv):
    """Names of the flags that appear on the command line."""
    return {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}


def warn_ignored(given, flags):
    ignored = sorted(name for name in given if name in flags and flags[name][1] is None)
    if ignored:
        print(f"warning: accepted but ignored by PID (as in the original): {', '.join('--' + n for n in ignored)}",
              file=sys.stderr)


def network_flags(args, given):
    """The architecture flags the user gave, for load_teacher (files that record their
    architecture need none; a bare state dict takes the official defaults for the rest)."""
    return {name: getattr(args, name) for name in NETWORK_FLAG_NAMES if name in given}


def speed_options(args, given, device_type):
    """The speed and precision options of a training run: the --speed preset (auto: by device), then
    --use_fp16 (the original's fp16 path: everything, the student too, in float16 with loss
    scaling), then the options given explicitly."""
    given_options = {field.name: getattr(args, field.name) for field in dataclasses.fields(SpeedSettings)
                     if field.name in given}
    return dataclasses.asdict(resolve_speed(args.speed, device_type, args.use_fp16, **given_options))


def sampling_options(args):
    """The sampler and its options from the sampling flags (evaluation.sampler_options checks them)."""
    return sampler_options(args.training_mode, args.sampler, steps=args.steps, sigma_min=args.sigma_min,
                           sigma_max=args.sigma_max, rho=args.rho, s_churn=args.s_churn, s_tmin=args.s_tmin,
                           s_tmax=args.s_tmax, s_noise=args.s_noise, ts=args.ts, clip_denoised=args.clip_denoised)


def default_log_dir():
    """The run folder: $OPENAI_LOGDIR (the original's variable), else ./experiment/openai-<time>."""
    return os.environ.get("OPENAI_LOGDIR") or os.path.join(
        "experiment", "openai-" + datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f"))


def generation_request(args):
    """The samples the sampling flags ask for."""
    return GenerationRequest(args.num_samples, args.batch_size, args.seed, args.use_fp16,
                             None if args.class_label == -1 else args.class_label)


class StoppedBySignal(Exception):
    """SIGTERM or SIGINT outside a training loop (which stops at a step's end instead): the script ends
    at once, with 128 + the signal as exit code; files are written through temporary names, so none is
    left half-written."""

    def __init__(self, signal_number):
        super().__init__(f"stopped by {signal.Signals(signal_number).name}: every file written so far is complete "
                         "(nothing is left half-written); the same command starts again")
        self.exit_code = 128 + signal_number


def _stop_at_once(signal_number, frame):
    raise StoppedBySignal(signal_number)


def run_script(body, extra_errors=()):
    """Start the process group, run body(dist_info), end the group.

    A user error (bad file, bad flag value, full disk, ...) prints one line and exits 1 without a
    traceback; an orderly stop (SIGTERM or SIGINT: StoppedBySignal, or one of `extra_errors` with an
    `exit_code`) prints its line once and exits with that code. With several processes every failure
    ends this process at once (os._exit, skipping MPI's finalisation, which would wait for the others):
    the launcher then stops the rest instead of leaving them blocked in a collective operation."""
    previous = {number: signal.signal(number, _stop_at_once) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        _run_body(body, extra_errors)
    except StoppedBySignal as e:  # while the process group was starting
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run_body(body, extra_errors):
    try:
        info = dist.init()
    except dist.LaunchError as e:  # the processes cannot form their group: each says why, once
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    try:
        body(info)
    except (ValueError, OSError, StoppedBySignal, *extra_errors) as e:
        if hasattr(e, "exit_code"):  # an orderly stop (trainer.TrainingInterrupted): its line, its code
            if info.rank == 0:
                print(str(e), file=sys.stderr, flush=True)
            _exit(e.exit_code, info)
        print(f"error (rank {info.rank}): {e}", file=sys.stderr, flush=True)
        _exit(1, info)
    except BaseException:
        if info.world_size == 1:
            raise
        traceback.print_exc()
        _exit(1, info)
    dist.shutdown()


def _exit(code, info):
    sys.stdout.flush()
    sys.stderr.flush()
    if info.world_size > 1:
        os._exit(code)
    sys.exit(code)
