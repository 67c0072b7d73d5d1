"""The EDM family: EDM's EDMPrecond teachers (DDPM++ / SongUNet at 32×32, ADM / DhariwalUNet at 64×64,
and any size their recorded keywords give), their `.pkl` snapshots and the official flags.

The official scripts describe a network with guided-diffusion flag names: `--image_size 32`
selects DDPM++ (SongUNet), `64` selects ADM (DhariwalUNet); entries of `--attention_resolutions`
are *downsampling factors* (2 at 32×32 means attention at 16×16). `infer_flags` finds the flags a
raw state dict implies, for error messages that say which flags would fit a file.

A teacher's state dict has EDMPrecond's keys (`model.*`, perhaps `map_augment.*`); the student is
the raw network (`SongUNet` / `DhariwalUNet`) inside the PID parametrisation, with the teacher's
weights and without the augmentation input.
"""

import dataclasses
import re

from ..edm_pickle import snapshot_network
from ..files import TeacherLoadError
from ..networks import EDMPrecond, network_from_config
from ..run_folder import RUN_CONFIG_FILE
from ..settings import option
from . import TeacherFamily, load_strictly


@dataclasses.dataclass(kw_only=True)
class ArchitectureFlags:
    """The official flags that describe an EDM network (cm/script_util.py's defaults), for files that do
    not record their architecture."""
    HELP_GROUP = "the network (only for teacher files that do not record it)"

    image_size: int = option(64, "image side: 32 builds DDPM++ (SongUNet), 64 builds ADM (DhariwalUNet); only needed "
                                 "for teacher files that do not record their architecture")
    num_channels: int = option(128, "base channel count (model_channels)")
    num_res_blocks: int = option(2, "residual blocks per resolution (num_blocks)")
    attention_resolutions: str = option("32,16,8", "attention at image_size // r for each downsampling factor r "
                                                   "(\"2\" at 32×32 means 16×16; ADM ImageNet-64 is \"2,4,8\")")
    channel_mult: str = option("", "per-level channel multipliers, e.g. \"2,2,2\"; empty = by image size")
    class_cond: bool = option(False, "class-conditional network (10 classes at 32×32, 1000 at 64×64)")
    learn_sigma: bool = option(False, "6 output channels (unsupported: EDM teachers predict 3)")


FLAG_DEFAULTS = {field.name: field.default for field in dataclasses.fields(ArchitectureFlags)}
ARCHITECTURE_FLAGS = ("image_size", "num_channels", "num_res_blocks", "attention_resolutions",
                      "channel_mult", "class_cond")
"""The flags that decide which weights a network has."""

DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4), 32: (2, 2, 2)}
NUM_CLASSES = {32: 10, 64: 1000}
MODEL_TYPE_BY_SIZE = {32: "SongUNet", 64: "DhariwalUNet"}
IMG_CHANNELS = 3


class ArchitectureError(ValueError):
    """Flags that describe no supported network, or a network other than the file's."""


def int_list(text, flag):
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ArchitectureError(f"--{flag} must be a comma-separated list of integers, got {text!r}") from None


def channel_mult_for(image_size, channel_mult=""):
    if channel_mult in ("", None):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ArchitectureError(f"no default --channel_mult for image_size {image_size}; give one")
        return list(DEFAULT_CHANNEL_MULT[image_size])
    return int_list(channel_mult, "channel_mult")


def config_from_flags(**flags):
    """EDMPrecond keyword arguments for a network described by the official flags."""
    EDM.check_flag_names(flags)
    f = {**FLAG_DEFAULTS, **flags}
    size = int(f["image_size"])
    if size not in MODEL_TYPE_BY_SIZE:
        raise ArchitectureError(
            f"--image_size {size} has no official network: 32 builds DDPM++ (SongUNet), 64 builds ADM "
            "(DhariwalUNet). Files that record their architecture (EDM .pkl, our checkpoints) need no flags.")
    if f["learn_sigma"]:
        raise ArchitectureError("--learn_sigma True is not supported: EDM teachers predict 3 channels")
    factors = int_list(f["attention_resolutions"], "attention_resolutions")
    if any(r <= 0 or size % r for r in factors):
        raise ArchitectureError(f"--attention_resolutions {f['attention_resolutions']!r}: each entry is a "
                                f"downsampling factor that must divide image_size {size}")
    config = dict(img_resolution=size, img_channels=IMG_CHANNELS,
                  label_dim=NUM_CLASSES[size] if f["class_cond"] else 0,
                  use_fp16=False, model_type=MODEL_TYPE_BY_SIZE[size],
                  model_channels=int(f["num_channels"]), channel_mult=channel_mult_for(size, f["channel_mult"]),
                  num_blocks=int(f["num_res_blocks"]), attn_resolutions=sorted({size // r for r in factors}, reverse=True),
                  dropout=0.0, augment_dim=0)
    if config["model_type"] == "SongUNet":
        config.update(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                      channel_mult_noise=1, resample_filter=[1, 1])
    return config


def flags_from_config(config):
    """The official architecture flags that describe an EDMPrecond config (inverse of
    `config_from_flags` on the architecture flags)."""
    size = config["img_resolution"]
    mult = config.get("channel_mult", [])
    return dict(image_size=size, num_channels=config.get("model_channels"),
                num_res_blocks=config.get("num_blocks"),
                attention_resolutions=",".join(str(size // r) for r in sorted(config.get("attn_resolutions", []),
                                                                              reverse=True)),
                channel_mult=",".join(str(int(m)) if float(m).is_integer() else str(m) for m in mult),
                class_cond=bool(config.get("label_dim", 0)))


def _normalised_flag(name, value, image_size):
    if name == "attention_resolutions":
        return sorted(set(int_list(value, name)))
    if name == "channel_mult":
        return channel_mult_for(image_size, value)
    if name == "class_cond":
        return bool(value)
    return int(value)


def mismatched_flags(given, recorded):
    """[(flag, given, recorded)] for architecture flags in `given` that differ from `recorded`."""
    size = int(recorded["image_size"])
    out = []
    for name in ARCHITECTURE_FLAGS:
        if name in given and _normalised_flag(name, given[name], size) != _normalised_flag(name, recorded[name], size):
            out.append((name, given[name], recorded[name]))
    return out


def format_flags(flags):
    return " ".join(f"--{name} {value if value != '' else chr(34) * 2}" for name, value in flags.items())


def flags_can_describe(flags, state_dict):
    """Whether the official flags build the network of a raw state dict whose flags infer_flags found:
    an image size they know, and 3 image channels (the first convolution's input)."""
    first = state_dict.get(f"enc.{flags['image_size']}x{flags['image_size']}_conv.weight")
    return flags["image_size"] in MODEL_TYPE_BY_SIZE and (first is None or first.shape[1] == IMG_CHANNELS)


_ENC_KEY = re.compile(r"^enc\.(\d+)x\1_(conv|down|block(\d+))\.")


def infer_flags(state_dict):
    """The official architecture flags implied by a raw network state dict (keys without `model.`),
    or None when the keys are not those of an EDM SongUNet / DhariwalUNet."""
    levels = {}
    for key in state_dict:
        match = _ENC_KEY.match(key)
        if match:
            levels.setdefault(int(match.group(1)), set()).add(match.group(3))
    if not levels or "map_layer0.weight" not in state_dict:
        return None
    size = max(levels)
    model_channels = state_dict["map_layer0.weight"].shape[1]
    mult, attn = [], []
    for res in sorted(levels, reverse=True):
        blocks = sorted(int(b) for b in levels[res] if b is not None)
        if not blocks:
            return None
        mult.append(state_dict[f"enc.{res}x{res}_block0.conv1.weight"].shape[0] // model_channels)
        if f"enc.{res}x{res}_block0.qkv.weight" in state_dict:
            attn.append(res)
    label_weight = state_dict.get("map_label.weight")
    return dict(image_size=size, num_channels=model_channels, num_res_blocks=len(sorted(levels[size] - {None})),
                attention_resolutions=",".join(str(size // r) for r in attn),
                channel_mult=",".join(str(m) for m in mult), class_cond=label_weight is not None)


def network_state_dict(state_dict):
    """EDMPrecond keys → raw network keys: strip the leading `model.`, drop `map_augment` (PID never
    conditions on augmentation). Keys already without the prefix pass unchanged."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("model."):] if key.startswith("model.") else key
        if not key.startswith("map_augment."):
            out[key] = value
    return out


class EDMFamily(TeacherFamily):
    name = "edm"
    snapshot_classes = ("EDMPrecond",)
    architecture_flags = ArchitectureFlags

    def config_from_flags(self, flags):
        return config_from_flags(**flags)

    def check_flags(self, source, config, flags):
        recorded = flags_from_config(config)
        wrong = mismatched_flags(flags, recorded)
        if wrong:
            listed = ", ".join(f"--{n} {g!r} (file: {r!r})" for n, g, r in wrong)
            raise TeacherLoadError(f"{source} records its architecture and it differs from the flags given: {listed}. "
                                   f"Drop these flags or use: {format_flags(recorded)}")

    def network_state_dict(self, state_dict):
        return network_state_dict(state_dict)

    def from_snapshot(self, snapshot, source):
        _, config, state_dict = snapshot_network(snapshot, source)
        return config, state_dict

    def build_teacher(self, config, state_dict, source, attention_implementation="sdpa"):
        """An EDMPrecond from its keywords and an EDMPrecond state dict (`model.*` keys; `map_augment`
        weights dropped when the config has no augmentation input), frozen in eval mode."""
        try:
            teacher = EDMPrecond(**config, attention_implementation=attention_implementation)
        except (TypeError, ValueError) as e:
            raise TeacherLoadError(f"{source}: cannot build the recorded network ({e})") from e
        found = {("model." + k if not k.startswith("model.") else k): v for k, v in state_dict.items()}
        if not config.get("augment_dim"):
            found = {k: v for k, v in found.items() if not k.startswith("model.map_augment.")}

        def fitting_flags():
            fitting = infer_flags(network_state_dict(found))
            if not fitting:
                return "\nthe file's keys are not those of an EDM SongUNet/DhariwalUNet"
            if not flags_can_describe(fitting, network_state_dict(found)):
                return (f"\nits weights are of a {fitting['image_size']}×{fitting['image_size']} network that the "
                        "official flags cannot describe (they build 3-channel 32×32 DDPM++ and 64×64 ADM networks): use "
                        "a file that records its architecture, a {state_dict, config} teacher file or a checkpoint "
                        f"with the {RUN_CONFIG_FILE} of its run folder beside it")
            return f"\nflags that fit this file: {format_flags(fitting)}"

        load_strictly(teacher, found, source, f"the network asked for ({format_flags(flags_from_config(config))})",
                      fitting_flags, error=TeacherLoadError)
        return teacher.eval().requires_grad_(False)

    def student_config(self, teacher_config, dropout):
        """The teacher's architecture without the augmentation input, with the student's own dropout."""
        return {**teacher_config, "augment_dim": 0, "dropout": dropout, "use_fp16": False}

    def build_network(self, config, attention_implementation="sdpa"):
        return network_from_config(config, attention_implementation)


EDM = EDMFamily()
