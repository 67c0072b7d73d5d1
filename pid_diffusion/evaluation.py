"""What the sampling and FID scripts share: the model a `--training_mode` names, sampler options,
generation to images and feature statistics, and the walk over a folder of checkpoints. Scripts pass
values (cli.py turns the flags into them); nothing here reads the command line."""

import csv
import dataclasses
import hashlib
import io
import math
import os
import re
import zipfile

import numpy as np
import torch

from . import dist
from .checkpoint import load_student, read_denoiser
from .download import is_url, local_file
from .families import family_of
from .digits import DigitsDetector
from .fid import DetectorTally, digits_features, gives_class_logits, reference_digest, reference_name
from .files import FileLock, atomic_output, digest_of_arrays
from .generate import generate, to_uint8
from .guidance import GuidanceOptions
from .latents import output_shape
from .metrics import (IS_SPLITS, KID_SUBSET_SIZE, KID_SUBSETS, PR_NEIGHBOURS, inception_score, kernel_inception_distance,
                      precision_recall)
from .run_folder import checkpoint_step, model_file_names
from .samplers import SAMPLERS, check_sampler_options

ONE_SHOT_MODE = "one_shot_pinn_edm_edm_one_shot"
TEACHER_MODE = "one_shot_pinn_edm_edm_teacher"
SAMPLING_MODES = (ONE_SHOT_MODE, TEACHER_MODE)
"""The original's --training_mode names for sampling: the PID student, or the EDM teacher."""
ONE_SHOT_OPTIONS = ("sigma_min", "sigma_max", "clip_denoised")
"""What the one-step sampler of a student uses: it starts from σ_max·ε and evaluates the student at σ_min."""
RESULT_FIELDS = ("model_name", "FID", "step")
"""The original's columns first (model_name,FID), then ours."""


@dataclasses.dataclass(frozen=True)
class ResultsTable:
    """A results CSV of the walk: its file name (by seed), its value column and the columns it starts with."""
    file_name: str
    value: str
    leading: tuple


FID_TABLE = ResultsTable("fid_results_{seed}.csv", "FID", RESULT_FIELDS)
METRICS_TABLE = ResultsTable("metrics_{seed}.csv", "value", ("model_name", "step", "metric", "value", "std"))
"""The long table of the metrics beside FID: a row per (checkpoint, metric), then its question and parameters."""
EXTRA_METRICS = ("is", "pr", "kid")
"""--metrics names beside fid: Inception Score, precision and recall, KID (pid_diffusion/metrics.py)."""


@dataclasses.dataclass(frozen=True)
class MetricOptions:
    """Which metrics beside FID a walk measures, and their parameters (recorded in each row's question)."""
    names: tuple = ()
    is_splits: int = IS_SPLITS
    pr_neighbours: int = PR_NEIGHBOURS
    kid_subset_size: int = KID_SUBSET_SIZE
    kid_subsets: int = KID_SUBSETS

    @classmethod
    def parse(cls, text, **parameters):
        """From a --metrics list (fid, is, pr, kid; FID is always measured: the other metrics use its pass)."""
        names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        unknown = [name for name in names if name not in ("fid", *EXTRA_METRICS)]
        if unknown:
            raise ValueError(f"--metrics {text!r}: unknown metric {unknown[0]!r}; valid: fid, {', '.join(EXTRA_METRICS)}")
        return cls(tuple(name for name in names if name != "fid"), **parameters)

    def questions(self, seed, num_generated, real_count=0, real=None):
        """{metric row name: its parameters}, as recorded: KID's subset size resolved against the set sizes, and
        for the metrics that compare with real images `real`, what identifies them (real_identity)."""
        asked = {}
        real = real or {}
        if "is" in self.names:
            asked["inception_score"] = dict(splits=self.is_splits)
        if "pr" in self.names:
            asked["precision"] = asked["recall"] = dict(k=self.pr_neighbours, **real)
        if "kid" in self.names:
            asked["kid"] = dict(subset_size=min(real_count, num_generated, self.kid_subset_size),
                                subsets=self.kid_subsets, subset_seed=seed, **real)
        return asked

    def measure(self, features, logits, real_features, seed):
        """{metric row name: (value, standard deviation or None)} of the generated samples' per-sample outputs."""
        measured = {}
        if "is" in self.names:
            measured["inception_score"] = inception_score(logits, self.is_splits)
        if "pr" in self.names:
            precision, recall = precision_recall(real_features, features, self.pr_neighbours)
            measured.update(precision=(precision, None), recall=(recall, None))
        if "kid" in self.names:
            measured["kid"] = kernel_inception_distance(real_features, features, self.kid_subset_size,
                                                        self.kid_subsets, seed)[:2]
        return measured


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
                   keep_images=True, progress=True, decode=None, stop=None, keep_samples=False):
    """Generate this process's share. Returns (uint8 NHWC images, labels, indices, DetectorTally or None);
    the images are kept only when `keep_images` (the first batch is always kept for a grid), the detector's
    per-sample outputs when `keep_samples`. A latent model's samples (of `image_shape`) are decoded into images
    by `decode`. `stop`, called before each batch, ends the generation with GenerationStopped when it returns
    true (a stop signal during training)."""
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
        if tally is not None:
            tally.update(batch.images, batch.labels, batch.indices)
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


def checkpoints_in(folder, names=()):
    """[(name, step, path)] of the models to evaluate, as the original selects them: every *.pt file of
    the folder except optimizer and trainer-state files (and temporary files of interrupted saves),
    or only the files `names` (in the folder, paths, or http(s) URLs fetched once); in step order, then name."""
    if names:
        paths = [local_file(name, "the checkpoint") if is_url(name) else
                 os.path.join(folder, name) if os.path.isfile(os.path.join(folder, name)) else name for name in names]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"checkpoint file(s) not found in {folder} nor as paths: {', '.join(missing)}")
    else:
        paths = [os.path.join(folder, n) for n in model_file_names(folder)]
    found = [(os.path.splitext(os.path.basename(p))[0], checkpoint_step(p), p) for p in paths]
    return sorted(found, key=lambda item: (item[1], item[0]))


QUESTION_FIELDS = ("num_samples", "seed", "sampling", "detector", "detector_sha256", "feed", "reference",
                   "reference_sha256", "weights_sha256")
"""What an FID of the results file measured, recorded beside it: a row answers only the same question."""


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


def tally_images(tally, images, device, batch_size=250, shared=False):
    """Feed uint8 NHWC `images` to `tally` in batches, with their sample indices: all of them, or with `shared`
    this process's share (batches rank, rank + processes, ...)."""
    info = dist.info()
    first, stride = (info.rank, info.world_size) if shared else (0, 1)
    for start in range(first * batch_size, len(images), stride * batch_size):
        stop = min(start + batch_size, len(images))
        tally.update(images[start:stop].permute(0, 3, 1, 2).to(device), None, range(start, stop))


def image_features(images, detector, device):
    """The detector's per-sample features (float64) of uint8 NHWC images, in order."""
    tally = DetectorTally(detector, (images.shape[3], images.shape[1], images.shape[2]), device, keep_samples=True)
    tally_images(tally, images, device)
    return tally.samples()[0]


def real_features_for(metric_options, detector, device, real_images=""):
    """The real images' per-sample features the asked metrics compare with (precision/recall, KID): those of
    `real_images` (read_images), or with the digits detector the real digits'; None when no metric needs them.
    Refused before any work when the detector cannot give what a metric needs."""
    if "is" in metric_options.names and not gives_class_logits(detector):
        raise ValueError("--metrics is needs the detector's class logits: the Inception detector (its 1008-way "
                         "output layer) and the digits detector give them, the pixels detector does not")
    if not {"pr", "kid"} & set(metric_options.names):
        return None
    if real_images:
        return image_features(read_images(real_images), detector, device)
    if not isinstance(detector, DigitsDetector):
        raise ValueError("--metrics pr and kid compare per-sample features of real and generated images: give the "
                         "real images with --real_images (a samples .npz, or a folder or .zip of images, e.g. the "
                         "training set); with --detector digits the real digits are used")
    return digits_features(detector, device)


def real_identity(real_features, real_images):
    """What identifies the real set of precision/recall and KID in a question: its name and a digest of its
    features (the same images read again give the same digest)."""
    if real_features is None:
        return {}
    return dict(real_images=real_images or "the real digits (all 1,797)", real_sha256=digest_of_arrays([real_features]))


def metric_answers(name, step, measured, asked):
    """The metrics table's rows of one model's `measured` metrics ({metric: (value, standard deviation or None)}),
    each with its whole question from `asked` ({metric: question}): ([(row, question)], the metrics whose value
    is not finite, which are reported and never recorded)."""
    answers, not_finite = [], []
    for metric, (value, std) in measured.items():
        if not math.isfinite(value):
            not_finite.append(metric)
            continue
        row = dict(model_name=name, step=step, metric=metric, value=f"{value:.6g}",
                   std="" if std is None else f"{std:.6g}")
        answers.append((row, asked[metric]))
    return answers, not_finite


def metrics_text(measured):
    """measured metrics as one line: 'metric value ± std, ...'."""
    return ", ".join(f"{metric} {value:.4f}" + ("" if std is None else f" ± {std:.4f}")
                     for metric, (value, std) in measured.items())


def results_file(folder, seed, table=FID_TABLE):
    """A results table of a folder for one seed: the FID table (the original's name; the walk's and FID during
    training's), or the metrics table."""
    return os.path.join(folder, table.file_name.format(seed=seed))


def measured_against(detector_name, detector, fid_dataset, ref_path, reference):
    """The items of an FID question that say what the samples are measured with: the detector and a digest of
    its weights, the reference statistics by name and by identity."""
    return dict(detector=getattr(detector, "question_name", detector_name),
                detector_sha256=digest_of_arrays(detector.state_dict().values()),
                reference=reference_name(fid_dataset, ref_path),
                reference_sha256=reference_digest(fid_dataset, ref_path, reference, detector))


def weights_digest(model):
    """Which weights an FID row measured: a digest of the sampled model's state (its file's name does not say)."""
    return digest_of_arrays(model.state_dict().values())


def sampling_description(options, request):
    """The sampling part of a question, as one text: the sampler, its options, the label and precision, and
    the first sample index where it is not 0 (the other ranges of a repeated evaluation)."""
    items = {**options, "class_label": -1 if request.class_label is None else request.class_label,
             "use_fp16": request.use_fp16}
    if request.first_index:
        items["first_sample"] = request.first_index
    return ";".join(f"{key}={items[key]}" for key in sorted(items))


def question_labels(rows):
    """What tells the questions of `rows` apart (one label per row: the question's items that differ between
    them, the sampling's one by one; '' when all rows answer one question), and the items they share."""
    def items(row):
        found = {k: row.get(k, "") for k in QUESTION_FIELDS if k not in ("sampling", "weights_sha256")}
        found.update(part.split("=", 1) for part in row.get("sampling", "").split(";") if "=" in part)
        return found
    described = [items(row) for row in rows]
    keys = sorted({k for d in described for k in d})
    differing = [k for k in keys if len({d.get(k, "") for d in described}) > 1]
    shared = {k: described[0].get(k, "") for k in keys if k not in differing} if described else {}
    return [", ".join(f"{k}={d.get(k, '')}" for k in differing) for d in described], shared


def samples_tag(request, sampling):
    """A name part for the files of one set of samples: the seed and a digest of how they were drawn."""
    return f"seed{request.seed}-{hashlib.sha256(sampling.encode()).hexdigest()[:8]}"


def answer(rows, name, question):
    """The row of `rows` that measured `question` for checkpoint `name`, or None."""
    for row in rows:
        if row["model_name"] == name and all(row.get(k) == str(v) for k, v in question.items()):
            return row
    return None


def read_results(path, table=FID_TABLE):
    """The rows of a results CSV (a list of dicts); a damaged row is reported with its line number."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"model_name", table.value} <= set(reader.fieldnames):
            raise ValueError(f"{path} line 1: not a results header (model_name,...,{table.value}); move the file away")
        for row in reader:
            try:
                if not row["model_name"] or None in row or None in row.values():  # more or fewer than the header's
                    raise ValueError("wrong number of fields")
                if not math.isfinite(float(row[table.value])):  # never recorded: a non-finite value is damage
                    raise ValueError(f"{table.value} {row[table.value]} is not a finite number")
                if row.get("step") in (None, ""):  # a CSV the original wrote has no step: the name has it
                    row["step"] = str(checkpoint_step(row["model_name"] + ".pt"))
                int(row["step"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path} line {reader.line_num}: damaged row {row} ({e}); delete that line and rerun "
                                 "(its checkpoint is evaluated again)") from None
            rows.append(row)
    return rows


def record_result(path, row, question, on_wait=None, table=FID_TABLE):
    """Add `row` (the answer to `question`) to the results CSV, one writer at a time: under the file's lock
    the CSV is read again, an older answer to the same question replaced, and the file rewritten whole.
    Rows of other questions, and those other walks added meanwhile, are kept. Returns every row."""
    lock = FileLock(path + ".lock").acquire(wait=True, on_wait=on_wait)
    try:
        rows = [r for r in read_results(path, table) if answer([r], row["model_name"], question) is None]
        rows.append({**row, **{k: str(v) for k, v in question.items()}})
        write_results(path, rows, table)
        return rows
    finally:
        lock.release()


def write_results(path, rows, table=FID_TABLE):
    """Rewrite the results CSV whole (through a temporary file): a cut-off row cannot exist. The
    columns are the table's leading ones, the question's, then any others the rows carry."""
    known = [*table.leading, *QUESTION_FIELDS]
    fields = known + sorted({k for row in rows for k in row} - set(known))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
