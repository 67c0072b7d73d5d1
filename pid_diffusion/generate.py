"""Image generation as an iterable over batches, sharded over processes.

Sample i has a generator of its own, seeded by (seed, i) alone (pid_diffusion/seeding.py), on the
CPU: its noise, its class label and every noise a stochastic sampler adds on the way (churn,
ancestral steps, multistep re-noising) come from it. So the same seed gives the same images whatever
the batch size, the number of processes or the device (up to the network's floating-point
arithmetic), and another seed other images. The original promised this and did not deliver
(docs/differences.md).
"""

import dataclasses
import math
import textwrap

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .files import atomic_output
from .samplers import sample
from .seeding import SAMPLE, seeded_generator


def sample_generators(seed, indices):
    """One CPU generator per sample index, seeded by (seed, index)."""
    return [seeded_generator(SAMPLE, seed, index) for index in indices]


def per_sample_randn_like(generators):
    """A `randn_like` for the samplers whose row k is drawn from generators[k]: a sample's sampler noise
    depends on that sample alone, not on the batch it shares."""
    def randn_like(x):
        if len(generators) != x.shape[0]:
            raise ValueError(f"{len(generators)} sample generators for a batch of {x.shape[0]}")
        rows = [torch.randn(x.shape[1:], generator=generator) for generator in generators]
        return torch.stack(rows).to(device=x.device, dtype=x.dtype)
    return randn_like


def check_class_label(class_label, label_dim):
    """A requested class label must be one of the model's classes 0 … label_dim − 1."""
    if class_label is None:
        return
    if not label_dim:
        raise ValueError(f"class label {class_label} asked of an unconditional model (it has no classes)")
    if not 0 <= class_label < label_dim:
        raise ValueError(f"class label {class_label} is outside the model's classes: valid labels are 0 to "
                         f"{label_dim - 1}")


def seeded_inputs(seed, indices, image_shape, label_dim=0, class_label=None):
    """Unit-normal noise [len(indices), C, H, W] and integer labels (or None) for sample indices;
    `class_label` fixes every label instead of drawing it (the noise stays the same)."""
    return draw_inputs(sample_generators(seed, indices), image_shape, label_dim, class_label)


def draw_inputs(generators, image_shape, label_dim=0, class_label=None):
    """Noise and labels (see seeded_inputs) drawn from one generator per sample, which then goes on to
    the sampler's noise."""
    check_class_label(class_label, label_dim)
    noise, labels = [], []
    for generator in generators:
        noise.append(torch.randn(image_shape, generator=generator))
        if label_dim:
            drawn = int(torch.randint(0, label_dim, (), generator=generator))
            labels.append(drawn if class_label is None else class_label)
    return torch.stack(noise), (torch.tensor(labels, dtype=torch.long) if label_dim else None)


def shard_batches(num_samples, batch_size, rank=0, world_size=1):
    """This process's batches of sample indices: global batch b (indices b·B … b·B+B−1) goes to
    process b mod world_size. Every index appears exactly once over all processes."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    num_batches = math.ceil(num_samples / batch_size)
    return [list(range(b * batch_size, min((b + 1) * batch_size, num_samples)))
            for b in range(rank, num_batches, world_size)]


def to_pixels(images):
    """Generated images (float NCHW in [-1, 1], or pixels a latent model's codec decoded: uint8 NCHW) → uint8
    NCHW. Floats are rounded (EDM's and EDM2's protocol; the original truncated); pixels stay as they are."""
    if images.dtype == torch.uint8:
        return images
    return (images.to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def to_uint8(images):
    """`to_pixels` in the layout of sample files and grids: uint8 NHWC."""
    return to_pixels(images).permute(0, 2, 3, 1)


def as_images(samples, decode=None):
    """A model's samples as images: clamped to [-1, 1], or for a latent model (`decode`) its decoded pixels."""
    return samples.clamp(-1, 1) if decode is None else decode(samples)


@dataclasses.dataclass
class GenerationRequest:
    """Which samples to make: samples first_index … first_index + num_samples − 1 of `seed` (sample i's noise
    and label depend only on (seed, i)); `class_label` fixes every label; `use_fp16` runs the network under
    float16 autocast on CUDA."""
    num_samples: int
    batch_size: int
    seed: int
    use_fp16: bool = False
    class_label: int = None
    first_index: int = 0

    def __post_init__(self):
        for name in ("num_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.first_index < 0:
            raise ValueError(f"the first sample index must be ≥ 0, got {self.first_index}")


@dataclasses.dataclass
class GeneratedBatch:
    indices: list
    images: torch.Tensor        # float NCHW in [-1, 1] (clamped), or a latent model's decoded uint8 pixels
    labels: torch.Tensor = None  # int64 [N] or None


def generate(denoiser, num_samples, batch_size, seed, image_shape, label_dim=0, rank=0, world_size=1,
             device="cpu", sampler="oneshot", autocast_dtype=None, class_label=None, decode=None, first_index=0,
             **sampler_options):
    """Yield this process's GeneratedBatch objects of samples first_index … first_index + num_samples − 1, in
    order (labels drawn, or all `class_label`). A latent model's samples (`image_shape` is its latents') are
    turned into uint8 pixels by `decode`."""
    for batch in shard_batches(num_samples, batch_size, rank, world_size):
        indices = [first_index + index for index in batch]
        generators = sample_generators(seed, indices)
        noise, labels = draw_inputs(generators, image_shape, label_dim, class_label)
        noise = noise.to(device)
        one_hot = None if labels is None else F.one_hot(labels, label_dim).to(device=device, dtype=torch.float32)
        context = (torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype
                   else torch.autocast(torch.device(device).type, enabled=False))
        with torch.no_grad(), context:
            images = sample(denoiser, noise, sampler, class_labels=one_hot, randn_like=per_sample_randn_like(generators),
                            **sampler_options)
        yield GeneratedBatch(indices, as_images(images, decode), labels)


GRID_GAP = 2
"""Pixels between the tiles of a grid (in the enlarged image)."""
GRID_BACKGROUND = 255
CAPTION_HEIGHT = 14
CAPTION_CHARACTER_WIDTH = 6
"""Pixels of a grid's caption line, and of a character in it (PIL's default bitmap font)."""


def image_grid(images_uint8, columns=8, zoom=1, gap=0):
    """NHWC uint8 → one HWC uint8 grid image (numpy): each image enlarged `zoom` times (nearest neighbour),
    `gap` background pixels between them."""
    images = np.asarray(images_uint8)
    count, height, width, channels = images.shape
    images = images.repeat(zoom, axis=1).repeat(zoom, axis=2)
    height, width = height * zoom, width * zoom
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, channels), GRID_BACKGROUND,
                   dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        top, left = r * (height + gap), c * (width + gap)
        grid[top:top + height, left:left + width] = image
    return grid


MIN_GRID_CELL = 32
"""Images narrower than this many pixels are enlarged (nearest neighbour) in grids, so 8×8 digits can be seen."""


def grid_zoom(width):
    return max(1, -(-MIN_GRID_CELL // width))


def save_grid(images_uint8, path, columns=8, caption="", labels=None):
    """A PNG grid of uint8 NHWC images (greyscale or colour), small images enlarged, tiles apart, each tile's
    class label in its corner (`labels`, one per image), and a `caption` line above (what the samples are and
    what made them); returns the grid (HWC uint8) as saved."""
    from PIL import ImageDraw

    zoom = grid_zoom(images_uint8.shape[2])
    grid = image_grid(images_uint8, columns, zoom, GRID_GAP)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if labels is not None:
        draw = ImageDraw.Draw(picture)
        height, width = images_uint8.shape[1] * zoom + GRID_GAP, images_uint8.shape[2] * zoom + GRID_GAP
        columns = max(1, min(columns, len(images_uint8)))
        ink = 255 if picture.mode == "L" else (255, 64, 64)
        for k, label in enumerate(labels):
            r, c = divmod(k, columns)
            draw.text((c * width + 1, r * height), str(int(label)), fill=ink)
    if caption:
        lines = textwrap.wrap(caption, max(8, (picture.width - 4) // CAPTION_CHARACTER_WIDTH))
        captioned = Image.new(picture.mode, (picture.width, picture.height + CAPTION_HEIGHT * len(lines)),
                              GRID_BACKGROUND if picture.mode == "L" else (GRID_BACKGROUND,) * 3)
        captioned.paste(picture, (0, CAPTION_HEIGHT * len(lines)))
        draw = ImageDraw.Draw(captioned)
        for number, line in enumerate(lines):
            draw.text((2, 1 + CAPTION_HEIGHT * number), line, fill=0 if picture.mode == "L" else (0, 0, 0))
        picture = captioned
    with atomic_output(path) as tmp:
        picture.save(tmp, format="PNG")
    saved = np.asarray(picture)
    return saved[..., None] if saved.ndim == 2 else saved
