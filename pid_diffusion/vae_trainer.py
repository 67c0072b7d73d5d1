"""A small KL autoencoder (diffusers' `AutoencoderKL`, the kind of Stable Diffusion's VAE) trained on the
digits, so that the latent route of EDM2 — teachers that model a VAE's latents, samples decoded into pixels —
can be trained, distilled and judged here, on real data, without downloading Stable Diffusion's VAE.

It follows EDM2's convention (latents.py): images in [0, 1] (pixels/255) in and out. The digits are grey,
so the autoencoder has one image channel; 8×8 images become 4×4 latents of `latent_channels` channels. The
objective is the squared reconstruction error of a latent drawn from the encoder's distribution plus
`kl_weight` times the KL divergence from the unit normal (per element), Adam with a linear decay, batches
drawn by a seeded generator. `evaluate` reports what decoding costs: the RMSE of reconstructions in pixels
(0–255) and, with the digits detector, the digit FID of the reconstructed held-out digits against the real
digits (the floor any latent teacher's samples sit on).
"""

import json
import os
import shutil
import tempfile

import torch

from .files import current_umask
from .generate import to_pixels
from .latents import PIXEL_LEVELS, autoencoder_class

BLOCK_CHANNELS = (16, 32)
"""Widths of the encoder's two levels (one 2× downsampling): 8×8 → 4×4."""


def digits_autoencoder(latent_channels=4, image_channels=1):
    AutoencoderKL = autoencoder_class()
    return AutoencoderKL(in_channels=image_channels, out_channels=image_channels, latent_channels=latent_channels,
                         block_out_channels=BLOCK_CHANNELS, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                         sample_size=8)


def unit_images(images):
    """Digits in [−1, 1] → EDM2's VAE input: their uint8 pixels / 255 (NCHW)."""
    return to_pixels(images).to(torch.float32) / PIXEL_LEVELS


def train_autoencoder(images, steps=4000, batch_size=128, lr=2e-3, kl_weight=1e-4, latent_channels=4, seed=0,
                      progress=None):
    """The autoencoder trained on `images` (digits in [−1, 1]); `progress(step, loss)` every 500 steps."""
    torch.manual_seed(seed)
    vae = digits_autoencoder(latent_channels, images.shape[1]).train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    data = unit_images(images)
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        batch = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=None)).sample
        loss = (reconstruction - batch).square().mean() + kl_weight * posterior.kl().mean() / posterior.mean[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress and (step % 500 == 0 or step == steps):
            progress(step, float(loss.detach()))
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def reconstructions(vae, images):
    """uint8 pixels [N, C, H, W] of the autoencoder's reconstruction (the latent means, decoded as EDM2 does)."""
    decoded = vae.decode(vae.encode(unit_images(images)).latent_dist.mean).sample
    return decoded.clamp(0, 1).mul(PIXEL_LEVELS).to(torch.uint8)


def reconstruction_rmse(vae, images):
    """RMSE in pixel levels (0–255) between the images' uint8 pixels and their reconstructions."""
    pixels = unit_images(images) * PIXEL_LEVELS
    return float((reconstructions(vae, images).to(torch.float32) - pixels).square().mean().sqrt())


REPORT_FILE = "reconstruction.json"


def save_autoencoder(vae, folder, report=None):
    """Write the autoencoder (diffusers' save_pretrained) and its `report` (REPORT_FILE) to `folder`, which must
    not exist: into a temporary folder beside it, renamed when complete."""
    if os.path.exists(folder):
        raise FileExistsError(f"{folder} exists; choose another folder or remove it first")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".", suffix=".tmp", dir=parent)
    try:
        vae.save_pretrained(scratch)
        if report is not None:
            with open(os.path.join(scratch, REPORT_FILE), "w") as f:
                json.dump(report, f, indent=2)
        os.chmod(scratch, 0o777 & ~current_umask())  # mkdtemp makes 0700; the folder follows the user's umask
        os.rename(scratch, folder)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
