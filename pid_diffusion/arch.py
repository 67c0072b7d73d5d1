"""Network architectures: the official flags ↔ EDMPrecond keyword arguments, and the flags a state
dict implies (for error messages that say which flags would fit a file).

The official scripts describe a network with guided-diffusion flag names:
`--image_size 32` selects DDPM++ (SongUNet), `64` selects ADM (DhariwalUNet); entries of
`--attention_resolutions` are *downsampling factors* (2 at 32×32 means attention at 16×16).
"""

import re

NETWORK_FLAG_DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2,
                             attention_resolutions="32,16,8", channel_mult="", class_cond=False,
                             dropout=0.0, use_fp16=False, learn_sigma=False)
"""The official defaults (cm/script_util.py) of the flags that shape the network."""

ARCHITECTURE_FLAGS = ("image_size", "num_channels", "num_res_blocks", "attention_resolutions",
                      "channel_mult", "class_cond")
"""The flags that decide which weights a network has (dropout and fp16 do not)."""

DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4), 32: (2, 2, 2)}
NUM_CLASSES = {32: 10, 64: 1000}
MODEL_TYPE_BY_SIZE = {32: "SongUNet", 64: "DhariwalUNet"}
IMG_CHANNELS = 3


class ArchitectureError(ValueError):
    """Flags that describe no supported network, or a network other than the file's."""


def _int_list(text, flag):
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
    return _int_list(channel_mult, "channel_mult")


def config_from_flags(**flags):
    """EDMPrecond keyword arguments for a network described by the official flags."""
    f = {**NETWORK_FLAG_DEFAULTS, **flags}
    size = int(f["image_size"])
    if size not in MODEL_TYPE_BY_SIZE:
        raise ArchitectureError(
            f"--image_size {size} has no official network: 32 builds DDPM++ (SongUNet), 64 builds ADM "
            "(DhariwalUNet). Files that record their architecture (EDM .pkl, our checkpoints) need no flags.")
    if f["learn_sigma"]:
        raise ArchitectureError("--learn_sigma True is not supported: EDM teachers predict 3 channels")
    factors = _int_list(f["attention_resolutions"], "attention_resolutions")
    if any(r <= 0 or size % r for r in factors):
        raise ArchitectureError(f"--attention_resolutions {f['attention_resolutions']!r}: each entry is a "
                                f"downsampling factor that must divide image_size {size}")
    config = dict(img_resolution=size, img_channels=IMG_CHANNELS,
                  label_dim=NUM_CLASSES[size] if f["class_cond"] else 0,
                  use_fp16=bool(f["use_fp16"]), model_type=MODEL_TYPE_BY_SIZE[size],
                  model_channels=int(f["num_channels"]), channel_mult=channel_mult_for(size, f["channel_mult"]),
                  num_blocks=int(f["num_res_blocks"]), attn_resolutions=sorted({size // r for r in factors}, reverse=True),
                  dropout=float(f["dropout"]), augment_dim=0)
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
        return sorted(set(_int_list(value, name)))
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
