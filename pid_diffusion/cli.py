"""The four scripts' command lines: which declared options each accepts (pid_diffusion/settings.py
makes the parsers), the checks a command line needs before any work, and the objects the values
become. The names, defaults and meanings are the original's (docs/differences.md lists what changed).

Flags are typed by their declared type (`bool` flags accept yes/true/t/y/1 and no/false/f/n/0).
Flags the original accepts but PID never uses are still accepted, and a warning says so when one is
given.
"""

import dataclasses
import datetime
import os

from .checkpoint import FLAG_FAMILY
from .digits import DIGITS_NETWORK_CONFIG, NUM_CLASSES, RESOLUTION
from .families import edm
from .evaluation.sampling import ONE_SHOT_MODE, sampler_options, TEACHER_MODE
from .evaluation.detectors import DetectorOptions
from .generate import GenerationRequest
from .guidance import GuidanceOptions
from .latents import LatentOptions
from .loop import LoopConfig, ema_rates
from .presets import PresetOptions
from .schedules import NoiseLevels
from .settings import OptionParser, option, options_of, values_for
from .speed import SpeedSettings, preset_values, resolved_preset
from .teacher_trainer import TeacherTrainConfig, log_normal_sigmas, teacher_family_config
from .trainer import TrainConfig

DISTILLATION_MODE = "one_shot_pinn_edm_edm"
"""cm_train.py's only --training_mode: PID."""


@dataclasses.dataclass(kw_only=True)
class ModelFlags:
    """The original's model flags that are neither the architecture nor a training setting."""
    HELP_GROUP = "precision of every network"

    use_fp16: bool = option(False, "float16 autocast for every network (training adds the original's dynamic loss "
                                   "scaling; a teacher file's own use_fp16 is ignored)", group=SpeedSettings.HELP_GROUP)
    num_heads: int = option(4)
    num_heads_upsample: int = option(-1)
    num_head_channels: int = option(-1)
    use_checkpoint: bool = option(False)
    use_scale_shift_norm: bool = option(True)
    resblock_updown: bool = option(False)
    use_new_attention_order: bool = option(False)
    continuous: bool = option(False)


@dataclasses.dataclass(kw_only=True)
class DistillationFlags(PresetOptions):
    """cm_train.py's flags that are not settings of the trainer."""
    HELP_GROUP = "the original's other flags of cm_train.py"

    training_mode: str = option(DISTILLATION_MODE, f"must be {DISTILLATION_MODE} (PID); the original's default "
                                                   "consistency_distillation is not part of this package",
                                group=TrainConfig.HELP_GROUP)
    speed: str = option("auto", "preset of the speed and precision options: reference (the original's numerics), "
                                "eager (same numbers, faster; no compilation), fast (bf16 teacher and LPIPS, float32 "
                                "student, compiled, channels-last; measured quality-neutral); auto = fast on CUDA, "
                                "eager on CPU. Options given explicitly override the preset", group=SpeedSettings.HELP_GROUP)
    teacher_dropout: float = option(0.1)
    target_ema_mode: str = option("fixed")
    start_ema: float = option(0.0)
    distill_steps_per_iter: int = option(50000)
    data_dir: str = option("../cifar10/train")
    schedule_sampler: str = option("uniform")
    methodology: str = option("Euler")
    use_target_model: bool = option(False)
    random_init_stu: bool = option(False)


@dataclasses.dataclass(kw_only=True)
class SamplingFlags(NoiseLevels, GuidanceOptions, LatentOptions, PresetOptions):
    """image_sample.py's and fid_evaluation.py's flags of the model and how it is sampled. The defaults shown are
    the original's, which EDM teachers and their students keep; EDM2's models take EDM2's protocol for the flags
    not given (FAMILY_PROTOCOL_HELP)."""
    HELP_GROUP = "the model and how it is sampled"

    training_mode: str = option(ONE_SHOT_MODE, f"{ONE_SHOT_MODE} (the PID student, one step) or {TEACHER_MODE} (the "
                                               "teacher with any sampler)")
    generator: str = option("determ", "accepted for compatibility: noise is always seeded per sample")
    clip_denoised: bool = option(True, "clamp every denoiser output and the result to [-1, 1], as the original")
    num_samples: int = option(10000, "number of images")
    batch_size: int = option(16, "images per batch per process")
    sampler: str = option("heun", "heun_deter, heun, euler, dpm, ancestral, onestep, oneshot, progdist, multistep "
                                  "(the student always uses oneshot)")
    s_churn: float = option(0.0, "stochastic churn of heun / dpm")
    s_tmin: float = option(0.0, "churn only for σ ≥ s_tmin")
    s_tmax: float = option(float("inf"), "churn only for σ ≤ s_tmax")
    s_noise: float = option(1.0, "noise inflation of churn")
    steps: int = option(40, "sampler steps; heun_deter costs 2·steps − 1 network calls (EDM's 35-call CIFAR setting "
                            "is --steps 18)")
    model_path: str = option("", "teacher file (teacher mode) or student checkpoint model*.pt / ema_*.pt (one-shot "
                                 "mode)")
    seed: int = option(42, "seed: sample i's noise and label depend only on (seed, i); 42 is the original's sampling and "
                           "FID default (training and its grids default to 0: give --seed 0 to draw their samples); "
                           "EDM2 models take EDM2's 0")
    class_label: int = option(-1, "class-conditional models: give every sample this label (e.g. one digit); -1 = drawn "
                                  "uniformly per sample")
    ts: str = option("", "grid indices for --sampler multistep, e.g. 0,22,39")


@dataclasses.dataclass(kw_only=True)
class SampleFolderFlags:
    HELP_GROUP = "the output folder"

    overwrite: bool = option(False, "replace the samples file and grid of the output folder if they exist (refused "
                                    "otherwise)")


@dataclasses.dataclass(kw_only=True)
class FIDFlags(DetectorOptions):
    """fid_evaluation.py's flags of what is evaluated and what is written."""
    HELP_GROUP = "the walk: what is evaluated, where the results go"

    exp_dir: str = option("", "folder of checkpoints to evaluate (a training run folder); with --preset, where the "
                              "preset teacher's results go")
    results_dir: str = option("", "folder of the walk's results (fid_results_{seed}.csv, FID/, fid_vs_step.png); default: "
                                  "--exp_dir, as the original. Give one to evaluate a folder you cannot write to")
    seed_ranges: int = option(1, "evaluate each checkpoint K times on disjoint sample ranges (samples k·N … (k+1)·N − 1 "
                                 "for k < K, N = --num_samples), a row each, and report each FID and the minimum "
                                 "(EDM2's protocol: 3)")
    checkpoints: str = option("", "comma-separated checkpoint files to evaluate (in --exp_dir, or paths); default: every "
                                  "*.pt of --exp_dir but optimizer and trainer-state files, as the original")
    save_samples: bool = option(True, "write FID/{name}_samples_NxHxWx3.npz with every sample, as the original")
    metrics: str = option("fid", "comma list of fid, is (Inception Score), pr (precision and recall), kid, fd_dinov2: "
                                 "beside fid_results_{seed}.csv, a row per checkpoint and metric in metrics_{seed}.csv "
                                 "(FID is always measured: is, pr and kid use its pass). is needs class logits (the "
                                 "inception and digits detectors); pr and kid compare with --real_images (with --detector "
                                 "digits: the real digits); fd_dinov2 runs DINOv2 on the same samples (--dinov2_repo, "
                                 "--dinov2_path, --dinov2_ref_path)")
    dinov2_ref_path: str = option("", "--metrics fd_dinov2: DINOv2 reference statistics (an .npz of --detector dinov2 "
                                      "--write_reference, or EDM2's .pkl); default: --ref_path's or --fid_dataset's file "
                                      "(EDM2's .pkl files hold an fd_dinov2 entry)")
    samples: str = option("", "measure images made by any code instead of checkpoints: a samples .npz in the original's "
                              "format, or a folder or .zip of images; a row named after it in --results_dir's tables")
    write_reference: str = option("", "with --samples: write the images' feature statistics (mu, sigma) with --detector "
                                      "to this .npz instead of measuring (reference statistics for a data set without "
                                      "them, e.g. FD_DINOv2's for CIFAR-10); an existing file is never replaced")
    real_images: str = option("", "the real images that --metrics pr and kid compare with (a samples .npz in the "
                                  "original's format, or a folder or .zip of images, e.g. the training set); default "
                                  "with --detector digits: the real digits")
    is_splits: int = option(10, "Inception Score: the samples are cut into this many consecutive index ranges")
    pr_neighbours: int = option(3, "precision/recall: a sample's ball reaches its k-th nearest neighbour")
    kid_subset_size: int = option(1000, "KID: subsets of at most this many samples of each set")
    kid_subsets: int = option(100, "KID: the number of subsets (drawn with --seed)")


@dataclasses.dataclass(kw_only=True)
class TeacherFlags:
    """train_teacher.py's flags of the images, the network and the export (the loop's are TeacherTrainConfig's)."""
    HELP_GROUP = "the images, the network and the export"

    image_size: int = option(8, "image side: 8 trains on the digits as they are, a larger side on the digits "
                                "bilinearly upsampled to it (32 with --image_channels 3 and CIFAR-10's network flags "
                                "is the CIFAR-10 testbed, model_zoo/README.md)")
    image_channels: int = option(1, "1 (grey), or 3 (the grey digit in each of three channels, as an RGB teacher sees it)")
    class_cond: bool = option(True, "class-conditional (the digit's label); False: an unconditional teacher (e.g. the "
                                    "guide of classifier-free guidance)")
    num_channels: int = option(16, "base channel count of the DDPM++ (model_channels)")
    num_res_blocks: int = option(2, "residual blocks per resolution")
    channel_mult: str = option("1,2", "channel multiplier per resolution, from the image side down (CIFAR-10's "
                                      "DDPM++: 2,2,2)")
    attention_resolutions: str = option("2", "self-attention at image_size // r for each downsampling factor r, as the "
                                             "official flag (2: at half the image side)")
    dropout: float = option(0.1, "dropout in the residual blocks")
    export: str = option("", "after training, write the EMA network as a teacher file here (refused if it exists)")
    export_ema_rate: float = option(-1.0, "the EMA rate to export (default: the first of --ema_rate)")


HELP_ORDER = tuple(c.HELP_GROUP for c in (
    SamplingFlags, SampleFolderFlags, FIDFlags, LoopConfig, TrainConfig, TeacherTrainConfig, TeacherFlags, NoiseLevels,
    GuidanceOptions, LatentOptions, PresetOptions, DetectorOptions, SpeedSettings, FLAG_FAMILY.architecture_flags))
"""The order of the --help groups: what a script does first, then the method, its inputs, evaluation, speed,
and the network flags that files recording their architecture do not need."""

SAMPLING_IGNORED = ("dropout", "weight_schedule", "loss_norm")
"""Training flags the original's sampling scripts accept (one set of model flags for all scripts)."""


def _model_parser(doc, presets=False):
    """A parser with the original's model flags that every script takes: the architecture flags, --use_fp16
    and the flags PID ignores."""
    return OptionParser(doc, FLAG_FAMILY.architecture_flags, ModelFlags, presets=presets, group_order=HELP_ORDER)


FAMILY_PROTOCOL_HELP = (
    "EDM2 models (teachers and their students) take EDM2's protocol for the flags not given: --sampler heun_deter "
    "--steps 32 --clip_denoised False --seed 0 --num_samples 50000, and in fid_evaluation.py --detector_feed uint8 "
    "--seed_ranges 3. EDM teachers and their students keep the original's defaults, shown with each flag "
    "(docs/usage.md).")


def apply_preset(parser, args, given, model_flag):
    """Set what --preset names (teacher, guide, weight, reference statistics) for the flags not given; the
    teacher's own flag `model_flag` beside a preset is refused."""
    try:
        values = PresetOptions(preset=args.preset).preset_values(model_flag)
    except ValueError as e:
        parser.error(str(e))
    if values and model_flag in given:
        parser.error(f"--preset {args.preset} names the teacher; drop --{model_flag} {getattr(args, model_flag)}")
    for name, value in values.items():
        if name in parser.declared and name not in given:
            setattr(args, name, value)


def parse_distillation(argv=None, doc=None):
    """cm_train.py's (namespace, names given)."""
    parser = _model_parser(doc, presets=True).add_options(TrainConfig).add_options(DistillationFlags)
    args, given = parser.parse(argv)
    apply_preset(parser, args, given, "teacher_model_path")
    if args.training_mode != DISTILLATION_MODE:
        parser.error(f"--training_mode {args.training_mode!r} is not supported; valid: {DISTILLATION_MODE}")
    if not args.teacher_model_path:
        parser.error("--teacher_model_path is required: the teacher is what PID distils (see model_zoo/README.md)")
    return args, given


def distillation_config(args, given, log_dir, device_type=None):
    """The trainer's configuration: the flags, with the speed and precision options that are not given
    from the --speed preset for `device_type` (default: cuda when a GPU is visible, else cpu) and
    --use_fp16 (the original's fp16 path)."""
    values = {**values_for(TrainConfig, args), "log_dir": log_dir, "network_flags": network_flags(args, given)}
    if args.use_fp16 and "mixed_precision" in given and args.mixed_precision != "fp16":
        raise ValueError(f"--use_fp16 True asks for float16 and --mixed_precision {args.mixed_precision} for another "
                         "precision: give one of them")
    presets = preset_values(TrainConfig, args.speed, device_type, args.use_fp16)
    values.update({name: value for name, value in presets.items() if name not in given})
    values["speed_preset"] = resolved_preset(args.speed, device_type) + (", use_fp16" if args.use_fp16 else "")
    return TrainConfig(**values)


EDM2_TEACHER_EMA = "0.05,0.1"
"""--ema_rate of an EDM2 teacher unless given: power-function EMAs of σ_rel 0.05 and 0.1."""


def parse_teacher_training(argv=None, doc=None):
    """train_teacher.py's namespace (--export_ema_rate resolved to a rate)."""
    parser = OptionParser(doc, TeacherTrainConfig, TeacherFlags, group_order=HELP_ORDER)
    parser.epilog = f"--family edm2 without --ema_rate: --ema_rate {EDM2_TEACHER_EMA} (σ_rel of power-function EMAs)."
    args, given = parser.parse(argv)
    if args.family == "edm2" and "ema_rate" not in given:
        args.ema_rate = EDM2_TEACHER_EMA
    if args.export and os.path.exists(args.export):
        parser.error(f"--export {args.export} exists; choose another name or remove it first")
    try:
        teacher_training_config(args, "").validate()  # its errors are the command line's
    except ValueError as e:
        parser.error(str(e))
    rates = ema_rates(args.ema_rate)
    if args.export_ema_rate < 0:
        args.export_ema_rate = rates[0] if rates else -1.0
    if args.export and args.export_ema_rate not in rates:
        parser.error(f"--export_ema_rate {args.export_ema_rate} is not one of --ema_rate {args.ema_rate}")
    return args


def teacher_network_config(args):
    """The teacher's EDMPrecond keywords: the digits DDPM++ with the image and network flags; a
    ValueError names a flag the network cannot be built with."""
    size, channels = args.image_size, args.image_channels
    if size < RESOLUTION:
        raise ValueError(f"--image_size {size}: the digits are {RESOLUTION}×{RESOLUTION}; give {RESOLUTION} or a "
                         "larger side to upsample them to")
    if channels not in (1, 3):
        raise ValueError(f"--image_channels {channels}: give 1 (grey) or 3 (the digit in each RGB channel)")
    channel_mult = edm.int_list(args.channel_mult, "channel_mult")
    if not channel_mult or min(channel_mult) < 1:
        raise ValueError(f"--channel_mult {args.channel_mult!r}: give positive multipliers, one per resolution")
    if size % 2 ** (len(channel_mult) - 1):
        raise ValueError(f"--image_size {size} cannot be halved {len(channel_mult) - 1} times for the "
                         f"{len(channel_mult)} resolutions of --channel_mult {args.channel_mult}")
    resolutions = [size >> level for level in range(len(channel_mult))]
    factors = edm.int_list(args.attention_resolutions, "attention_resolutions")
    outside = [r for r in factors if r < 1 or size % r or size // r not in resolutions]
    if outside:
        raise ValueError(f"--attention_resolutions {args.attention_resolutions!r}: factor {outside[0]} gives no "
                         f"resolution of the network ({', '.join(map(str, resolutions))}); give factors among "
                         f"{', '.join(str(size // r) for r in resolutions)}")
    ddpmpp = {**DIGITS_NETWORK_CONFIG, "img_resolution": size, "img_channels": channels,
              "label_dim": NUM_CLASSES if args.class_cond else 0, "model_channels": args.num_channels,
              "num_blocks": args.num_res_blocks, "channel_mult": channel_mult,
              "attn_resolutions": sorted({size // r for r in factors}, reverse=True), "dropout": args.dropout}
    return teacher_family_config(args.family, ddpmpp)


def teacher_training_config(args, log_dir):
    """The teacher trainer's configuration: the teacher's network (`teacher_network_config`), its family's
    training σ distribution and the loop's flags."""
    p_mean, p_std = log_normal_sigmas(args.family, args.latent_vae)
    return TeacherTrainConfig(log_dir=log_dir, network_config=teacher_network_config(args), p_mean=p_mean,
                              p_std=p_std, **values_for(TeacherTrainConfig, args))


def _sampling_parser(doc):
    parser = _model_parser(doc).add_options(SamplingFlags)
    parser.epilog = FAMILY_PROTOCOL_HELP
    return parser.add_options(TrainConfig, only=SAMPLING_IGNORED, ignored=True)


def _teacher_preset(parser, args, given, model_flag):
    """--preset for the sampling scripts: it names a teacher, sampled in teacher mode."""
    if not args.preset:
        return
    if "training_mode" in given and args.training_mode != TEACHER_MODE:
        parser.error(f"--preset {args.preset} names a teacher: drop --training_mode {args.training_mode}")
    apply_preset(parser, args, given, model_flag)
    args.training_mode = TEACHER_MODE


def parse_sampling(argv=None, doc=None):
    """image_sample.py's (namespace, names given)."""
    parser = _sampling_parser(doc).add_options(SampleFolderFlags)
    args, given = parser.parse(argv)
    _teacher_preset(parser, args, given, "model_path")
    return args, given


def parse_fid(argv=None, doc=None):
    """fid_evaluation.py's (namespace, names given)."""
    parser = _sampling_parser(doc).add_options(FIDFlags)
    args, given = parser.parse(argv)
    _teacher_preset(parser, args, given, "checkpoints")
    if args.samples and (args.exp_dir or args.checkpoints or args.preset):
        parser.error("--samples measures images made elsewhere: drop --exp_dir, --checkpoints and --preset (the "
                     "results go to --results_dir)")
    if args.write_reference and not args.samples:
        parser.error("--write_reference computes statistics of images: give them with --samples")
    if args.samples and not args.results_dir and not args.write_reference:
        parser.error("--samples needs --results_dir: the folder its results table is written to")
    if not args.exp_dir and not args.samples:
        parser.error("--exp_dir is required: the folder of checkpoints to evaluate (with --preset: where its results go)")
    if args.seed_ranges < 1:
        parser.error(f"--seed_ranges must be at least 1, got {args.seed_ranges}")
    return args, given


def network_flags(args, given):
    """The architecture flags the user gave, for load_teacher (files that record their architecture
    need none; a bare state dict takes the official defaults for the rest)."""
    return {f.name: getattr(args, f.name) for f in options_of(FLAG_FAMILY.architecture_flags) if f.name in given}


def sampling_options(args):
    """The sampler and its options from the sampling flags (evaluation.sampler_options checks them)."""
    return sampler_options(args.training_mode, args.sampler, steps=args.steps, sigma_min=args.sigma_min,
                           sigma_max=args.sigma_max, rho=args.rho, s_churn=args.s_churn, s_tmin=args.s_tmin,
                           s_tmax=args.s_tmax, s_noise=args.s_noise, ts=args.ts, clip_denoised=args.clip_denoised)


def guidance(args):
    """The autoguidance the sampling flags ask for (a teacher's)."""
    return GuidanceOptions(**values_for(GuidanceOptions, args))


def generation_request(args, given, loaded=None):
    """The samples the sampling flags ask for; of a loaded model (evaluation.SamplingModel), with its family's
    seed and sample count where they were not given."""
    def value(name):
        return getattr(args, name) if loaded is None else loaded.setting(name, args, given)
    return GenerationRequest(value("num_samples"), args.batch_size, value("seed"), args.use_fp16,
                             None if args.class_label == -1 else args.class_label)


def default_log_dir():
    """The run folder: $OPENAI_LOGDIR (the original's variable), else ./experiment/openai-<time>."""
    return os.environ.get("OPENAI_LOGDIR") or os.path.join(
        "experiment", "openai-" + datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S-%f"))
