"""The real-data case: scikit-learn's handwritten digits, and a small classifier that plays
Inception's part for them.

Data: the 1,797 greyscale 8×8 digits of `sklearn.datasets.load_digits` (UCI's optical-recognition
set, 17 grey levels 0–16, 10 classes) ship inside scikit-learn's wheel, so nothing is downloaded.
They are used at their native 8×8 (upsampling to 16×16 would make every network call four times
dearer on the CPU the quickstart runs on, for no information) and scaled to [−1, 1]. A fixed split
(`SPLIT_SEED`) holds out `HELD_OUT` of them: the teacher and the classifier learn from the rest.

Detector: `DigitsClassifier`, a small CNN. Its penultimate features are the FID feature space for
digits ("digit FID"), and its decisions give the *conditional accuracy* of a class-conditional
generator: the share of samples classified as the label they were generated for.
"""

import torch
import torch.nn.functional as F

from .files import ModelFileError, atomic_torch_save, read_torch_file

NUM_CLASSES = 10
RESOLUTION = 8
CHANNELS = 1
GREY_LEVELS = 16  # pixel values 0..16
HELD_OUT = 360
SPLIT_SEED = 0
FEATURE_DIM = 64
DIGITS_EXTRA_HINT = "pip install -e '.[digits]' (scikit-learn ships the digits)"

DIGITS_NETWORK_CONFIG = dict(img_resolution=RESOLUTION, img_channels=CHANNELS, label_dim=NUM_CLASSES,
                             model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=2,
                             attn_resolutions=[4], dropout=0.1, augment_dim=0, embedding_type="positional",
                             encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                             resample_filter=[1, 1])
"""EDMPrecond keywords of the digits teacher (class-conditional DDPM++ at 8×8)."""


class DigitsUnavailableError(ImportError):
    pass


def load_digits(split="all"):
    """(images float32 [N, 1, 8, 8] in [−1, 1], labels int64 [N]) of 'train', 'held_out' or 'all'."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DigitsUnavailableError(f"the digits data set needs scikit-learn: {DIGITS_EXTRA_HINT}") from None
    data = sklearn_digits()
    images = torch.as_tensor(data.images, dtype=torch.float32).reshape(-1, CHANNELS, RESOLUTION, RESOLUTION)
    images = images / (GREY_LEVELS / 2) - 1
    labels = torch.as_tensor(data.target, dtype=torch.int64)
    if split == "all":
        return images, labels
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    parts = {"held_out": order[:HELD_OUT], "train": order[HELD_OUT:]}
    if split not in parts:
        raise ValueError(f"unknown digits split {split!r}; valid: train, held_out, all")
    return images[parts[split]], labels[parts[split]]


def upsampling_matrix(size):
    """The `size`×8 matrix A of `at_size`'s bilinear upsampling along one axis (it is separable: an
    8×8 image X becomes A X Aᵀ)."""
    basis = torch.eye(RESOLUTION, dtype=torch.float64)[:, None, :]
    return F.interpolate(basis, size=size, mode="linear", align_corners=False)[:, 0, :].T


def at_size(images, size, channels):
    """Digits images at `size`×`size` (bilinear upsampling: values stay in [−1, 1]) with the grey channel
    in each of `channels` channels: the data of a teacher at another resolution, or with RGB input."""
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.expand(-1, channels, -1, -1).contiguous()


def from_size(images):
    """`at_size` undone: the channels averaged into one, then the 8×8 image whose bilinear upsampling is
    nearest in least squares (A⁺ Y A⁺ᵀ, A⁺ the pseudo-inverse of `upsampling_matrix`). Exact on
    upsampled digits, so larger samples are judged against the real 8×8 digits without a blur of
    their own; averaging blocks instead would blur the upsampled digits once more (digit FID 141
    for the real digits themselves at 32×32)."""
    grey = images.to(torch.float32).mean(1, keepdim=True)
    if grey.shape[-1] == RESOLUTION:
        return grey
    inverse = torch.linalg.pinv(upsampling_matrix(grey.shape[-1])).to(grey.device, torch.float32)
    return inverse @ grey @ inverse.T


class DigitsClassifier(torch.nn.Module):
    """A small CNN on 1×8×8 images in [−1, 1]: two 3×3 convolution stages, a 64-d feature layer
    (the FID features), a linear layer to the 10 classes."""

    def __init__(self, width=32, feature_dim=FEATURE_DIM, dropout=0.2):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(CHANNELS, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(width, 2 * width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(dropout),
                                            torch.nn.Linear(2 * width * 4, feature_dim), torch.nn.ReLU())
        self.head = torch.nn.Linear(feature_dim, NUM_CLASSES)

    def embed(self, x):
        return self.features(self.conv(x))

    def forward(self, x):
        return self.head(self.embed(x))


def random_shifts(images, generator, max_shift=1):
    """Each image moved by up to `max_shift` pixels in x and y (zeros = background −1 shifted in)."""
    padded = F.pad(images, [max_shift] * 4, value=-1.0)
    shifts = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    return torch.stack([p[:, dy:dy + RESOLUTION, dx:dx + RESOLUTION] for p, (dy, dx) in zip(padded, shifts.tolist())])


def train_classifier(images, labels, steps=3000, batch_size=128, lr=2e-3, seed=0, log=print):
    """Adam with a one-cycle schedule on one-pixel random shifts of the training digits."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(labels), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(random_shifts(images[pick], generator)), labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0:
            log(f"step {step:5d}  cross-entropy {loss.item():.4f}")
    return model.eval()


def accuracy(model, images, labels):
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).to(torch.float64).mean())


def save_classifier(model, path):
    atomic_torch_save({"state_dict": model.state_dict(), "kind": "digits-classifier"}, path)


def load_classifier(path):
    data = read_torch_file(path)
    if not (isinstance(data, dict) and data.get("kind") == "digits-classifier"):
        raise ModelFileError(f"{path}: not a digits classifier (make one with scripts/train_digits_classifier.py)")
    model = DigitsClassifier()
    model.load_state_dict(data["state_dict"])
    return model.eval()
