"""The feature detectors of FID and the metrics beside it, by --detector name (DETECTOR_LOADERS: name → loader, a new
feature space is one entry), and what they are fed.

The default is NVIDIA's TorchScript port of TF-Inception (`inception-2015-12-05.pt`), the network behind the
original's clean-fid `legacy_tensorflow` mode and EDM's `fid.py`: called as `detector(images, return_features=True)`
on float NCHW pixels in [0, 255] (it resizes to 299 itself), it returns 2048 pool features; its output layer gives
the Inception Score's class logits from the same pass. Every detector is called that way.

What the detector is fed (`feed`):
  * "float" (the original PID code): ((x + 1)/2·255) clipped, not quantised;
  * "uint8" (EDM's protocol): pixels rounded to integers first, i.e. exactly the saved PNG/npz images.
The two differ by the quantisation noise only; FIDs of a good model typically differ by a few hundredths. Compare
numbers only under the same protocol.

Other detectors: "dinov2" (FD_DINOv2: DINOv2 ViT-L/14's 1,024-d class token, as EDM2 measures it), "digits" (the
shipped digits classifier's 64-d features; it also classifies, which gives conditional accuracy) and "pixels" (raw
pixels, for toy data)."""

import dataclasses
import os

import numpy as np
import torch

from ..digits import CHANNELS, from_size, load_classifier, RESOLUTION
from ..download import local_file
from ..files import find_weight_file, read_torch_file, weight_search_dirs
from ..generate import to_pixels
from ..settings import option


INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
VGG16_FILE = "vgg16.pt"
VGG16_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
FEEDS = ("float", "uint8")
ORIGINAL_FEED, FAMILY_FEED = "float", "auto"
"""The original PID code's feed, and the default: the teacher family's (families.TeacherFamily.sampling_protocol)."""
DINOV2_MODEL, DINOV2_HUB, DINOV2_FEATURES, DINOV2_SIDE = "dinov2_vitl14", "facebookresearch/dinov2", 1024, 224
"""FD_DINOv2's network (EDM2's calculate_metrics.py): DINOv2 ViT-L/14 through torch.hub, its 1,024-d class token, on
images resized to 224 × 224."""
DINOV2_RESIZES = ("torch", "pil")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_CLASSIFIER_FILE = "digits-classifier.pt"


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
                                        "vgg16 (NVIDIA's TorchScript VGG16: StyleGAN's precision/recall space), digits "
                                        "(the digits classifier's features; also gives class accuracy) or pixels (raw "
                                        "pixels)")
    detector_path: str = option("", "path or http(s) URL of the detector's file: inception-2015-12-05.pt, vgg16.pt, "
                                    "digits-classifier.pt, DINOv2's weights (default: model_zoo/, torch hub cache)")
    dinov2_repo: str = option("", "DINOv2 (--detector dinov2, --metrics fd_dinov2): a local checkout of "
                                  "facebookresearch/dinov2 (torch.hub, source='local'), with its weights file "
                                  "(dinov2_vitl14_pretrain.pth) as --dinov2_path; default: torch.hub fetches both "
                                  "(network)")
    dinov2_path: str = option("", "DINOv2's weights file beside --dinov2_repo (--detector dinov2 also takes it as "
                                  "--detector_path)")
    dinov2_resize: str = option("torch", "DINOv2: resizing to 224 by torch (bicubic with antialiasing, not "
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


def load_dinov2(path, device, dinov2_repo="", dinov2_resize="torch", dinov2_path="", **options):
    """FD_DINOv2's detector: DINOv2 ViT-L/14 (1,024-d class tokens of images resized to 224) from a local
    torch.hub checkout `dinov2_repo` with its weights file `path`, or through torch.hub's network fetch of both
    when neither is given (`dinov2_path` is the weights file when `path` is not given)."""
    path = path or dinov2_path
    if bool(dinov2_repo) != bool(path):
        raise ValueError("DINOv2 from files needs both --dinov2_repo (a checkout of "
                         f"{DINOV2_HUB}) and --dinov2_path (its {DINOV2_MODEL} weights); give both, or neither "
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
    return _load_torchscript_detector("Inception detector", INCEPTION_FILE, INCEPTION_URL, path, device)


def load_vgg16(path, device, **options):
    """NVIDIA's TorchScript VGG16 (StyleGAN's precision/recall space: 4,096-d fc2 features of images it resizes to
    224): `path`, else ./model_zoo/, else torch's hub cache."""
    return _load_torchscript_detector("VGG16 detector", VGG16_FILE, VGG16_URL, path, device)


def _load_torchscript_detector(what, file_name, url, path, device):
    found, where = _find_file(file_name, local_file(path, f"the {what}"))
    if found is None:
        raise FileNotFoundError(f"{what} {file_name} not found at {where}. Download {url} into model_zoo/ (or pass "
                                "--detector_path), or use --detector pixels")
    try:
        detector = torch.jit.load(found, map_location=device)
    except Exception as e:  # torch raises RuntimeError / ValueError for non-TorchScript files
        raise ValueError(f"{found} is not a TorchScript detector ({type(e).__name__}: {e})") from e
    return detector.eval()


DETECTOR_LOADERS = {"inception": load_inception, "dinov2": load_dinov2, "vgg16": load_vgg16,
                    "digits": load_digits_detector, "pixels": load_pixels}
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


def load_configured_detector(settings, device, name=None):
    """The detector `name` (default: settings.detector) with the detector options of `settings` (the parsed flags of a
    script, or a training config): --detector_path is the file of --detector only."""
    name = name or settings.detector
    path = settings.detector_path if name == settings.detector else ""
    return load_detector(name, path or None, device, dinov2_repo=settings.dinov2_repo, dinov2_path=settings.dinov2_path,
                         dinov2_resize=settings.dinov2_resize)


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


class DigitsDetector(torch.nn.Module):
    """The FID detector for digits, called like the Inception detector: `detector(pixels,
    return_features=True)` on float NCHW pixels in [0, 255] → the classifier's 64-d features
    (float64). `classify(pixels)` → predicted classes."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)

    def _scaled(self, pixels):
        """Pixels as the classifier sees digits: 1×8×8 in [−1, 1], larger sides and three channels
        brought back by `from_size`."""
        if (pixels.ndim != 4 or pixels.shape[1] not in (CHANNELS, 3) or pixels.shape[2] != pixels.shape[3]
                or pixels.shape[-1] % RESOLUTION):
            raise ValueError(f"the digits detector expects square 1- or 3-channel images whose side is a multiple of "
                             f"{RESOLUTION}, as the digits teachers make; got images of shape {tuple(pixels.shape[1:])}")
        return from_size(pixels.to(torch.float32) / 127.5 - 1)

    def input_note(self, image_shape):
        """What the detector makes of images of `image_shape` (C, H, W) other than 1×8×8 ('' for those)."""
        if tuple(image_shape) == (CHANNELS, RESOLUTION, RESOLUTION):
            return ""
        return (f"the digits detector judges these {'×'.join(map(str, image_shape))} images as the grey 8×8 digits they "
                "upsample (channels averaged, the bilinear upsampling undone): the shapes train_teacher.py's "
                "--image_size/--image_channels give digits teachers, accepted by design")

    def forward(self, pixels, return_features=True):
        return self.classifier.embed(self._scaled(pixels)).to(torch.float64)

    def classify(self, pixels):
        return self.classifier(self._scaled(pixels)).argmax(1)

    def logits(self, pixels):
        """The classifier's 10 class logits (float64): their softmax gives the digit Inception Score."""
        return self.classifier(self._scaled(pixels)).to(torch.float64)
