"""The configurations the benchmarks time and study (benchmarks/train_step.py, profile_step.py,
precision_study.py): a *mode* names trainer options, so that one command line compares several.

Modes:
  default    what scripts/cm_train.py runs on this device with no speed flag (--speed auto: `fast` on
             CUDA, `eager` on a CPU)
  use_fp16   the default with --use_fp16 True: the original's fp16 path (everything, the student too, in
             float16 with dynamic loss scaling), what scripts/distill_pid_diffusion.sh runs for ImageNet-64
  eager      the --speed eager preset, TrainConfig's declared defaults: the reference's numbers computed
             faster, no compilation
  reference  the --speed reference preset: the original's numerics and structure (fp32, two separate
             student calls, explicit float32-softmax attention, per-parameter optimizer loop, NCHW, no
             compilation, the host reading each fp16 step's overflow check before it queues the next)
  fast       the --speed fast preset: bf16 autocast for teacher and LPIPS with the student in float32,
             one batched student call, fused attention (SDPA), multi-tensor optimizer, channels-last,
             cuDNN autotuning, torch.compile, one DDP gradient bucket under several processes, fp16 steps
             queued before the host knows whether the one ahead overflowed
  ablation   reference plus one option at a time, cumulatively, in the order listed in ABLATION
  fast-no<option>  fast with one option as in reference, e.g. fast-nocompile, fast-nochannels_last
  <mode>+<option>=<value>  a mode with trainer options changed, e.g. fast+compile_mode=reduce-overhead,
             fast-nocompile+cudnn_benchmark=false (several may follow one another)
"""

import dataclasses

from .settings import str2bool
from .speed import preset_values
from .trainer import TrainConfig

REFERENCE = preset_values(TrainConfig, "reference", "cuda")
ABLATION = [("attention", "sdpa"), ("batched_student", True), ("fused_optimizer", True), ("channels_last", True),
            ("mixed_precision", "bf16"), ("student_precision", "fp32"), ("cudnn_benchmark", True), ("compile", True),
            ("ddp_bucket_cap_mb", 0)]
FAST = preset_values(TrainConfig, "fast", "cuda")


def option_value(name, text):
    """A `+name=value` override, typed like the trainer's default for that option."""
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)}
    if name not in defaults:
        raise ValueError(f"unknown trainer option {name!r} in a benchmark mode")
    default = defaults[name]
    return str2bool(text) if isinstance(default, bool) else type(default)(text)


def mode_options(modes, device_type=None):
    """[(label, trainer options)] for the requested modes on `device_type` (default: CUDA when there is a
    GPU, as the scripts choose)."""
    out = []
    for mode in modes:
        base, *overrides = mode.split("+")
        if base in ("default", "use_fp16"):
            options = preset_values(TrainConfig, "auto", device_type, use_fp16=base == "use_fp16")
        elif base == "eager":
            options = preset_values(TrainConfig, "eager", device_type)
        elif base == "reference":
            options = dict(REFERENCE)
        elif base == "fast":
            options = dict(FAST)
        elif base.startswith("fast-no") and base[len("fast-no"):] in FAST:
            name = base[len("fast-no"):]
            options = {**FAST, name: REFERENCE[name]}
        elif base == "ablation" and not overrides:
            options = dict(REFERENCE)
            for name, value in ABLATION:
                options = {**options, name: value}
                out.append((f"+{name}={value}", dict(options)))
            continue
        else:
            raise ValueError(f"unknown mode {mode!r}; valid: default, use_fp16, eager, reference, fast, ablation, fast-no<option> with "
                             f"<option> one of {', '.join(FAST)}, each but ablation with +<option>=<value> "
                             "overrides")
        for override in overrides:
            name, _, text = override.partition("=")
            options[name] = option_value(name, text)
        out.append((mode, options))
    return out



STUDY_SETTINGS = dict(loss_norm="l2", weight_schedule="uniform", start_scales=250, lr=1e-3, optimizer="radam",
                      global_batch_size=64, ema_rate="0.99,0.999")
"""The precision study's runs: the quickstart's settings."""
STUDY_LOG_INTERVAL = 50


def study_config(teacher, folder, steps, eval_every, options):
    """The trainer configuration of one precision-study run: the quickstart's settings, `options` on top."""
    return TrainConfig(teacher_model_path=teacher, log_dir=folder, total_training_steps=steps,
                       save_interval=eval_every, log_interval=min(STUDY_LOG_INTERVAL, eval_every),
                       **{**STUDY_SETTINGS, **options})
