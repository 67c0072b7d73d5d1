"""The metrics papers report beside FID, computed from a detector's outputs for generated and real samples:
Inception Score (from class logits), precision and recall (Kynkäänniemi et al., 2019) and the Kernel Inception
Distance (Bińkowski et al., 2018), each with the conventions of the code the field compares against (StyleGAN3's
metrics and torch-fidelity; the tests hold the parity). Everything is computed in float64; rows are samples in
sample-index order, so no answer depends on the batch size or the process count. MetricOptions says which of them
a walk measures (--metrics) and records their parameters in each row's question."""

import dataclasses
import math

import numpy as np
import torch

from ..files import digest_of_arrays
from .detectors import DigitsDetector, gives_class_logits
from .sampling import image_features, read_images
from .statistics import check_stats_dimension, DetectorTally, digits_features


IS_SPLITS = 10
"""Inception Score: the samples are cut into this many consecutive index ranges, a score each."""
PR_NEIGHBOURS = 3
"""Precision/recall: a sample's ball reaches its k-th nearest neighbour in its own set (itself not counted)."""
KID_SUBSET_SIZE, KID_SUBSETS = 1000, 100
"""KID: the unbiased MMD² is averaged over this many random subsets of at most this size of each set."""
DISTANCE_ROWS = 1024
"""Rows of a distance block: the pairwise distances are computed this many query rows at a time."""


def inception_score(logits, splits=IS_SPLITS):
    """(mean, standard deviation) over `splits` consecutive ranges of rows of exp(mean over x of KL(p(y|x) ‖ p(y))),
    p(y|x) the softmax of a row of `logits` (N × classes) and p(y) its range's mean; the standard deviation with
    ddof 0. The ranges are rows ⌊kN/splits⌋ … ⌊(k+1)N/splits⌋ − 1, as StyleGAN3 and torch-fidelity (unshuffled)
    cut them. Inception's logits are taken without the output layer's bias (StyleGAN3's convention)."""
    logits = torch.as_tensor(logits).to(torch.float64)
    count = logits.shape[0]
    if logits.ndim != 2 or count < splits:
        raise ValueError(f"the Inception Score needs at least {splits} samples of class logits (N × classes); got "
                         f"shape {tuple(logits.shape)}")
    log_p = logits.log_softmax(dim=1)
    scores = []
    for k in range(splits):
        part = log_p[k * count // splits:(k + 1) * count // splits]
        log_marginal = part.exp().mean(dim=0).log()
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _neighbour_radii(features, k):
    """The distance of each row of `features` to its k-th nearest other row."""
    if features.shape[0] <= k:
        raise ValueError(f"precision and recall with k = {k} need more than {k} samples in each set; got "
                         f"{features.shape[0]}")
    radii = [torch.cdist(features[i:i + DISTANCE_ROWS], features).kthvalue(k + 1, dim=1).values
             for i in range(0, features.shape[0], DISTANCE_ROWS)]
    return torch.cat(radii)


def _inside_some_ball(queries, centres, radii):
    """The share of `queries` within the ball of at least one of `centres` (radius `radii`)."""
    inside = [(torch.cdist(queries[i:i + DISTANCE_ROWS], centres) <= radii).any(dim=1)
              for i in range(0, queries.shape[0], DISTANCE_ROWS)]
    return float(torch.cat(inside).to(torch.float64).mean())


def precision_recall(real, generated, k=PR_NEIGHBOURS, real_radii=None):
    """(precision, recall): the share of generated samples inside the k-nearest-neighbour ball of some real
    sample, and the share of real samples inside that of some generated sample (Kynkäänniemi et al.; the
    ADM evaluator and torch-fidelity use k = 3). Rows are feature vectors. `real_radii`: the real samples' radii for
    this k when already known (RealFeatures keeps them for a walk's every checkpoint)."""
    real, generated = (torch.as_tensor(x).to(torch.float64) for x in (real, generated))
    _check_features(real, generated)
    precision = _inside_some_ball(generated, real, _neighbour_radii(real, k) if real_radii is None else real_radii)
    recall = _inside_some_ball(real, generated, _neighbour_radii(generated, k))
    return precision, recall


def _polynomial_kernel(x, y):
    kernel = x @ y.T
    kernel.div_(x.shape[1]).add_(1)
    return kernel * kernel * kernel


KID_WHOLE_KERNELS = 2 ** 24
"""Up to this many kernel entries in all (128 MiB in float64), KID computes the three kernel matrices of the whole
sets once and sums each subset's blocks through indicator vectors (the digits demo: 2,000 samples against 1,797,
far quicker than 100 subsets' own kernels); larger sets (50,000 samples) compute each subset's kernels."""


def unbiased_mmd2(x, y):
    """The unbiased estimate of the squared MMD between the sets of rows `x` and `y` (the same count m) under
    the cubic polynomial kernel k(a, b) = (a·b / d + 1)³: the within-set sums without their diagonals over
    m(m − 1), less twice the cross sum over m²."""
    m = x.shape[0]
    within = _polynomial_kernel(x, x), _polynomial_kernel(y, y)
    off_diagonal = sum(float(kernel.sum() - kernel.diagonal().sum()) for kernel in within)
    return off_diagonal / (m * (m - 1)) - 2 * float(_polynomial_kernel(x, y).sum()) / m ** 2


def kernel_inception_distance(real, generated, subset_size=KID_SUBSET_SIZE, subsets=KID_SUBSETS, seed=0):
    """(mean, standard deviation, subset size) of the unbiased MMD² over `subsets` subsets of
    min(n_real, n_generated, `subset_size`) rows of each set, drawn without replacement by numpy's
    RandomState(`seed`), generated rows first, then real, subset after subset (torch-fidelity's order, so its
    answer for the same seed is ours). The raw value, not ×1000."""
    real, generated = (torch.as_tensor(x).to(torch.float64) for x in (real, generated))
    _check_features(real, generated)
    size = min(real.shape[0], generated.shape[0], subset_size)
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples in each set; got {generated.shape[0]} generated and "
                         f"{real.shape[0]} real")
    draws = np.random.RandomState(seed)
    counts = generated.shape[0], real.shape[0]
    whole = (None if counts[0] ** 2 + counts[1] ** 2 + counts[0] * counts[1] > KID_WHOLE_KERNELS else
             (_polynomial_kernel(generated, generated), _polynomial_kernel(real, real), _polynomial_kernel(generated, real)))
    values = []
    for _ in range(subsets):
        picked_generated = torch.from_numpy(draws.choice(counts[0], size, replace=False))
        picked_real = torch.from_numpy(draws.choice(counts[1], size, replace=False))
        values.append(unbiased_mmd2(generated[picked_generated], real[picked_real]) if whole is None else
                      _subset_mmd2(whole, picked_generated, picked_real))
    return float(np.mean(values)), float(np.std(values)), size


def _subset_mmd2(kernels, picked_x, picked_y):
    """unbiased_mmd2 of the rows `picked_x` and `picked_y` from the whole sets' kernels (x x, y y, x y): each
    block's sum is w_a · K · w_b with the subsets' 0/1 indicator vectors."""
    within_x, within_y, across = kernels
    w_x, w_y = (torch.zeros(kernel.shape[0], dtype=torch.float64).index_fill_(0, picked, 1.0)
                for kernel, picked in ((within_x, picked_x), (within_y, picked_y)))
    m = picked_x.shape[0]
    off_diagonal = sum(float(w @ kernel @ w - (w * kernel.diagonal()).sum())
                       for w, kernel in ((w_x, within_x), (w_y, within_y)))
    return off_diagonal / (m * (m - 1)) - 2 * float(w_x @ across @ w_y) / m ** 2


def _check_features(real, generated):
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"features of real and generated samples must be N × d of the same d; got "
                         f"{tuple(real.shape)} and {tuple(generated.shape)}")


EXTRA_METRICS = ("is", "pr", "kid", "fd_dinov2")
"""--metrics names beside fid: Inception Score, precision and recall, KID (from the FID detector's pass), and FD_DINOv2
(a second detector on the same samples: FrechetPass)."""
FID_PASS_METRICS = ("is", "pr", "kid")
"""The metrics computed from the FID detector's per-sample outputs (which the FID pass then keeps)."""
LOWER_IS_BETTER = ("kid", "fd_dinov2")
"""The metric rows that improve as they fall (IS, precision and recall rise)."""


class RealFeatures:
    """The real set that precision/recall and KID compare with: its per-sample features (float64, on the CPU), what
    identifies it in a question, and its k-nearest-neighbour radii, computed once for all the checkpoints of a walk
    (an N × N distance computation otherwise repeated for each)."""

    def __init__(self, features, source):
        self.features = torch.as_tensor(features).to("cpu", torch.float64)
        self.identity = dict(real_images=source, real_sha256=digest_of_arrays([self.features]))
        """Its name and a digest of its features, for questions (the same images read again give the same digest)."""
        self._radii = {}

    def __len__(self):
        return self.features.shape[0]

    def radii(self, k):
        if k not in self._radii:
            self._radii[k] = _neighbour_radii(self.features, k)
        return self._radii[k]


@dataclasses.dataclass
class FrechetPass:
    """A Fréchet distance in a second detector's feature space from the same samples (--metrics fd_dinov2: DINOv2
    beside the FID detector), against its own reference statistics; `against` is what the row records of both
    (results.measured_against)."""
    metric: str
    detector: object
    reference: tuple
    against: dict

    def question(self):
        return dict(self.against, resize=getattr(self.detector, "resize", ""))

    def tally(self, image_shape, device, feed):
        """A tally of this detector, its feature size checked against the reference's."""
        tally = DetectorTally(self.detector, image_shape, device, feed)
        check_stats_dimension(*self.reference, tally.dimension, self.against["reference"])
        return tally

    def measure(self, tally):
        """{metric: (distance, None)} of an all-reduced tally of this pass."""
        return {self.metric: (tally.fid(self.reference), None)}


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
        """From a --metrics list (fid and EXTRA_METRICS; FID is always measured: is, pr and kid use its pass)."""
        names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        unknown = [name for name in names if name not in ("fid", *EXTRA_METRICS)]
        if unknown:
            raise ValueError(f"--metrics {text!r}: unknown metric {unknown[0]!r}; valid: fid, {', '.join(EXTRA_METRICS)}")
        return cls(tuple(name for name in names if name != "fid"), **parameters)

    @property
    def keeps_samples(self):
        """Whether a metric needs the FID pass's per-sample outputs (FID_PASS_METRICS)."""
        return bool(set(self.names) & set(FID_PASS_METRICS))

    def questions(self, seed, num_generated, real=None, second_pass=None):
        """{metric row name: its parameters}, as recorded: KID's subset size resolved against the set sizes, for
        the metrics that compare with the real set `real` (RealFeatures) what identifies it, and for a FrechetPass
        its detector and reference (they replace the FID detector's in that row's question)."""
        asked = {}
        identity = {} if real is None else real.identity
        if "is" in self.names:
            asked["inception_score"] = dict(splits=self.is_splits)
        if "pr" in self.names:
            asked["precision"] = asked["recall"] = dict(k=self.pr_neighbours, **identity)
        if "kid" in self.names:
            asked["kid"] = dict(subset_size=min(0 if real is None else len(real), num_generated, self.kid_subset_size),
                                subsets=self.kid_subsets, subset_seed=seed, **identity)
        if second_pass is not None:
            asked[second_pass.metric] = second_pass.question()
        return asked

    def measure(self, features, logits, real, seed):
        """{metric row name: (value, standard deviation or None)} of the generated samples' per-sample outputs."""
        measured = {}
        if "is" in self.names:
            measured["inception_score"] = inception_score(logits, self.is_splits)
        if "pr" in self.names:
            precision, recall = precision_recall(real.features, features, self.pr_neighbours,
                                                 real.radii(self.pr_neighbours))
            measured.update(precision=(precision, None), recall=(recall, None))
        if "kid" in self.names:
            measured["kid"] = kernel_inception_distance(real.features, features, self.kid_subset_size,
                                                        self.kid_subsets, seed)[:2]
        return measured


def real_features_for(metric_options, detector, device, real_images=""):
    """The real images' per-sample features the asked metrics compare with (precision/recall, KID): those of
    `real_images` (read_images), or with the digits detector the real digits', as RealFeatures; None when no metric
    needs them. Refused before any work when the detector cannot give what a metric needs."""
    if "is" in metric_options.names and not gives_class_logits(detector):
        raise ValueError("--metrics is needs the detector's class logits: the Inception detector (its 1008-way "
                         "output layer) and the digits detector give them, the pixels detector does not")
    if not {"pr", "kid"} & set(metric_options.names):
        return None
    if real_images:
        return RealFeatures(image_features(read_images(real_images), detector, device), real_images)
    if not isinstance(detector, DigitsDetector):
        raise ValueError("--metrics pr and kid compare per-sample features of real and generated images: give the "
                         "real images with --real_images (a samples .npz, or a folder or .zip of images, e.g. the "
                         "training set); with --detector digits the real digits are used")
    return RealFeatures(digits_features(detector, device), "the real digits (all 1,797)")


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
