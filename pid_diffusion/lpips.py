"""LPIPS (Zhang et al. 2018), the numbers of piq's `LPIPS(replace_pooling=True, reduction="none")`:
VGG16 features (average pooling) at five taps, unit-normalised over channels, squared differences
weighted by learned per-channel weights, averaged over positions and summed over taps.

The weights are files: torchvision's VGG16 and piq's linear weights (or the lpips package's
`vgg.pth`), found in ./model_zoo, then torch hub's cache, or given as paths or URLs.
"""

import os

import torch

from .download import local_file
from .files import find_weight_file, read_torch_file


VGG16_WEIGHTS_FILE = "vgg16-397923af.pth"
VGG16_WEIGHTS_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LPIPS_WEIGHTS_FILE = "lpips_weights.pt"
LPIPS_WEIGHTS_URL = ("https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/"
                     "v0.4.0/lpips_weights.pt")
LPIPS_PACKAGE_WEIGHTS_FILE = "vgg.pth"
LPIPS_PACKAGE_WEIGHTS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_NORM_EPS = 1e-10

# VGG16's feature stack up to relu5_3: channel widths of its 13 convolutions, 'P' = 2×2 pooling
# (average pooling, as piq's replace_pooling=True). Indices follow torchvision's vgg16().features.
_VGG16_PLAN = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def _vgg16_features():
    layers, channels = [], 3
    for item in _VGG16_PLAN:
        if item == "P":
            layers.append(torch.nn.AvgPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch.nn.Conv2d(channels, item, kernel_size=3, padding=1), torch.nn.ReLU()]
            channels = item
    return torch.nn.Sequential(*layers)


def _load_vgg_state(vgg_weights):
    if isinstance(vgg_weights, dict):
        state = vgg_weights
    else:
        state = read_torch_file(vgg_weights)
    # torchvision's full VGG16 state dict has keys 'features.N.weight' (and 'classifier.*').
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return features or state


def _load_lin_weights(lin_weights):
    data = lin_weights
    if not isinstance(lin_weights, (list, tuple, dict)):
        data = read_torch_file(lin_weights)
    if isinstance(data, dict):  # the lpips package's vgg.pth: lin{k}.model.1.weight
        keys = [f"lin{k}.model.1.weight" for k in range(len(LPIPS_TAPS))]
        if not all(k in data for k in keys):
            raise ValueError(f"LPIPS linear weights: expected keys {keys}, found {sorted(data)[:8]}")
        data = [data[k] for k in keys]
    data = [torch.as_tensor(w, dtype=torch.float32).reshape(1, -1, 1, 1) for w in data]
    if len(data) != len(LPIPS_TAPS):
        raise ValueError(f"LPIPS linear weights: expected {len(LPIPS_TAPS)} tensors, got {len(data)}")
    return data


class LPIPS(torch.nn.Module):
    """`lpips(x, y)` → per-sample LPIPS [N] for images in [0, 1], the numbers of piq's
    `LPIPS(replace_pooling=True, reduction="none")`.

    vgg_weights: path to (or dict of) torchvision's VGG16 state dict (`vgg16-397923af.pth`);
    lin_weights: path to (or list of) the five linear weights in piq's `lpips_weights.pt` layout,
    or the lpips package's `vgg.pth`. Paths may be http(s) URLs (fetched once into torch's hub cache);
    None looks in ./model_zoo then torch's hub cache.
    VGG is frozen; gradients flow to the inputs.
    """

    def __init__(self, vgg_weights=None, lin_weights=None):
        super().__init__()
        if isinstance(vgg_weights, str):
            vgg_weights = local_file(vgg_weights, "the LPIPS VGG16 weights")
        if isinstance(lin_weights, str):
            lin_weights = local_file(lin_weights, "the LPIPS linear weights")
        if vgg_weights is None:
            vgg_weights = find_weight_file([VGG16_WEIGHTS_FILE])
        if lin_weights is None:
            lin_weights = find_weight_file([LPIPS_WEIGHTS_FILE, LPIPS_PACKAGE_WEIGHTS_FILE])
        missing = []
        if vgg_weights is None:
            missing.append(f"{VGG16_WEIGHTS_FILE} (torchvision VGG16, {VGG16_WEIGHTS_URL})")
        if lin_weights is None:
            missing.append(f"{LPIPS_WEIGHTS_FILE} (piq's LPIPS weights, {LPIPS_WEIGHTS_URL}; or the lpips "
                           f"package's {LPIPS_PACKAGE_WEIGHTS_FILE}, {LPIPS_PACKAGE_WEIGHTS_URL})")
        if missing:
            raise FileNotFoundError(
                "LPIPS weights not found: " + "; ".join(missing) + ". Put them in model_zoo/ or "
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}, or pass their paths, or use --loss_norm l2")
        self.features = _vgg16_features()
        vgg_state = _load_vgg_state(vgg_weights)
        try:
            self.features.load_state_dict(vgg_state, strict=False)
        except RuntimeError as e:
            raise ValueError(f"VGG16 weights {vgg_weights!r} do not fit VGG16: {e}") from e
        expected = {k for k in self.features.state_dict()}
        if not expected <= set(vgg_state):
            raise ValueError(f"VGG16 weights lack {sorted(expected - set(vgg_state))[:4]}: is this "
                             f"torchvision's {VGG16_WEIGHTS_FILE}?")
        self.features.requires_grad_(False).eval()
        for k, w in enumerate(_load_lin_weights(lin_weights)):
            self.register_buffer(f"lin{k}", w)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    def train(self, mode=True):  # the feature extractor stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def _taps(self, x):
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LPIPS_TAPS:
                taps.append(x / (x.square().sum(dim=1, keepdim=True).sqrt() + FEATURE_NORM_EPS))
        return taps

    def forward(self, x, y):
        if y.requires_grad:  # gradients to both images: one VGG pass over both
            taps = [tap.chunk(2) for tap in self._taps(torch.cat([x, y]))]
        else:  # the PID target: no backward through VGG for it
            with torch.no_grad():
                y_taps = self._taps(y)
            taps = list(zip(self._taps(x), y_taps))
        total = 0
        for k, (fx, fy) in enumerate(taps):
            total = total + ((fx - fy) ** 2 * getattr(self, f"lin{k}").to(fx.dtype)).mean(dim=(2, 3)).sum(dim=1)
        return total
