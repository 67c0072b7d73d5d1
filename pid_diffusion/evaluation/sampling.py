"""Sampling for evaluation: the model a --training_mode names (a teacher with its family's sampling protocol, or a
PID student at the noise levels it was trained at), its samples generated in order and fed to a detector, the
original's samples files, and images made by any code (an .npz, a folder or a zip of images) read back."""

import dataclasses
import io
import math
import os
import re
import zipfile

import numpy as np
import torch

from .. import dist
from ..checkpoint import load_student, read_denoiser
from ..families import family_of
from ..files import atomic_output
from ..generate import generate, to_uint8
from ..guidance import GuidanceOptions
from ..latents import output_shape
from ..samplers import check_sampler_options, SAMPLERS
from .statistics import DetectorTally


ONE_SHOT_MODE = "one_shot_pinn_edm_edm_one_shot"
TEACHER_MODE = "one_shot_pinn_edm_edm_teacher"
SAMPLING_MODES = (ONE_SHOT_MODE, TEACHER_MODE)
"""The original's --training_mode names for sampling: the PID student, or the EDM teacher."""
ONE_SHOT_OPTIONS = ("sigma_min", "sigma_max", "clip_denoised")
"""What the one-step sampler of a student uses: it starts from σ_max·ε and evaluates the student at σ_min."""


@dataclasses.dataclass
class SamplingModel:
    """What a sampling mode loads: the denoiser, the shape of its samples (C, H, W), its label count, the
    sampler options (the student's own noise levels; a teacher's family protocol for the options not given),
    for a latent model the decoder of its samples, and its family's sampling protocol (families.TeacherFamily)."""
    model: torch.nn.Module
    shape: tuple
    label_dim: int
    options: dict
    decode: object = None
    protocol: dict = dataclasses.field(default_factory=dict)

    def setting(self, name, args, given):
        """The value of the flag `name` of `args`: as given, else the family protocol's, else its default."""
        return getattr(args, name) if name in given or name not in self.protocol else self.protocol[name]

    def output_shape(self, device="cpu"):
        """The shape of the images its samples become."""
        return output_shape(self.decode, self.shape, device)


def load_sampling_model(training_mode, model_path, network_flags, device, options, given=(), guidance=None,
                        vae_path=""):
    """The SamplingModel of a sampling mode: the frozen teacher (guided when `guidance`, a
    guidance.GuidanceOptions, names a guide) sampled with its family's protocol for the sampler options not
    `given` (EDM2: Heun, 32 steps, no clamping), or the PID student with the sampling options set to the noise
    levels it was trained at (see student_options). A latent model's samples are decoded (`vae_path`: a
    local VAE) and not clamped before decoding."""
    if training_mode not in SAMPLING_MODES:
        raise ValueError(f"unknown --training_mode {training_mode!r}; valid: {', '.join(SAMPLING_MODES)}")
    if not model_path:
        raise ValueError("--model_path is required: a teacher file or a student checkpoint")
    guidance = guidance or GuidanceOptions()
    guidance.check_guidance()
    if training_mode == TEACHER_MODE:
        model, config, _ = read_denoiser(model_path, guidance, **network_flags)
        shape = (model.img_channels, model.img_resolution, model.img_resolution)
        label_dim = model.label_dim
    else:
        if guidance.guide_model_path:
            raise ValueError("--guide_model_path and --guidance guide a teacher; a PID student samples in one step "
                             "what it learnt (distil with --guide_model_path to learn the guided teacher)")
        model = load_student(model_path, options["sigma_min"], options["sigma_max"], **network_flags)
        options = student_options(model, options, given, model_path)
        config = model.network_config
        shape = (model.net.img_channels, model.net.img_resolution, model.net.img_resolution)
        label_dim = model.net.label_dim
    family = family_of(config)
    if training_mode == TEACHER_MODE:  # a student samples in one step: the teachers' sampler options are not its
        protocol = {name: value for name, value in family.sampling_protocol.items() if name in options and name not in given}
        if protocol:
            options = sampler_options(training_mode, **{**options, **protocol})
    decode = family.image_decoder(config, vae_path)
    if vae_path and decode is None:
        raise ValueError(f"--vae_path {vae_path}: {model_path} models pixels, not latents, so no VAE decodes its "
                         "samples; drop --vae_path")
    if decode is not None:
        if options.get("clip_denoised") and "clip_denoised" in given:
            raise ValueError(f"{model_path} samples latents, which are not clamped: drop --clip_denoised True (the "
                             "decoded pixels are clamped to [0, 255], as EDM2 decodes them)")
        options = {**options, "clip_denoised": False}
    return SamplingModel(model.to(device), shape, label_dim, options, decode, family.sampling_protocol)


def student_options(student, options, given, source):
    """The options with the student's own σ_min and σ_max. A student whose run_config.json records them
    samples at them: a different --sigma_min/--sigma_max given explicitly is refused (its one-step map
    starts from σ_max·ε and ends at σ_min: other levels give other, untrained images)."""
    if student.levels_recorded:
        for name, trained in student.noise_levels.items():
            if name in given and not math.isclose(options[name], trained, rel_tol=1e-9):
                raise ValueError(f"{source} was trained with --{name} {trained:g} (its run_config.json); --{name} "
                                 f"{options[name]:g} was given. A student samples at the levels it was trained at: "
                                 f"drop --{name} or give {trained:g}")
    return {**options, **student.noise_levels}


def sampler_options(training_mode, sampler, **options):
    """The sampler and its options (steps, sigma_min, sigma_max, s_churn, s_tmin, s_tmax, s_noise, ts,
    clip_denoised) for a sampling mode, checked before any work (samplers.check_sampler_options); the
    student always samples in one step."""
    sampler = "oneshot" if training_mode == ONE_SHOT_MODE else sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown --sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if training_mode == TEACHER_MODE and sampler == "oneshot":
        raise ValueError("--sampler oneshot evaluates the PID student; use --training_mode "
                         f"{ONE_SHOT_MODE} with a student checkpoint")
    check_sampler_options(sampler, **{k: v for k, v in options.items() if k != "clip_denoised"})
    if sampler == "oneshot":  # the teacher samplers' options (steps, churn, ...) are not the student's
        options = {k: v for k, v in options.items() if k in ONE_SHOT_OPTIONS}
    return dict(sampler=sampler, **options)


def autocast_dtype(use_fp16, device):
    return torch.float16 if use_fp16 and torch.device(device).type == "cuda" else None


class GenerationStopped(Exception):
    """`run_generation`'s `stop` asked to end before every batch was made."""


def run_generation(model, image_shape, label_dim, request, options, device, detector=None, feed="float",
                   keep_images=True, progress=True, decode=None, stop=None, keep_samples=False, more_tallies=()):
    """Generate this process's share. Returns (uint8 NHWC images, labels, indices, DetectorTally or None);
    the images are kept only when `keep_images` (the first batch is always kept for a grid), the detector's
    per-sample outputs when `keep_samples`. A latent model's samples (of `image_shape`) are decoded into images
    by `decode`. `stop`, called before each batch, ends the generation with GenerationStopped when it returns
    true (a stop signal during training). `more_tallies`: DetectorTally objects of other detectors, fed the same
    batches (a second feature space in the same pass)."""
    from tqdm import tqdm

    info = dist.info()
    batches = generate(model, request.num_samples, request.batch_size, request.seed, image_shape, label_dim, info.rank,
                       info.world_size, device, autocast_dtype=autocast_dtype(request.use_fp16, device),
                       class_label=request.class_label, decode=decode, first_index=request.first_index, **options)
    image_size = output_shape(decode, image_shape, device)
    # every process needs the statistics, also one that gets no batch
    tally = None if detector is None else DetectorTally(detector, image_size, device, feed, keep_samples)
    images, labels, indices = [], [], []
    total = -(-request.num_samples // (request.batch_size * info.world_size))
    for number, batch in enumerate(tqdm(batches, total=total, disable=not (progress and dist.is_main()),
                                        desc="sampling", unit="batch")):
        if stop is not None and stop():
            raise GenerationStopped(f"stopped after {number} of {total} batches")
        for each in ([] if tally is None else [tally]) + list(more_tallies):
            each.update(batch.images, batch.labels, batch.indices)
        if keep_images or number == 0:
            images.append(to_uint8(batch.images).cpu())
            indices.extend(batch.indices)
            if batch.labels is not None:
                labels.append(batch.labels)
    images = torch.cat(images) if images else torch.zeros((0, image_size[1], image_size[2], image_size[0]),
                                                          dtype=torch.uint8)
    return images, (torch.cat(labels) if labels else None), indices, tally


def samples_npz_path(folder, count, image_shape, prefix=""):
    """{folder}/{prefix}samples_{N}x{H}x{W}x{C}.npz, the original's name, for `count` images of shape (C, H, W)."""
    channels, height, width = image_shape
    return os.path.join(folder, f"{prefix}samples_{count}x{height}x{width}x{channels}.npz")


SAMPLES_FILE = re.compile(r"^samples_\d+x\d+x\d+x\d+\.npz$")
"""A samples file of image_sample.py (any N and shape)."""


def samples_files_in(folder):
    """The paths of the samples files image_sample.py wrote in `folder` (any N), sorted."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return [os.path.join(folder, name) for name in sorted(names) if SAMPLES_FILE.match(name)]


def save_samples_npz(images_uint8, labels, folder, prefix=""):
    """The original's layout: {prefix}samples_{N}x{H}x{W}x3.npz with arr_0 (uint8 NHWC) and arr_1 (labels)."""
    count, height, width, channels = images_uint8.shape
    path = samples_npz_path(folder, count, (channels, height, width), prefix)
    arrays = [images_uint8.numpy()] + ([labels.numpy()] if labels is not None else [])
    with atomic_output(path) as tmp:
        np.savez(tmp, *arrays)
    return path


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_images(path):
    """Images as uint8 NHWC: a samples file in the original's format (.npz with arr_0 uint8 NHWC), or a folder
    or a .zip of image files (their names sorted; every image of one size and mode), as EDM2's
    calculate_metrics.py takes them."""
    from PIL import Image

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder of images")
    if path.endswith(".npz"):
        with np.load(path) as data:
            if "arr_0" not in data or data["arr_0"].dtype != np.uint8 or data["arr_0"].ndim != 4:
                raise ValueError(f"{path}: not a samples file (arr_0 of uint8 images N × H × W × C)")
            return torch.from_numpy(data["arr_0"].copy())
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
        opened = [Image.open(os.path.join(path, n)) for n in names]
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(IMAGE_SUFFIXES))
            opened = [Image.open(io.BytesIO(archive.read(n))) for n in names]
    else:
        raise ValueError(f"{path}: give a samples .npz, a folder of images or a .zip of images")
    if not opened:
        raise ValueError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    arrays = [np.asarray(image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)) for image in opened]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"{path}: images of several sizes or modes ({', '.join(map(str, sorted(shapes)))}); give "
                         "one size")
    stacked = np.stack(arrays)
    return torch.from_numpy(stacked[..., None] if stacked.ndim == 3 else stacked)


def tally_images(tallies, images, device, batch_size=250, shared=False):
    """Feed uint8 NHWC `images` to every one of `tallies` in batches, with their sample indices: all of them, or with
    `shared` this process's share (batches rank, rank + processes, ...). Each batch is moved to the device once."""
    info = dist.info()
    first, stride = (info.rank, info.world_size) if shared else (0, 1)
    for start in range(first * batch_size, len(images), stride * batch_size):
        stop = min(start + batch_size, len(images))
        batch = images[start:stop].permute(0, 3, 1, 2).to(device)
        for tally in tallies:
            tally.update(batch, None, range(start, stop))


def image_features(images, detector, device):
    """The detector's per-sample features (float64) of uint8 NHWC images, in order."""
    tally = DetectorTally(detector, (images.shape[3], images.shape[1], images.shape[2]), device, keep_samples=True)
    tally_images([tally], images, device)
    return tally.samples()[0]
