"""The PID loss: the student's trajectory must satisfy the teacher's
probability-flow ODE, dx/dt = (x − D(x; t))/t, i.e. x − t·dx/dt = D(x; t).

With the derivative a finite difference between two noise levels of the ρ-grid,

    implied(z, t) = x_θ(z,t) − t·(x_θ(z,t) − x_θ(z,t'))/(t − t')
    loss(z, t)    = λ(t) · d(implied(z, t), sg[D(x_θ(z,t); t)])

gradients flow through both student evaluations and never into the teacher.

Also here: EDM's denoising objective, which makes teachers (Karras et al. 2022, eq. 8 with the
loss weight of Table 1): λ(σ)·‖D(y + σn; σ) − y‖², ln σ ~ N(P_mean, P_std²).
"""

import os

import torch
import torch.nn.functional as F

from .checkpoint import read_torch_file
from .download import local_file
from .files import weight_search_dirs
from .schedules import SIGMA_DATA

LPIPS_SIZE = 224
"""Images smaller than `LPIPS_RESIZE_BELOW` are resized (bilinear) to this side before LPIPS."""
LPIPS_RESIZE_BELOW = 256


WEIGHTINGS = {
    "snr": lambda snr, sigma_data: snr,
    "snr+1": lambda snr, sigma_data: snr + 1,
    "karras": lambda snr, sigma_data: snr + 1.0 / sigma_data ** 2,
    "truncated-snr": lambda snr, sigma_data: torch.clamp(snr, min=1.0),
    "uniform": lambda snr, sigma_data: torch.ones_like(snr),
}
"""λ(t) for the official `--weight_schedule` names, as functions of snr = t⁻² and σ_data."""


def weightings(weight_schedule, t, sigma_data=SIGMA_DATA):
    """λ(t) per sample."""
    if weight_schedule not in WEIGHTINGS:
        raise ValueError(f"unknown weight_schedule {weight_schedule!r}; valid: {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[weight_schedule](t ** -2, sigma_data)


LOSS_NORMS = ("l1", "l2", "lpips")
EDM_P_MEAN = -1.2
EDM_P_STD = 1.2


def edm_loss_weight(sigma, sigma_data=SIGMA_DATA):
    """EDM's λ(σ) = (σ² + σ_d²)/(σ·σ_d)²: the inverse of the denoiser's error variance at init."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def edm_training_sigmas(log_normal_draws, p_mean=EDM_P_MEAN, p_std=EDM_P_STD):
    """σ = exp(P_mean + P_std·n) for standard-normal draws n."""
    return (p_mean + p_std * log_normal_draws).exp()


def edm_denoising_loss(denoiser, images, sigma, noise, class_labels=None, sigma_data=SIGMA_DATA):
    """Per-sample EDM loss λ(σ)·mean over C,H,W of (D(y + σ·n; σ) − y)² for clean images y, noise
    levels σ [N] and unit noise n."""
    noisy = images + sigma.reshape(-1, 1, 1, 1) * noise
    denoised = denoiser(noisy, sigma, class_labels)
    return edm_loss_weight(sigma, sigma_data) * _mean_over_pixels((denoised.to(images.dtype) - images) ** 2)


def implied_denoised(x_t, x_t_next, t, t_next):
    """x − t·dx/dt with a finite-difference derivative: the denoised image the student's own
    trajectory implies. Per-sample t, t_next broadcast over C, H, W."""
    t = t.reshape(-1, 1, 1, 1)
    t_next = t_next.reshape(-1, 1, 1, 1)
    slope = (x_t - x_t_next) / (t - t_next)
    return x_t - t * slope


def _mean_over_pixels(x):
    return x.flatten(1).mean(dim=1)


def lpips_distance(lpips, a, b):
    """The official PID wrapper around LPIPS: bilinear resize to 224 when smaller than 256, map
    [−1, 1] → [0, 1], per-sample LPIPS."""
    if a.shape[-1] < LPIPS_RESIZE_BELOW:
        a = F.interpolate(a, size=(LPIPS_SIZE, LPIPS_SIZE), mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=(LPIPS_SIZE, LPIPS_SIZE), mode="bilinear", align_corners=False)
    return lpips((a + 1) / 2, (b + 1) / 2)


def pid_loss(student, teacher, z, t, t_next, class_labels=None, loss_norm="l2", weight_schedule="uniform",
             lpips=None, batched_student=False):
    """Per-sample PID loss [N] for noise z = σ_max·ε at noise levels t and partner levels t_next.

    `batched_student` evaluates x_θ(z, t) and x_θ(z, t_next) in one call on a doubled batch (the
    same function: every layer acts per sample; faster on GPUs)."""
    if loss_norm not in LOSS_NORMS:
        raise ValueError(f"unknown loss_norm {loss_norm!r}; valid: {', '.join(LOSS_NORMS)}")
    if loss_norm == "lpips" and lpips is None:
        raise ValueError("loss_norm 'lpips' needs an LPIPS module: pass lpips=LPIPS(...)")
    weight = weightings(weight_schedule, t)
    if batched_student:
        labels = None if class_labels is None else torch.cat([class_labels, class_labels])
        x_t, x_t_next = student(torch.cat([z, z]), torch.cat([t, t_next]), labels).chunk(2)
    else:
        x_t = student(z, t, class_labels)
        x_t_next = student(z, t_next, class_labels)
    implied = implied_denoised(x_t, x_t_next, t, t_next)
    with torch.no_grad():
        target = teacher(x_t.detach(), t, class_labels).to(implied.dtype)
    if loss_norm == "l2":
        distance = _mean_over_pixels((implied - target) ** 2)
    elif loss_norm == "l1":
        distance = _mean_over_pixels((implied - target).abs())
    else:
        distance = lpips_distance(lpips, implied, target)
    return weight * distance


# ---------------------------------------------------------------------------------------------
# LPIPS (Zhang et al. 2018) exactly as piq's LPIPS(replace_pooling=True, reduction="none").

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


def _find_weights(candidates):
    for folder in weight_search_dirs():
        for name in candidates:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


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
            vgg_weights = _find_weights([VGG16_WEIGHTS_FILE])
        if lin_weights is None:
            lin_weights = _find_weights([LPIPS_WEIGHTS_FILE, LPIPS_PACKAGE_WEIGHTS_FILE])
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
