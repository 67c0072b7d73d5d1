"""Latent-space teachers (EDM2's ImageNet-512 models): their samples are latents of Stable Diffusion's
VAE, turned into pixels for grids, sample files and FID by the convention of EDM2's StabilityVAEEncoder.

EDM2's convention (not Stable Diffusion's pipelines'): the VAE sees images in [0, 1] (pixels/255) and its
decoder's output is read as [0, 1]. A model's latent is scale·(VAE latent) + bias per channel:

    encode_pixels:  uint8 pixels → the VAE encoder on pixels/255 → (mean, std) of its latent distribution
    encode_latents: (mean, std) → (mean + std·noise)·scale + bias
    decode:         latents → the VAE decoder on (latents − bias)/scale → clamp(0, 1)·255, truncated to uint8

`decode` returns EDM2's own pixels (uint8 NCHW): every consumer (sample files, grids, FID) takes them as
they are. scale and bias come from the statistics of the data's raw latents (`codec_constants`), as EDM2
derives its ImageNet-512 constants. The VAE (diffusers' `AutoencoderKL`, the optional `[latent]` extra) is
loaded when first needed, from the name the teacher file records (fetched once into Hugging Face's cache)
or from a local folder (`--vae_path`).
"""

import dataclasses

import os

import torch

from .settings import option

LATENT_EXTRA_HINT = "pip install -e '.[latent]' (diffusers decodes Stable Diffusion latents)"
PIXEL_LEVELS = 255
DEFAULT_BATCH_SIZE = 8


class LatentsUnavailableError(ImportError):
    """A latent-space model without diffusers installed."""


@dataclasses.dataclass(kw_only=True)
class LatentOptions:
    HELP_GROUP = "latent teachers"

    vae_path: str = option("", "latent-space teachers (EDM2 ImageNet-512): a local folder of the VAE that decodes "
                               "their latents (diffusers' AutoencoderKL); default: the VAE the teacher file names, "
                               "fetched once into Hugging Face's cache")


def autoencoder_class():
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise LatentsUnavailableError(f"this teacher models Stable Diffusion latents, which need diffusers: "
                                      f"{LATENT_EXTRA_HINT}") from None
    return AutoencoderKL


def load_autoencoder(name_or_path):
    """diffusers' AutoencoderKL from a Hugging Face name or a local folder (frozen, eval mode)."""
    AutoencoderKL = autoencoder_class()
    looks_local = (os.path.isabs(name_or_path) or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
                   or os.path.isdir(name_or_path.split("/")[0]))  # e.g. model_zoo/digits-vae
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):  # not a Hub name: no network retries
        problem = "is a file, not" if os.path.exists(os.path.expanduser(name_or_path)) else "does not exist; give"
        raise FileNotFoundError(f"the VAE folder {name_or_path} {problem} a diffusers AutoencoderKL folder (its "
                                "config.json and weights): give one with --vae_path")
    try:
        vae = AutoencoderKL.from_pretrained(os.path.expanduser(name_or_path), low_cpu_mem_usage=False)  # no accelerate
    except (OSError, ValueError) as e:
        raise OSError(f"cannot load the VAE {name_or_path!r} ({e}); give a local copy with --vae_path") from None
    return vae.eval().requires_grad_(False)


def codec_constants(raw_mean, raw_std, final_mean=0.0, final_std=0.5):
    """EDM2's per-channel (scale, bias) that map raw latents of mean `raw_mean` and standard deviation
    `raw_std` to final latents of `final_mean` and `final_std`: scale = final_std/raw_std,
    bias = final_mean − raw_mean·scale (float32, as EDM2 computes them)."""
    raw_mean, raw_std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (raw_mean, raw_std))
    scale = torch.as_tensor(final_std, dtype=torch.float32) / raw_std
    bias = torch.as_tensor(final_mean, dtype=torch.float32) - raw_mean * scale
    return scale, bias


class LatentCodec:
    """EDM2's latent codec (see the module docstring) around a VAE; `codec(latents)` decodes."""

    def __init__(self, vae_name, scale, bias, batch_size=DEFAULT_BATCH_SIZE, vae=None):
        self.vae_name, self.batch_size = vae_name, int(batch_size)
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.bias = torch.as_tensor(bias, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.vae = vae
        self.image_shapes = {}  # latent shape → decoded image shape, found by decoding once
        if vae is None:
            autoencoder_class()  # without diffusers a latent model stops here, before any work

    def _autoencoder(self, device):
        if self.vae is None:
            self.vae = load_autoencoder(self.vae_name)
        return self.vae.to(device)

    @torch.no_grad()
    def encode_pixels(self, pixels):
        """uint8 images [N, 3, H, W] → raw latents [N, 2C, h, w]: the mean and standard deviation of the VAE's
        latent distribution of pixels/255."""
        vae = self._autoencoder(pixels.device)
        images = pixels.to(torch.float32) / PIXEL_LEVELS
        parts = []
        for part in images.split(self.batch_size):
            distribution = vae.encode(part).latent_dist
            parts.append(torch.cat([distribution.mean, distribution.std], dim=1))
        return torch.cat(parts)

    def encode_latents(self, raw_latents, noise=None, generator=None):
        """Raw latents (mean, std) → final latents (mean + std·noise)·scale + bias; `noise` (unit normal, the
        shape of the mean) is drawn from `generator` when not given."""
        mean, std = raw_latents.to(torch.float32).chunk(2, dim=1)
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        latents = mean + noise.to(mean) * std
        latents = latents * self.scale.to(latents.device)
        return latents + self.bias.to(latents.device)

    @torch.no_grad()
    def decode(self, latents):
        """Final latents [N, C, h, w] → EDM2's pixels: uint8 [N, 3, H, W]."""
        vae = self._autoencoder(latents.device)
        unscaled = (latents.to(torch.float32) - self.bias.to(latents.device)) / self.scale.to(latents.device)
        decoded = torch.cat([vae.decode(part).sample for part in unscaled.split(self.batch_size)])
        return decoded.to(torch.float32).clamp(0, 1).mul(PIXEL_LEVELS).to(torch.uint8)

    __call__ = decode

    def image_shape(self, latent_shape, device="cpu"):
        """(channels, height, width) of the images that latents of `latent_shape` (C, h, w) decode into."""
        latent_shape = tuple(latent_shape)
        if latent_shape not in self.image_shapes:
            self.image_shapes[latent_shape] = tuple(self(torch.zeros((1, *latent_shape), device=device)).shape[1:])
        return self.image_shapes[latent_shape]


def fitted_codec(vae_name, pixels, batch_size=DEFAULT_BATCH_SIZE):
    """(LatentCodec, raw latents) of a data set of uint8 pixels [N, C, H, W]: the codec's scale and bias make its
    latents zero-mean with standard deviation 0.5 per channel (EDM2's targets), from the mean and variance of
    the raw latents (mean + std·noise: the variance of the means plus the mean variance)."""
    unscaled = LatentCodec(vae_name, torch.ones(1), torch.zeros(1), batch_size)
    raw = unscaled.encode_pixels(pixels)
    mean, std = raw.chunk(2, dim=1)
    channels = (0, 2, 3)
    variance = mean.var(channels, unbiased=False) + std.square().mean(channels)
    scale, bias = codec_constants(mean.mean(channels), variance.sqrt())
    return LatentCodec(vae_name, scale, bias, batch_size, vae=unscaled.vae), raw


def output_shape(decode, sample_shape, device="cpu"):
    """The shape of the images that samples of `sample_shape` become: their own, or their decoding's."""
    return tuple(sample_shape) if decode is None else decode.image_shape(sample_shape, device)
