"""The EDM2 family: NVlabs/edm2's magnitude-preserving networks (`Precond`, pid_diffusion/networks/edm2.py)
in pixel space (ImageNet-64) and in Stable Diffusion's latent space (ImageNet-512).

An EDM2 release `.pkl` holds {encoder, dataset_kwargs, loss_fn, ema}: the EMA network in float16 and
the encoder that maps images to what the network models — `StandardRGBEncoder` (pixels, [−1, 1]) or
`StabilityVAEEncoder` (latents of the VAE it names, with a per-channel `scale` and `bias`). The config
keeps the encoder under ENCODER_KEY, so a student distilled from a latent teacher samples latents that
are decoded the same way.

The official flags describe EDM networks only: an EDM2 file records its own architecture.
"""

import numpy as np

from ..edm_pickle import PersistentRecord, snapshot_network
from ..files import TeacherLoadError
from ..networks.edm2 import EDM2Precond, unet_from_config
from ..schedules import RHO, SIGMA_MAX, SIGMA_MIN
from . import FAMILY_KEY, TeacherFamily, load_strictly

ENCODER_KEY = "encoder"
PIXEL_ENCODER, LATENT_ENCODER = "StandardRGBEncoder", "StabilityVAEEncoder"
UNET_PREFIX = "unet."
LOGVAR_PREFIX = "logvar_"


def precond_keywords(config):
    """EDM2Precond's keywords of a config (without the family and the encoder)."""
    return {k: v for k, v in config.items() if k not in (FAMILY_KEY, ENCODER_KEY)}


def encoder_of(snapshot, source):
    """The encoder a snapshot records, as plain values: {kind: StandardRGBEncoder} or {kind:
    StabilityVAEEncoder, vae_name, scale, bias, batch_size}."""
    record = snapshot.get("encoder")
    if not isinstance(record, PersistentRecord):
        raise TeacherLoadError(f"{source}: an EDM2 snapshot without its encoder (found {type(record).__name__}); "
                               "EDM2's files hold a StandardRGBEncoder or a StabilityVAEEncoder")
    if record.class_name == PIXEL_ENCODER:
        return {"kind": PIXEL_ENCODER}
    if record.class_name == LATENT_ENCODER:
        state = record.state
        try:
            scale = np.asarray(state["scale"], dtype=np.float64).reshape(-1).tolist()
            bias = np.asarray(state["bias"], dtype=np.float64).reshape(-1).tolist()
            return {"kind": LATENT_ENCODER, "vae_name": str(state["vae_name"]), "scale": scale, "bias": bias,
                    "batch_size": int(state.get("batch_size", 8))}
        except (KeyError, TypeError, ValueError) as e:
            raise TeacherLoadError(f"{source}: its {LATENT_ENCODER} lacks what decoding needs ({e})") from None
    raise TeacherLoadError(f"{source}: the encoder is a {record.class_name}; EDM2's files hold a {PIXEL_ENCODER} "
                           f"(pixels) or a {LATENT_ENCODER} (Stable Diffusion latents), nothing else is supported")


def network_state_dict(state_dict):
    """EDM2Precond keys → the U-Net's: strip `unet.`, drop the log-variance head (PID does not use it).
    Keys already without the prefix pass unchanged."""
    return {k[len(UNET_PREFIX):] if k.startswith(UNET_PREFIX) else k: v for k, v in state_dict.items()
            if not k.startswith(LOGVAR_PREFIX)}


class EDM2Family(TeacherFamily):
    name = "edm2"
    snapshot_classes = ("Precond",)
    architecture_flags = None
    rewrites_weights_in_training = True
    sampling_protocol = dict(sampler="heun_deter", steps=32, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO,
                             clip_denoised=False, seed=0, num_samples=50000, detector_feed="uint8", seed_ranges=3)
    """EDM2's: its Heun sampler with 32 steps (63 network calls, 126 with a guide), no clamping (EDM2 clamps only
    the decoded pixels), samples 0 … 49,999 as uint8 pixels, the FID the minimum over three disjoint ranges."""

    def config_from_flags(self, flags):
        raise TeacherLoadError("EDM2 networks are described by their files, not by the official flags")

    def check_flags(self, source, config, flags):
        if flags:
            given = " ".join(f"--{name}" for name in flags)
            raise TeacherLoadError(f"{source} is an EDM2 network, which records its architecture; the flags {given} "
                                   "describe EDM networks: drop them")

    def from_snapshot(self, snapshot, source):
        _, config, state_dict = snapshot_network(snapshot, source)
        config[ENCODER_KEY] = encoder_of(snapshot, source)
        if config[ENCODER_KEY]["kind"] == LATENT_ENCODER and len(config[ENCODER_KEY]["scale"]) != config.get(
                "img_channels"):
            raise TeacherLoadError(f"{source}: the encoder's scale has {len(config[ENCODER_KEY]['scale'])} channels, "
                                   f"the network {config.get('img_channels')}")
        return config, state_dict

    def network_state_dict(self, state_dict):
        return network_state_dict(state_dict)

    def build_teacher(self, config, state_dict, source, attention_implementation="sdpa"):
        try:
            teacher = EDM2Precond(**precond_keywords(config), attention_implementation=attention_implementation)
        except (TypeError, ValueError) as e:
            raise TeacherLoadError(f"{source}: cannot build the recorded EDM2 network ({e})") from e
        stored = {v.dtype for v in state_dict.values() if v.is_floating_point()}
        if len(stored) == 1:  # kept as the file stores it (EDM2's releases: float16), so it computes as EDM2 does
            teacher = teacher.to(stored.pop())
        load_strictly(teacher, state_dict, source, "the EDM2 network it records", error=TeacherLoadError)
        return teacher.eval().requires_grad_(False)

    def student_config(self, teacher_config, dropout):
        """The teacher's U-Net with the student's own dropout, in float32 (EDM2 stores float16)."""
        return {**teacher_config, "dropout": dropout, "use_fp16": False}

    def build_network(self, config, attention_implementation="sdpa"):
        return unet_from_config(precond_keywords(config), attention_implementation)

    def image_decoder(self, config, vae_path=""):
        encoder = config.get(ENCODER_KEY, {"kind": PIXEL_ENCODER})
        if encoder["kind"] != LATENT_ENCODER:
            return None
        from ..latents import LatentCodec
        return LatentCodec(vae_path or encoder["vae_name"], encoder["scale"], encoder["bias"], encoder["batch_size"])


EDM2 = EDM2Family()
