"""Latent-space teachers (EDM2's ImageNet-512 models): their samples are latents of Stable Diffusion's
VAE, decoded into images for grids, sample files and FID.

EDM2's StabilityVAEEncoder stores a latent as scale·(VAE latent) + bias per channel; decoding undoes
that, x = (latents − bias)/scale, and runs the VAE's decoder (diffusers' `AutoencoderKL`, the optional
`[latent]` extra), whose images are in [−1, 1] like every other sample here. The VAE is loaded when
first needed, from the name the teacher file records (fetched once into Hugging Face's cache) or from
a local folder (`--vae_path`).
"""

import dataclasses

import torch

from .settings import option

LATENT_EXTRA_HINT = "pip install -e '.[latent]' (diffusers decodes Stable Diffusion latents)"


class LatentsUnavailableError(ImportError):
    """A latent-space model without diffusers installed."""


@dataclasses.dataclass(kw_only=True)
class LatentOptions:
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
    try:
        vae = AutoencoderKL.from_pretrained(name_or_path, low_cpu_mem_usage=False)  # no accelerate needed
    except (OSError, ValueError) as e:
        raise OSError(f"cannot load the VAE {name_or_path!r} ({e}); give a local copy with --vae_path") from None
    return vae.eval().requires_grad_(False)


class LatentDecoder:
    """latents [N, C, h, w] → images [N, 3, H, W] in [−1, 1], `batch_size` latents at a time."""

    def __init__(self, vae_name, scale, bias, batch_size=8):
        self.vae_name, self.batch_size = vae_name, int(batch_size)
        self.scale = torch.as_tensor(scale, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.bias = torch.as_tensor(bias, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.vae = None
        self.image_shapes = {}  # latent shape → decoded image shape, found by decoding once
        autoencoder_class()  # without diffusers a latent model stops here, before any work

    def _autoencoder(self, device):
        if self.vae is None:
            self.vae = load_autoencoder(self.vae_name)
        return self.vae.to(device)

    @torch.no_grad()
    def __call__(self, latents):
        vae = self._autoencoder(latents.device)
        latents = latents.to(torch.float32)
        unscaled = (latents - self.bias.to(latents.device)) / self.scale.to(latents.device)
        parts = [vae.decode(part).sample for part in unscaled.split(self.batch_size)]
        return torch.cat(parts).to(torch.float32).clamp(-1, 1)

    def image_shape(self, latent_shape, device="cpu"):
        """(channels, height, width) of the images that latents of `latent_shape` (C, h, w) decode into."""
        latent_shape = tuple(latent_shape)
        if latent_shape not in self.image_shapes:
            self.image_shapes[latent_shape] = tuple(self(torch.zeros((1, *latent_shape), device=device)).shape[1:])
        return self.image_shapes[latent_shape]


def output_shape(decode, sample_shape, device="cpu"):
    """The shape of the images that samples of `sample_shape` become: their own, or their decoding's."""
    return tuple(sample_shape) if decode is None else decode.image_shape(sample_shape, device)
