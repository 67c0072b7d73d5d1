"""Speed and precision of a training run: one typed object, resolved once from a preset and the
options given (`preset_values`), asked by the trainer what to do (`autocast`, `loss_scaling`,
`memory_format`), and applied to PyTorch's process-wide switches in one place (`set_global_switches`).

Why the student keeps float32 in the `fast` preset: PID's target is a finite difference of two
student outputs multiplied by up to 46, so the student's rounding is amplified that much; the
precision study on a real teacher (docs/precision.md) decided the presets.
"""

import contextlib
import dataclasses
import math

import torch

from .dist import visible_device_type
from .networks.layers import ATTENTION_IMPLEMENTATIONS
from .settings import option, preset_options, setting

MIXED_PRECISION = ("fp32", "fp16", "bf16")
STUDENT_PRECISION = ("autocast", "fp32_output", "fp32")
"""Under --mixed_precision fp16/bf16: the student runs in the autocast precision, or only its output
layers in float32, or all of it in float32 (the teacher and LPIPS stay in the autocast precision)."""
COMPILE_MODES = ("default", "reduce-overhead")
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

ORIGINAL_DDP_BUCKET_MB = 128
"""The original's DDP gradient bucket size (MiB)."""
ONE_BUCKET = 0
"""--ddp_bucket_cap_mb 0: every gradient in one DDP bucket."""

PRESET_CHANGES = {
    "reference": dict(batched_student=False, attention="reference", fused_optimizer=False, cudnn_benchmark=False),
    "eager": {},
    "fast": dict(mixed_precision="bf16", student_precision="fp32", channels_last=True, compile=True,
                 ddp_bucket_cap_mb=ONE_BUCKET),
}
"""--speed, as changes to the options' declared defaults (which are `eager`'s): reference = the
original's numerics and structure (fp32, two student calls, explicit-softmax attention,
per-parameter optimizer loop, the host reading each fp16 step's overflow check before the next); eager = the same numbers computed faster, no compilation (the
default on CPU); fast = the fastest configuration measured quality-neutral on a real teacher
(docs/precision.md): teacher and LPIPS in bf16, the student in float32 (its finite difference
amplifies bf16 rounding up to 46×), compiled, channels-last, and under several processes one DDP
bucket, since DDP cuts a compiled graph at its bucket boundaries (docs/benchmarks.md); the default on CUDA."""
DEFAULT_SPEED = {"cuda": "fast", "cpu": "eager"}


@dataclasses.dataclass(kw_only=True)
class SpeedSettings:
    """The speed and precision options of every training loop; the trainers' configurations are
    SpeedSettings with more fields (loop.LoopConfig), so run_config.json records them beside the others."""
    HELP_GROUP = "speed and precision"


    speed_preset: str = setting("")
    """The --speed preset the speed options not given came from (auto resolved; ', use_fp16' with --use_fp16);
    '' when the options were set directly."""
    mixed_precision: str = option("fp32", "fp32, fp16 or bf16 autocast", preset=True)
    channels_last: bool = option(False, "speed: channels-last memory layout on CUDA (slower without --compile: "
                                        "GroupNorm copies)", preset=True)
    attention: str = option("sdpa", "speed: sdpa (fused attention) or reference (the original's explicit softmax)",
                            preset=True)
    compile: bool = option(False, "speed: torch.compile the student, teacher and LPIPS (minutes of compilation first)",
                           preset=True)
    compile_mode: str = option("default", "speed: torch.compile mode: default, or reduce-overhead (CUDA graphs)")
    fused_optimizer: bool = option(True, "speed: multi-tensor / fused optimizer kernels", preset=True)
    speculative_step: bool = option(False, "speed: under fp16 loss scaling, queue the next step before the host has read "
                                           "whether this one overflowed (an overflow then discards both on the device "
                                           "and the skipped step is retried: the same numbers either way). Off: on an "
                                           "H100 it ran CIFAR-10's first steps at 0.89x (docs/benchmarks.md)",
                                    preset=True)
    cudnn_benchmark: bool = option(True, "speed: cuDNN times its convolution algorithms once and keeps the fastest",
                                   preset=True)
    ddp_bucket_cap_mb: int = option(
        ORIGINAL_DDP_BUCKET_MB,
        f"speed: several processes all-reduce gradients in DDP buckets of this many MiB (the original's "
        f"{ORIGINAL_DDP_BUCKET_MB}); {ONE_BUCKET} = one bucket, so a compiled student stays one graph and the all-reduce "
        "follows the whole backward (best on NVLink; on slower links a bucket size lets it overlap the backward)",
        preset=True)

    def check_speed(self):
        for name, valid in (("mixed_precision", MIXED_PRECISION), ("attention", ATTENTION_IMPLEMENTATIONS),
                            ("compile_mode", COMPILE_MODES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"--{name} {getattr(self, name)!r} is not supported; valid: {', '.join(valid)}")
        if not isinstance(self.ddp_bucket_cap_mb, int) or self.ddp_bucket_cap_mb < 0:
            raise ValueError(f"--ddp_bucket_cap_mb {self.ddp_bucket_cap_mb!r} is not supported: give a bucket size in "
                             f"MiB (the original's {ORIGINAL_DDP_BUCKET_MB}), or {ONE_BUCKET} for one bucket")

    @property
    def loss_scaling(self):
        """fp16 needs the original's dynamic loss scaling; float32 and bf16 do not."""
        return self.mixed_precision == "fp16"

    def autocast(self, device_type):
        """The autocast context of the teacher, LPIPS and (unless kept in float32) the student."""
        dtype = AUTOCAST_DTYPES.get(self.mixed_precision)
        return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)

    def memory_format(self, device_type):
        return torch.channels_last if self.channels_last and device_type == "cuda" else torch.contiguous_format

    def compiled(self, module):
        """`module` under torch.compile when `compile` is on (None stays None)."""
        if module is None or not self.compile:
            return module
        return torch.compile(module, mode=self.compile_mode)

    def ddp_bucket_mib(self, module):
        """DDP's bucket_cap_mb for `module`: the size asked for, or with ONE_BUCKET one that holds
        every gradient (the compiled student stays one graph; the all-reduce follows the backward)."""
        if self.ddp_bucket_cap_mb != ONE_BUCKET:
            return self.ddp_bucket_cap_mb
        gradient_bytes = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
        return math.ceil(gradient_bytes / 2 ** 20) + 1

    def set_global_switches(self, device_type):
        """Set PyTorch's process-wide switches these settings need: cuDNN autotuning, and under
        compilation inductor's channels-last layout. The only place that touches global state."""
        if device_type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.compile:
            keep_compiled_convolutions_channels_last(self.memory_format(device_type) is torch.channels_last)


def preset_values(config_class, preset, device_type=None, use_fp16=False):
    """The values a --speed preset gives the preset options of `config_class` ('auto': by device; no
    `device_type`: cuda when a GPU is visible, else cpu, as the scripts choose), then --use_fp16 (the
    original's fp16 path: everything, the student too, in float16 autocast with loss scaling)."""
    name = resolved_preset(preset, device_type)
    values = {**preset_options(config_class), **PRESET_CHANGES[name]}
    if use_fp16:
        values.update(mixed_precision="fp16", student_precision="autocast")
    return values


def resolved_preset(preset, device_type=None):
    """The --speed preset's name, 'auto' resolved by device (see preset_values)."""
    device_type = device_type or visible_device_type()
    name = DEFAULT_SPEED.get(device_type, "eager") if preset == "auto" else preset
    if name not in PRESET_CHANGES:
        raise ValueError(f"--speed {preset!r} is not supported; valid: auto, {', '.join(PRESET_CHANGES)}")
    return name


def keep_compiled_convolutions_channels_last(enabled):
    """Inductor keeps a compiled graph's convolution activations channels-last only if no convolution
    has at least twice as many input as output channels; the U-Net's decoder has such convolutions,
    so its graphs ran NCHW around channels-last weights and cuDNN copied every gradient into
    channels-last in the backward. This forces the layout. It is inductor's global setting: passed
    as a per-call compile option it measured slower (the backward graphs, compiled later, ran
    without it; docs/benchmarks.md)."""
    import torch._inductor.config as inductor_config

    inductor_config.force_layout_optimization = enabled
