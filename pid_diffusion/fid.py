"""Fréchet Inception Distance: detector loading, streaming feature statistics, reference statistics.

The detector is NVIDIA's TorchScript port of TF-Inception (`inception-2015-12-05.pt`), the network
behind the original's clean-fid `legacy_tensorflow` mode and EDM's `fid.py`: called as
`detector(images, return_features=True)` on float NCHW pixels in [0, 255] (it resizes to 299
itself), it returns 2048 pool features.

What the detector is fed (`feed`):
  * "float" (default, the original PID code): ((x + 1)/2·255) clipped, not quantised;
  * "uint8" (EDM's protocol): pixels rounded to integers first, i.e. exactly the saved PNG/npz images.
The two differ by the quantisation noise only; FIDs of a good model typically differ by a few
hundredths. Compare numbers only under the same protocol.

Other detectors: "digits" (pid_diffusion.digits: the shipped digits classifier's 64-d features;
its reference statistics are those of the real digits, computed here, and it also classifies, which
gives conditional accuracy) and "pixels" (raw pixels, for toy data).
"""

import dataclasses
import os
import zipfile

import numpy as np
import torch

from . import dist
from .download import local_file
from .edm_pickle import EDMPickleError, is_pickle_file, read_restricted_pickle
from .digits import DigitsDetector, load_classifier, load_digits
from .files import (atomic_output, digest_of_arrays, find_weight_file, is_zip_archive, read_torch_file,
                    weight_search_dirs)
from .generate import to_pixels
from .settings import option

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
REFERENCE_STATS = {
    "cifar10": ("stats/cifar10-32x32.npz", "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"),
    "imagenet": ("stats/imagenet-64x64.npz", "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz"),
    "edm2-img64": ("stats/img64.pkl", "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/img64.pkl"),
    "edm2-img512": ("stats/img512.pkl", "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/img512.pkl"),
}
"""--fid_dataset → (file under model_zoo/, where to download it): EDM's .npz files, and EDM2's .pkl files (the
statistics EDM2's published FIDs are measured against)."""
FEEDS = ("float", "uint8")
ORIGINAL_FEED, FAMILY_FEED = "float", "auto"
"""The original PID code's feed, and the default: the teacher family's (families.TeacherFamily.sampling_protocol)."""
DINOV2_MODEL, DINOV2_HUB, DINOV2_FEATURES, DINOV2_SIDE = "dinov2_vitl14", "facebookresearch/dinov2", 1024, 224
"""FD_DINOv2's network (EDM2's calculate_metrics.py): DINOv2 ViT-L/14 through torch.hub, its 1,024-d class token, on
images resized to 224 × 224."""
DINOV2_RESIZES = ("torch", "pil")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_CLASSIFIER_FILE = "digits-classifier.pt"
DIGITS_DATASET = "digits"


@dataclasses.dataclass(kw_only=True)
class DetectorOptions:
    """What an FID is measured with: the FID walk's options, and those of FID during training."""
    HELP_GROUP = "FID: detector and reference statistics (the walk's, and during training)"

    fid_dataset: str = option("cifar10", "reference statistics: cifar10 or imagenet (model_zoo/stats/{cifar10-32x32,"
                                         "imagenet-64x64}.npz), edm2-img64 or edm2-img512 (EDM2's model_zoo/stats/{img64,"
                                         "img512}.pkl), or digits (computed from the real digits; --detector digits)")
    ref_path: str = option("", "reference statistics .npz (mu, sigma) or EDM2 .pkl instead of --fid_dataset's; a path "
                               "or an http(s) URL")
    detector: str = option("inception", "feature detector: inception (TF-Inception TorchScript), dinov2 (DINOv2 "
                                        "ViT-L/14: FD_DINOv2, against the fd_dinov2 entry of EDM2's reference .pkl), "
                                        "digits (the digits classifier's features; also gives class accuracy) or pixels "
                                        "(raw pixels)")
    detector_path: str = option("", "path or http(s) URL of inception-2015-12-05.pt or digits-classifier.pt (default: "
                                    "model_zoo/, torch hub cache)")
    dinov2_repo: str = option("", "--detector dinov2: a local checkout of facebookresearch/dinov2 (torch.hub, "
                                  "source='local'), with --detector_path its weights file (dinov2_vitl14_pretrain.pth); "
                                  "default: torch.hub fetches both (network)")
    dinov2_resize: str = option("torch", "--detector dinov2: resizing to 224 by torch (bicubic with antialiasing, not "
                                         "re-quantised) or pil (PIL's bicubic, re-quantised): EDM2's two modes")
    detector_feed: str = option(FAMILY_FEED, "float: unquantised pixels, as the original; uint8: rounded pixels, as EDM "
                                             "and EDM2; auto: the teacher family's (float for EDM teachers and their "
                                             "students, uint8 for EDM2's)")


def resolve_feed(feed, protocol):
    """The detector feed to use: `feed`, or for FAMILY_FEED the family protocol's (ORIGINAL_FEED if it has none)."""
    return protocol.get("detector_feed", ORIGINAL_FEED) if feed == FAMILY_FEED else feed


class PixelDetector(torch.nn.Module):
    """Raw pixels scaled to [0, 1] as 'features': FID in pixel space, for tests and toy teachers
    where Inception is meaningless or unavailable."""

    def forward(self, images, return_features=True):
        return images.flatten(1).to(torch.float64) / 255.0


def _find_file(file_name, path):
    """`path` if given, else the first of the weight search folders holding `file_name`; (found or None, where)."""
    if path:
        return (path if os.path.isfile(path) else None), path
    return find_weight_file([file_name]), " or ".join(os.path.join(d, file_name) for d in weight_search_dirs())


class DINOv2Detector(torch.nn.Module):
    """FD_DINOv2's detector, called like the Inception detector: float NCHW pixels in [0, 255] (a grey image's
    channel repeated) → the network's 1,024-d class token (float64), after EDM2's preprocessing: resize to 224
    by bicubic interpolation (torch: antialiased, the floats kept; pil: PIL's bicubic on uint8, re-quantised),
    /255, ImageNet's mean and standard deviation."""

    def __init__(self, model, resize="torch"):
        super().__init__()
        if resize not in DINOV2_RESIZES:
            raise ValueError(f"--dinov2_resize {resize!r}; valid: {', '.join(DINOV2_RESIZES)}")
        self.model, self.resize = model.eval().requires_grad_(False), resize
        self.question_name = f"dinov2 (resize {resize})"  # what a results row says measured it

    def preprocess(self, pixels):
        x = pixels.to(torch.float32)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if self.resize == "pil":
            from PIL import Image

            images = to_pixels_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
            resized = [np.asarray(Image.fromarray(image).resize((DINOV2_SIDE, DINOV2_SIDE), Image.Resampling.BICUBIC))
                       for image in images]
            x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(pixels.device, torch.float32)
        else:
            x = torch.nn.functional.interpolate(x, size=(DINOV2_SIDE, DINOV2_SIDE), mode="bicubic", antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).reshape(1, 3, 1, 1)
        return (x / 255 - mean) / std

    def forward(self, pixels, return_features=True):
        features = self.model(self.preprocess(pixels))
        if features.ndim != 2 or features.shape[1] != DINOV2_FEATURES:
            raise ValueError(f"the DINOv2 network gave features of shape {tuple(features.shape)}, not N × "
                             f"{DINOV2_FEATURES:,} ({DINOV2_MODEL}'s class token): another model or repository")
        return features.to(torch.float64)


def to_pixels_uint8(pixels):
    """Float pixels in [0, 255] rounded to uint8 (what PIL resizes)."""
    return pixels.round().clamp(0, 255).to(torch.uint8)


def load_dinov2(path, device, dinov2_repo="", dinov2_resize="torch", **options):
    """FD_DINOv2's detector: DINOv2 ViT-L/14 (1,024-d class tokens of images resized to 224) from a local
    torch.hub checkout `dinov2_repo` with its weights file `path`, or through torch.hub's network fetch of both
    when neither is given."""
    if bool(dinov2_repo) != bool(path):
        raise ValueError("--detector dinov2 from files needs both --dinov2_repo (a checkout of "
                         f"{DINOV2_HUB}) and --detector_path (its {DINOV2_MODEL} weights); give both, or neither "
                         "for torch.hub's download")
    try:
        if dinov2_repo:
            if not os.path.isfile(os.path.join(dinov2_repo, "hubconf.py")):
                raise FileNotFoundError(f"--dinov2_repo {dinov2_repo}: no hubconf.py there (a checkout of "
                                        f"{DINOV2_HUB})")
            model = torch.hub.load(dinov2_repo, DINOV2_MODEL, source="local", pretrained=False)
            model.load_state_dict(read_torch_file(local_file(path, "the DINOv2 weights")))
        else:
            model = torch.hub.load(DINOV2_HUB, DINOV2_MODEL)
    except (RuntimeError, AttributeError, ImportError) as e:
        raise ValueError(f"DINOv2 could not be loaded ({type(e).__name__}: {e})") from e
    return DINOv2Detector(model, dinov2_resize).to(device)


def load_pixels(path, device, **options):
    """Raw pixels as features (PixelDetector): their count is the image's."""
    return PixelDetector().to(device)


def load_digits_detector(path, device, **options):
    """The digits classifier file: `path`, else ./model_zoo/, else torch's hub cache."""
    found, where = _find_file(DIGITS_CLASSIFIER_FILE, local_file(path, "the digits classifier"))
    if found is None:
        raise FileNotFoundError(f"digits classifier {DIGITS_CLASSIFIER_FILE} not found at {where}; it ships in "
                                "model_zoo/ (remake it with scripts/train_digits_classifier.py)")
    return DigitsDetector(load_classifier(found)).to(device)


def load_inception(path, device, **options):
    """NVIDIA's TorchScript TF-Inception: `path`, else ./model_zoo/, else torch's hub cache."""
    found, where = _find_file(INCEPTION_FILE, local_file(path, "the FID detector"))
    if found is None:
        raise FileNotFoundError(f"Inception detector {INCEPTION_FILE} not found at {where}. Download {INCEPTION_URL} into "
                                f"model_zoo/ (or pass --detector_path), or use --detector pixels")
    try:
        detector = torch.jit.load(found, map_location=device)
    except Exception as e:  # torch raises RuntimeError / ValueError for non-TorchScript files
        raise ValueError(f"{found} is not a TorchScript detector ({type(e).__name__}: {e})") from e
    return detector.eval()


DETECTOR_LOADERS = {"inception": load_inception, "dinov2": load_dinov2, "digits": load_digits_detector,
                    "pixels": load_pixels}
"""--detector → its loader (path, device, **options): a new feature space is one entry. Every detector is called
as detector(float NCHW pixels in [0, 255], return_features=True) → N × d features; the feature size is checked
against the reference statistics before any sampling."""
DETECTORS = tuple(DETECTOR_LOADERS)
"""The --detector names."""


def load_detector(name="inception", path=None, device="cpu", **options):
    """The feature detector `name` of DETECTOR_LOADERS (`options`: dinov2_repo, dinov2_resize for DINOv2)."""
    if name not in DETECTOR_LOADERS:
        raise ValueError(f"unknown detector {name!r}; valid: {', '.join(DETECTORS)}")
    return DETECTOR_LOADERS[name](path, device, **options)


def output_layer_weight(detector):
    """The class layer's weight (classes × features) of an Inception-like detector (NVIDIA's TorchScript
    Inception names it `output`: 1008 × 2048), or None."""
    layer = getattr(detector, "output", None)
    weight = getattr(layer, "weight", None)
    return weight if torch.is_tensor(weight) and weight.ndim == 2 else None


def gives_class_logits(detector):
    """Whether the detector gives class logits (for the Inception Score): the digits classifier's, or Inception's."""
    return hasattr(detector, "logits") or output_layer_weight(detector) is not None


def class_logits(detector, pixels, features):
    """A batch's class logits: the digits classifier's own, or the Inception's output layer applied to the FID
    pass's pool `features` without its bias, as StyleGAN3 computes the Inception Score (no_output_bias=True):
    one pass of the network serves FID and IS. Float64."""
    if hasattr(detector, "logits"):
        return detector.logits(pixels)
    return features.to(torch.float64) @ output_layer_weight(detector).to(features.device, torch.float64).T


def detector_input(images, feed="float"):
    """Generated images → what the detector eats: float pixels in [0, 255]. Floats in [-1, 1] are mapped
    (rounded first with the uint8 feed); uint8 pixels (a latent model's decoding) are taken as they are."""
    if feed not in FEEDS:
        raise ValueError(f"unknown detector feed {feed!r}; valid: {', '.join(FEEDS)}")
    if feed == "uint8" or images.dtype == torch.uint8:  # exactly the integer pixels of the saved images
        return to_pixels(images).to(torch.float32)
    return ((images.to(torch.float32) + 1) * 127.5).clamp(0, 255)


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
