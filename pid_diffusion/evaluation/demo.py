"""Distillation-quality metrics of a run on the digits teacher (the quickstart's demo).

Every generator gets the same noises and labels (sample i from (seed, i), as image_sample.py and
fid_evaluation.py draw them): the teacher's 18-step / 35-call Heun sampler, the teacher's 5- and
10-call Euler samplers (what a one-call student can be compared with), the untrained student (the
teacher's weights) and trained student checkpoints. Each is measured by
  fid              FID in the digits classifier's feature space against the 1,797 real digits
  class_accuracy   share of samples the classifier assigns to the label they were generated for
  digit_is         Inception Score from the classifier's softmax (1 to 10; 10 splits by sample index)
  precision        share of samples inside the 3-nearest-neighbour ball of some real digit (classifier features)
  recall           share of real digits inside that of some sample
  kid              KID in the classifier's features against the real digits (raw, 100 subsets of 1,000 drawn with
                   the seed)
  rmse_vs_teacher  per-pixel RMSE to the teacher's 35-call sample from the same noise and label
                   (PID learns the teacher's ODE map: this is its error)
"""

import math

import torch
import torch.nn.functional as F

from ..digits import CHANNELS, load_digits, NUM_CLASSES, RESOLUTION
from ..generate import as_images, generate, seeded_inputs, to_uint8
from ..guidance import GuidedDenoiser
from ..latents import output_shape
from ..samplers import network_calls, sample
from .detectors import detector_input
from .metrics import inception_score, kernel_inception_distance, PR_NEIGHBOURS, precision_recall, RealFeatures
from .statistics import DetectorTally, digits_features, feature_stats, frechet_distance


TEACHER_SAMPLER = dict(sampler="heun_deter", steps=18)
FEW_STEP_SAMPLERS = (dict(sampler="euler", steps=5), dict(sampler="euler", steps=10))
METRIC_FIELDS = ("generator", "nfe", "fid", "class_accuracy", "rmse_vs_teacher", "digit_is", "precision", "recall",
                 "kid")
CLIP_DENOISED = True
"""As image_sample.py and fid_evaluation.py by default (the original's --clip_denoised True)."""


def check_digits_teacher(teacher, source):
    """The image shape of a digits teacher (pixels): see check_digits_images."""
    return check_digits_images((teacher.img_channels, teacher.img_resolution, teacher.img_resolution),
                               teacher.label_dim, source)


def check_digits_images(shape, label_dim, source):
    """`shape` if a teacher of `label_dim` classes making images of `shape` (its pixels, or its latents decoded)
    is a digits teacher: 10 classes, 1×8×8 or the digits at a larger side (a multiple of 8) in 1 or 3
    channels, as scripts/train_teacher.py --image_size/--image_channels makes them."""
    shape = tuple(shape)
    if label_dim != NUM_CLASSES or shape[0] not in (CHANNELS, 3) or shape[-1] % RESOLUTION:
        raise ValueError(f"{source} is not a digits teacher: it makes {'×'.join(map(str, shape))} images with "
                         f"{label_dim} classes, a digits teacher {CHANNELS} or 3 channels at a side that is a "
                         f"multiple of {RESOLUTION} (1×8×8 as shipped) with {NUM_CLASSES}")
    return shape


def unit_range(images):
    """Generated images as floats in [−1, 1]: as they are, or a latent model's uint8 pixels mapped back."""
    return images / 127.5 - 1 if images.dtype == torch.uint8 else images


class DigitsMetrics:
    """`teacher`: a denoiser of digits (guided or not); `decode`: its codec when it models latents (the
    samples are then decoded into pixels before they are judged); `clip_denoised`: whether the samplers clamp
    (the original's True; EDM2's protocol and every latent model: False)."""

    def __init__(self, teacher, detector, num_samples=2000, seed=0, batch_size=500, device="cpu", decode=None,
                 clip_denoised=CLIP_DENOISED):
        self.device = torch.device(device)
        self.sample_shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
        self.decode, self.clip_denoised = decode, clip_denoised
        self.image_shape = check_digits_images(output_shape(decode, self.sample_shape, self.device), teacher.label_dim,
                                               "the teacher")
        self.detector = detector.to(self.device)
        self.num_samples, self.seed, self.batch_size = num_samples, seed, batch_size
        self.real = RealFeatures(digits_features(self.detector, self.device), "the real digits (all 1,797)")
        self.reference = feature_stats(self.real.features)
        self.teacher = teacher.to(self.device)
        self.calls_per_step = 2 if isinstance(teacher, GuidedDenoiser) else 1  # a guided teacher calls its guide too
        tally, self.teacher_images, self.labels = self._generate(self.teacher, **TEACHER_SAMPLER)
        self.teacher_row = self._row(f"teacher heun_deter {TEACHER_SAMPLER['steps']} steps", tally,
                                     self.calls_per_step * network_calls(**TEACHER_SAMPLER), rmse_vs_teacher=0.0)

    def _generate(self, denoiser, sampler, steps, **options):
        """(DetectorTally, float images [N, *image shape] in [−1, 1], labels [N]) of one generator."""
        tally = DetectorTally(self.detector, self.image_shape, self.device, keep_samples=True)
        images, labels = [], []
        for batch in generate(denoiser.to(self.device), self.num_samples, self.batch_size, self.seed, self.sample_shape,
                              NUM_CLASSES, device=self.device, sampler=sampler, steps=steps,
                              clip_denoised=self.clip_denoised, decode=self.decode, **options):
            tally.update(batch.images, batch.labels.to(self.device))
            images.append(unit_range(batch.images))
            labels.append(batch.labels)
        return tally, torch.cat(images), torch.cat(labels)

    def _row(self, name, tally, nfe, rmse_vs_teacher):
        features, logits = tally.samples()
        precision, recall = precision_recall(self.real.features, features, PR_NEIGHBOURS, self.real.radii(PR_NEIGHBOURS))
        kid = kernel_inception_distance(self.real.features, features, seed=self.seed)[0]
        return dict(generator=name, nfe=nfe, fid=tally.fid(self.reference), class_accuracy=tally.class_accuracy(),
                    rmse_vs_teacher=rmse_vs_teacher, digit_is=inception_score(logits)[0], precision=precision,
                    recall=recall, kid=kid)

    def measure(self, name, denoiser, sampler="oneshot", steps=1, **options):
        """(metrics row, float images [N, C, H, W]) of one generator (`options`: more sampler options); the
        teacher's samplers cost its calls per step (two when guided)."""
        tally, images, _ = self._generate(denoiser, sampler, steps, **options)
        rmse = float((images - self.teacher_images).square().mean().sqrt())
        calls = network_calls(sampler, steps) * (self.calls_per_step if denoiser is self.teacher else 1)
        return self._row(name, tally, calls, rmse), images

    def few_step_teacher_rows(self):
        return [self.measure(f"teacher {spec['sampler']} {spec['steps']} steps", self.teacher, **spec)[0]
                for spec in FEW_STEP_SAMPLERS]

    def student(self, name, student):
        """The metrics row of a PID student (one step, at the noise levels it was trained at)."""
        return self.measure(name, student, "oneshot", **student.noise_levels)[0]

    def comparison_rows(self, student, per_digit=3):
        """Figure rows: `per_digit` samples of each digit, the teacher's above the student's from the same
        noise and label (sample indices after those of the metrics). Returns [(row label, uint8 NHWC
        images for digits 0–9)]."""
        indices = [range(self.num_samples + d * per_digit, self.num_samples + (d + 1) * per_digit)
                   for d in range(NUM_CLASSES)]
        inputs = [seeded_inputs(self.seed, idx, self.sample_shape, NUM_CLASSES, class_label=d)
                  for d, idx in enumerate(indices)]
        noise = torch.stack([n for n, _ in inputs], dim=1).flatten(0, 1).to(self.device)  # row-major: k of 0..9
        labels = F.one_hot(torch.stack([l for _, l in inputs], dim=1).flatten(), NUM_CLASSES).to(self.device, torch.float32)
        student = student.to(self.device)
        with torch.no_grad():
            teacher_images = as_images(sample(self.teacher, noise, class_labels=labels,
                                              clip_denoised=self.clip_denoised, **TEACHER_SAMPLER), self.decode)
            student_images = as_images(sample(student, noise, "oneshot", class_labels=labels,
                                              clip_denoised=self.clip_denoised, **student.noise_levels), self.decode)
        rows = []
        teacher_calls = self.calls_per_step * network_calls(**TEACHER_SAMPLER)
        for k in range(per_digit):
            row = slice(k * NUM_CLASSES, (k + 1) * NUM_CLASSES)
            rows.append((f"teacher\n{teacher_calls} calls", to_uint8(teacher_images[row]).cpu()))
            rows.append(("PID student\n1 call", to_uint8(student_images[row]).cpu()))
        return rows


def real_digits_calibration(detector, device="cpu", seed=0):
    """What real digits score as a generator: the 360 held-out digits judged against the 1,437 training digits
    with the demo's metrics (and KID, 100 subsets of 360 drawn with `seed`). A generator of 2,000 samples
    scores against all 1,797 digits, so these values are the floor at 360 samples, not a target to the digit."""
    train = digits_features(detector, device, "train")
    images, _ = load_digits("held_out")
    with torch.no_grad():
        pixels = detector_input(images.to(device))
        held_out, logits = detector(pixels).to(torch.float64), detector.logits(pixels)
    precision, recall = precision_recall(train, held_out)
    kid, kid_std, subset_size = kernel_inception_distance(train, held_out, seed=seed)
    return dict(samples=len(held_out), fid=frechet_distance(*feature_stats(held_out), *feature_stats(train)),
                digit_is=inception_score(logits)[0], precision=precision, recall=recall, kid=kid, kid_std=kid_std,
                kid_subset_size=subset_size)


def format_table(rows):
    """The rows as a text table; a metric a row lacks (a demo_metrics.json of an older version) is shown as —."""
    columns = (("FID", "fid", 10), ("class accuracy", "class_accuracy", 16), ("digit IS", "digit_is", 10),
               ("precision", "precision", 11), ("recall", "recall", 8), ("KID", "kid", 12),
               ("RMSE vs teacher", "rmse_vs_teacher", 17))
    header = f"{'generator':<34}{'NFE':>5}" + "".join(f"{title:>{width}}" for title, _, width in columns)
    lines = [header, "-" * len(header)]
    for r in rows:
        values = (r.get(key, math.nan) for _, key, _ in columns)
        cells = "".join(f"{value:{width}.4f}" if not math.isnan(value) else f"{'—':>{width}}"
                        for value, (_, _, width) in zip(values, columns))
        lines.append(f"{r['generator']:<34}{r['nfe']:>5}{cells}")
    return "\n".join(lines)


def json_ready(rows):
    """Rows for JSON: NaN (a metric that does not apply) as null."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def from_json(rows):
    return [{k: (float("nan") if v is None else v) for k, v in r.items()} for r in rows]
