"""Feature statistics and the Fréchet distance: a detector's features streamed into float64 sums per batch
(DetectorTally, which keeps per-sample outputs only when a metric needs them), the reference statistics of a
--fid_dataset (EDM's .npz, EDM2's .pkl with its fid and fd_dinov2 entries, the real digits computed here), their
checks and identity."""

import os
import zipfile

import numpy as np
import torch

from .. import dist
from ..digits import load_digits
from ..download import local_file
from ..edm_pickle import EDMPickleError, is_pickle_file, read_restricted_pickle
from ..files import atomic_output, digest_of_arrays, is_zip_archive
from .detectors import class_logits, detector_input, DigitsDetector, DINOv2Detector, gives_class_logits


REFERENCE_STATS = {
    "cifar10": ("stats/cifar10-32x32.npz", "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"),
    "imagenet": ("stats/imagenet-64x64.npz", "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz"),
    "edm2-img64": ("stats/img64.pkl", "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/img64.pkl"),
    "edm2-img512": ("stats/img512.pkl", "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/img512.pkl"),
}
"""--fid_dataset → (file under model_zoo/, where to download it): EDM's .npz files, and EDM2's .pkl files (the
statistics EDM2's published FIDs are measured against)."""
DIGITS_DATASET = "digits"


class FeatureStats:
    """Streaming Σf, Σffᵀ and count in float64; merge across processes with `all_reduce`."""

    def __init__(self, dim, device="cpu"):
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features):
        features = features.to(self.total.device, torch.float64)
        self.count += features.shape[0]
        self.total += features.sum(0)
        self.outer += features.T @ features

    def all_reduce(self):
        for tensor in (self.count, self.total, self.outer):
            dist.all_reduce_sum(tensor)
        return self

    def mean_cov(self):
        """(μ, Σ) as float64 numpy arrays, Σ the unbiased covariance."""
        n = float(self.count)
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got {int(n)}")
        mu = self.total / n
        sigma = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


class DetectorTally:
    """What a detector sees of a stream of generated batches: feature statistics (for FID) and, when
    the detector classifies (the digits detector) and the batches carry labels, how many samples are
    classified as the label they were generated for (conditional accuracy)."""

    def __init__(self, detector, image_shape, device="cpu", feed="float", keep_samples=False):
        """`keep_samples`: also keep every sample's features (and a classifying detector's logits), in the order
        of the updates, for the metrics that need them (precision/recall, KID, Inception Score)."""
        self.detector, self.feed = detector, feed
        self.kept_features = [] if keep_samples else None
        self.kept_logits = [] if keep_samples and gives_class_logits(detector) else None
        self.kept_indices = []
        with torch.no_grad():
            probe = detector(detector_input(torch.zeros((1, *image_shape), device=device), feed), return_features=True)
        self.stats = FeatureStats(probe.shape[1], device=device)
        self.note = detector.input_note(image_shape) if hasattr(detector, "input_note") else ""
        """What the detector makes of these images, where it is worth saying ('' otherwise)."""
        self.hits = torch.zeros((), dtype=torch.float64, device=device)
        self.labelled = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, images, labels=None, indices=()):
        """Add a batch (its sample indices, with `keep_samples`, order the kept samples across processes)."""
        pixels = detector_input(images, self.feed)
        features = self.detector(pixels, return_features=True)
        self.stats.update(features)
        if self.kept_features is not None:
            self.kept_features.append(features.to(torch.float64))
            self.kept_indices.extend(indices)
        logits = None if self.kept_logits is None else class_logits(self.detector, pixels, features)
        if logits is not None:
            self.kept_logits.append(logits)
        if labels is not None and hasattr(self.detector, "classify"):  # the classifier runs once per batch
            predicted = self.detector.classify(pixels) if logits is None else logits.argmax(1)
            self.hits += (predicted == labels.to(predicted.device)).sum()
            self.labelled += len(labels)

    def samples(self):
        """(features N × d, logits N × classes or None) of the samples seen, kept with `keep_samples`."""
        if self.kept_features is None:
            raise RuntimeError("this tally keeps no per-sample features: make it with keep_samples=True")
        return torch.cat(self.kept_features), None if self.kept_logits is None else torch.cat(self.kept_logits)

    def samples_in_order(self):
        """(features, logits or None) of every process's kept samples, sorted by sample index (a collective call:
        every process calls it and gets them all)."""
        features, logits = self.samples()
        return dist.gather_in_order(features.cpu(), None if logits is None else logits.cpu(), self.kept_indices)

    @property
    def dimension(self):
        """The detector's feature size."""
        return self.stats.total.shape[0]

    def all_reduce(self):
        self.stats.all_reduce()
        for tensor in (self.hits, self.labelled):
            dist.all_reduce_sum(tensor)
        return self

    def fid(self, reference):
        return frechet_distance(*self.stats.mean_cov(), *reference)

    def class_accuracy(self):
        """Share of labelled samples classified as their label; NaN when nothing was classified."""
        return float(self.hits / self.labelled) if self.labelled > 0 else float("nan")


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) in float64.

    tr((Σ1Σ2)^½) is computed as Σ √λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (same eigenvalues
    as Σ1Σ2), which avoids the complex round-off of a general matrix square root.
    """
    mu1, mu2 = (np.asarray(torch.as_tensor(m).double().cpu(), dtype=np.float64).reshape(-1) for m in (mu1, mu2))
    sigma1, sigma2 = (np.asarray(torch.as_tensor(s).double().cpu(), dtype=np.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics of different dimensions: μ {mu1.shape} vs {mu2.shape}, "
                         f"Σ {sigma1.shape} vs {sigma2.shape}")
    if not all(np.isfinite(array).all() for array in (mu1, sigma1, mu2, sigma2)):
        return float("nan")  # samples or features holding NaN or infinity: no distance (callers report, never record)
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    product = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def reference_stats_path(fid_dataset, ref_path=None):
    if ref_path:
        return ref_path
    if fid_dataset not in REFERENCE_STATS:
        raise ValueError(f"unknown --fid_dataset {fid_dataset!r}; valid: {', '.join([*REFERENCE_STATS, DIGITS_DATASET])} "
                         "(or pass --ref_path)")
    return os.path.join("model_zoo", REFERENCE_STATS[fid_dataset][0])


def digits_features(detector, device="cpu", split="all"):
    """The detector's features (N × 64, float64) of the real digits of `split` (all 1,797 by default)."""
    if not isinstance(detector, DigitsDetector):
        raise ValueError(f"--fid_dataset {DIGITS_DATASET} needs --detector digits (its statistics are computed with "
                         "the digits classifier)")
    images, _ = load_digits(split)
    with torch.no_grad():
        return detector(detector_input(images.to(device)))


def feature_stats(features):
    """(μ, Σ) of a block of per-sample features."""
    stats = FeatureStats(features.shape[1], device=features.device)
    stats.update(features)
    return stats.mean_cov()


def digits_reference_stats(detector, device="cpu"):
    """(μ, Σ) of the detector's features on all 1,797 real digits: the FID reference for digits."""
    return feature_stats(digits_features(detector, device))


def reference_stats(fid_dataset, ref_path, detector, dim=None, device="cpu"):
    """The FID reference (μ, Σ): a statistics file, or for --fid_dataset digits computed from the data;
    checked against the detector's feature size `dim` when given."""
    if fid_dataset == DIGITS_DATASET and not ref_path:
        return digits_reference_stats(detector, device)
    if isinstance(detector, DigitsDetector) and not ref_path:
        raise ValueError(f"--detector digits measures digits, not --fid_dataset {fid_dataset}: add --fid_dataset "
                         f"{DIGITS_DATASET} (its reference is computed from the real digits), or give --ref_path "
                         "statistics computed with the digits classifier")
    entry = "fd_dinov2" if isinstance(detector, DINOv2Detector) else "fid"  # EDM2's pickles hold both
    return load_reference_stats(reference_stats_path(fid_dataset, ref_path), dim, entry)


def reference_digest(fid_dataset, ref_path, reference, detector):
    """What identifies the reference in a results row: a statistics file's arrays; statistics computed from
    data (the digits) by what they are computed from, the images and the detector's weights, not by their float
    bits (which change with the number of threads)."""
    if fid_dataset == DIGITS_DATASET and not ref_path:
        images, _ = load_digits("all")
        return digest_of_arrays([images, *detector.state_dict().values()])
    return digest_of_arrays(reference)


def reference_name(fid_dataset, ref_path):
    """What a results file calls the reference: the statistics file, or the data they are computed from."""
    if fid_dataset == DIGITS_DATASET and not ref_path:
        return "digits (all 1,797 real digits)"
    return reference_stats_path(fid_dataset, ref_path)


def load_reference_stats(path, dim=None, entry="fid"):
    """(μ, Σ) from an EDM-style reference .npz (keys mu, sigma; a path or an http(s) URL) or EDM2's .pkl (its
    `entry`: fid or fd_dinov2), checked against the detector's dim."""
    path = local_file(path, "the FID reference statistics")
    if not os.path.isfile(path):
        urls = {os.path.basename(rel): url for rel, url in REFERENCE_STATS.values()}
        hint = urls.get(os.path.basename(path))
        source = f"download {hint} to {path}" if hint else "compute it with the same detector"
        raise FileNotFoundError(f"FID reference statistics not found: {path}; {source}")
    if not os.path.isdir(path) and is_pickle_file(path):
        mu, sigma = _edm2_reference_stats(path, entry)
    elif os.path.isdir(path) or not is_zip_archive(path):
        raise ValueError(f"{path}: not a reference-statistics .npz (a numpy archive with arrays 'mu' and 'sigma') "
                         "nor EDM2's reference .pkl")
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a reference-statistics .npz with arrays 'mu' and 'sigma' ({e})") from e
    if dim is not None:
        check_stats_dimension(mu, sigma, dim, path)
    check_finite_stats(mu, sigma, path)
    check_covariance(sigma, path)
    return mu, sigma


COVARIANCE_TOLERANCE = 1e-6
"""Relative to the largest eigenvalue: the rounding a computed covariance may show below zero."""


def check_covariance(sigma, source):
    """Refuse a reference Σ that is not a covariance (not symmetric, or with clearly negative eigenvalues): the
    FID's matrix square root of such a Σ is not a distance."""
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(f"{source}: sigma has shape {sigma.shape}, not a square covariance matrix")
    scale = max(np.abs(sigma).max(), np.finfo(np.float64).tiny)
    if np.abs(sigma - sigma.T).max() > COVARIANCE_TOLERANCE * scale:
        raise ValueError(f"{source}: sigma is not symmetric, so not a covariance matrix; recompute the statistics")
    lowest, highest = (lambda values: (values[0], values[-1]))(np.linalg.eigvalsh(sigma))
    if lowest < -COVARIANCE_TOLERANCE * max(highest, scale):
        raise ValueError(f"{source}: sigma has a negative eigenvalue ({lowest:.3g}, the largest {highest:.3g}), so it "
                         "is not a covariance matrix; recompute the statistics")


def _edm2_reference_stats(path, entry="fid"):
    """(μ, Σ) of one entry of EDM2's reference statistics, a pickle of plain dicts {'fid': {'mu', 'sigma'},
    'fd_dinov2': {...}} ('fid': Inception's features, 'fd_dinov2': DINOv2's), read without running anything in it."""
    try:
        data = read_restricted_pickle(path)
        mu, sigma = (np.asarray(data[entry][key], dtype=np.float64) for key in ("mu", "sigma"))
    except (EDMPickleError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not EDM2's reference statistics with a {entry!r} entry (a pickle of "
                         f"{{'{entry}': {{'mu', 'sigma'}}}}; {e})") from e
    return mu, sigma


def check_stats_dimension(mu, sigma, dim, source):
    """Refuse reference statistics of another feature size than the detector's."""
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"{source}: statistics with μ of shape {tuple(mu.shape)} and Σ of shape {tuple(sigma.shape)} "
                         f"do not fit the detector's {dim} features (μ of ({dim},) and Σ of ({dim}, {dim}) expected; "
                         "were they computed with another detector?)")


def check_finite_stats(mu, sigma, source):
    """Refuse statistics holding NaN or infinite values: every FID against them would be NaN."""
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{source}: the statistics hold NaN or infinite values; recompute them (no FID is computed "
                         "or recorded against them)")


def save_reference_stats(path, mu, sigma):
    with atomic_output(path) as tmp:
        np.savez(tmp, mu=mu, sigma=sigma)
