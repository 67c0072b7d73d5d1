"""EDM2's magnitude-preserving U-Net and its preconditioning (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models"), written from the paper's equations with
EDM2's keywords, call signatures and state-dict keys, so that EDM2's released snapshots load strictly.

Magnitude preservation: every layer keeps unit expected magnitude. Convolution and linear weights
are normalised per output channel before use (and, in training mode, rewritten normalised:
*forced weight normalisation*); SiLU is divided by 0.596, its output magnitude on unit-variance
inputs; sums and concatenations are weighted so that unit-magnitude inputs give a unit-magnitude
output; the encoder normalises every pixel's channel vector. The network has no biases and no
normalisation layers besides these.
"""

import math

import torch
import torch.nn.functional as F

from .edm_precond import edm_scalings, precond_inputs
from .layers import attention, check_attention_implementation

NORM_EPS = 1e-4
SILU_MAGNITUDE = 0.596
"""The output magnitude of SiLU for unit-variance Gaussian inputs."""


def normalize(x, dim=None, eps=NORM_EPS):
    """x divided by its RMS over `dim` (every dimension but the first by default), eps added to the RMS."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    rms = norm * math.sqrt(norm.numel() / x.numel()) + eps
    return x / rms.to(x.dtype)


def mp_silu(x):
    return F.silu(x) / SILU_MAGNITUDE


def mp_sum(a, b, t=0.5):
    """(1 − t)·a + t·b, scaled so that unit-magnitude inputs give a unit-magnitude sum."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a, b, dim=1, t=0.5):
    """Concatenation along `dim` with the two parts weighted (1 − t) : t, the whole of unit magnitude."""
    size_a, size_b = a.shape[dim], b.shape[dim]
    scale = math.sqrt((size_a + size_b) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([a * (scale / math.sqrt(size_a) * (1 - t)), b * (scale / math.sqrt(size_b) * t)], dim=dim)


def resample(x, kernel=(1, 1), mode="keep"):
    """2× down- or upsampling of every channel with the separable filter `kernel` (EDM2's default
    [1, 1]: 2×2 averaging down, nearest-neighbour up)."""
    if mode == "keep":
        return x
    taps = torch.as_tensor(kernel, dtype=torch.float32)
    if taps.ndim != 1 or len(taps) % 2:
        raise ValueError(f"resample_filter must be an even number of taps, got {list(kernel)}")
    taps = taps / taps.sum()
    channels, padding = x.shape[1], (len(taps) - 1) // 2
    weight = torch.outer(taps, taps).to(x.dtype).to(x.device)[None, None].repeat(channels, 1, 1, 1)
    if mode == "down":
        return F.conv2d(x, weight, groups=channels, stride=2, padding=padding)
    if mode == "up":
        return F.conv_transpose2d(x, weight * 4, groups=channels, stride=2, padding=padding)
    raise ValueError(f"unknown resample mode {mode!r}")


class MPFourier(torch.nn.Module):
    """Fourier features √2·cos(2π(f·x + φ)) of a scalar per sample, with fixed random f and φ."""

    def __init__(self, num_channels, bandwidth=1):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x):
        y = x.to(torch.float32).outer(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(torch.nn.Module):
    """A convolution (kernel [k, k]) or linear layer (kernel []) whose weight is used normalised per output
    channel and scaled by gain / √fan-in; in training mode the stored weight is rewritten normalised."""

    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x, gain=1):
        weight = self.weight.to(torch.float32)
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(weight))  # forced weight normalisation
        weight = normalize(weight)
        weight = (weight * (gain / math.sqrt(weight[0].numel()))).to(x.dtype)
        if weight.ndim == 2:
            return x @ weight.t()
        return F.conv2d(x, weight, padding=weight.shape[-1] // 2)


class Block(torch.nn.Module):
    """EDM2's residual block: (resample, [skip projection], pixel norm for the encoder), two convolutions
    modulated by the embedding, a magnitude-preserving residual sum, optional self-attention."""

    def __init__(self, in_channels, out_channels, emb_channels, flavor="enc", resample_mode="keep",
                 resample_filter=(1, 1), attention=False, channels_per_head=64, dropout=0, res_balance=0.3,
                 attn_balance=0.3, clip_act=256, attention_implementation="sdpa"):
        super().__init__()
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = resample_filter
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.attention_implementation = check_attention_implementation(attention_implementation)
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, [3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, [])
        self.conv_res1 = MPConv(out_channels, out_channels, [3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, [1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, [1, 1]) if self.num_heads else None

    def forward(self, x, emb):
        x = resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # every pixel's channel vector
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clip(-self.clip_act, self.clip_act)
        return x

    def _attention(self, x):
        batch, channels, height, width = x.shape
        qkv = self.attn_qkv(x).reshape(batch, self.num_heads, -1, 3, height * width)
        q, k, v = normalize(qkv, dim=2).unbind(3)  # [batch, heads, channels per head, positions]
        heads = batch * self.num_heads
        out = attention(q.reshape(heads, -1, height * width), k.reshape(heads, -1, height * width),
                        v.reshape(heads, -1, height * width), self.attention_implementation)
        return self.attn_proj(out.reshape(batch, channels, height, width))


class EDM2UNet(torch.nn.Module):
    """EDM2's U-Net F(x, noise_labels, class_labels) (EDM2 calls it UNet; its state-dict keys)."""

    def __init__(self, img_resolution, img_channels, label_dim, model_channels=192, channel_mult=(1, 2, 3, 4),
                 channel_mult_noise=None, channel_mult_emb=None, num_blocks=3, attn_resolutions=(16, 8),
                 label_balance=0.5, concat_balance=0.5, attention_implementation="sdpa", **block_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        block_kwargs["attention_implementation"] = attention_implementation
        level_channels = [model_channels * m for m in channel_mult]
        noise_channels = model_channels * channel_mult_noise if channel_mult_noise is not None else level_channels[0]
        emb_channels = model_channels * channel_mult_emb if channel_mult_emb is not None else max(level_channels)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = torch.nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(noise_channels)
        self.emb_noise = MPConv(noise_channels, emb_channels, [])
        self.emb_label = MPConv(label_dim, emb_channels, []) if label_dim else None

        self.enc = torch.nn.ModuleDict()
        channels = img_channels + 1  # the input and a constant channel of ones
        for level, width in enumerate(level_channels):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(channels, width, [3, 3])
                channels = width
            else:
                self.enc[f"{res}x{res}_down"] = Block(channels, channels, emb_channels, flavor="enc",
                                                      resample_mode="down", **block_kwargs)
            for index in range(num_blocks):
                self.enc[f"{res}x{res}_block{index}"] = Block(channels, width, emb_channels, flavor="enc",
                                                              attention=res in attn_resolutions, **block_kwargs)
                channels = width

        self.dec = torch.nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, width in reversed(list(enumerate(level_channels))):
            res = img_resolution >> level
            if level == len(level_channels) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(channels, channels, emb_channels, flavor="dec", attention=True,
                                                     **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(channels, channels, emb_channels, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(channels, channels, emb_channels, flavor="dec", resample_mode="up",
                                                    **block_kwargs)
            for index in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{index}"] = Block(channels + skips.pop(), width, emb_channels,
                                                              flavor="dec", attention=res in attn_resolutions,
                                                              **block_kwargs)
                channels = width
        self.out_conv = MPConv(channels, img_channels, [3, 3])

    def forward(self, x, noise_labels, class_labels=None):
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


PRECOND_KEYWORDS = ("use_fp16", "sigma_data", "logvar_channels")
"""The keywords of EDM2Precond that are not the U-Net's."""


class EDM2Precond(torch.nn.Module):
    """EDM2's denoiser D(x; σ) = c_skip·x + c_out·F(c_in·x, ln(σ)/4, labels) (EDM's preconditioning) with
    its uncertainty head: the log-variance of the loss at σ (`return_logvar=True`), used by EDM2's training
    loss only."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=True, sigma_data=0.5, logvar_channels=128,
                 attention_implementation="sdpa", **unet_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, sigma_data
        self.unet = EDM2UNet(img_resolution, img_channels, label_dim, attention_implementation=attention_implementation,
                             **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, [])

    def forward(self, x, sigma, class_labels=None, force_fp32=False, return_logvar=False):
        x, sigma, class_labels = precond_inputs(x, sigma, class_labels, self.label_dim)
        dtype = torch.float16 if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        c_noise = c_noise.flatten()
        raw = self.unet((c_in * x).to(dtype), c_noise.expand(x.shape[0]),
                        None if class_labels is None else class_labels.expand(x.shape[0], -1))
        denoised = c_skip * x + c_out * raw.to(torch.float32)
        if return_logvar:
            return denoised, self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return denoised


def unet_from_config(config, attention_implementation="sdpa"):
    """The raw U-Net that an EDM2Precond with these keywords wraps (the student's network)."""
    kwargs = {k: v for k, v in config.items() if k not in PRECOND_KEYWORDS}
    return EDM2UNet(attention_implementation=attention_implementation, **kwargs)
