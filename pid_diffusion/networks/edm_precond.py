"""EDM's preconditioned denoiser D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, ln(σ)/4)."""

import torch

from .unets import DhariwalUNet, SongUNet

MODEL_TYPES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def edm_scalings(sigma, sigma_data):
    """EDM's (c_skip, c_out, c_in, c_noise) for noise levels `sigma` (Karras et al. 2022, Table 1)."""
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def precond_inputs(x, sigma, class_labels, label_dim):
    """A preconditioned denoiser's inputs as EDM and EDM2 take them: x in float32, σ as [N or 1, 1, 1, 1],
    one-hot labels [N or 1, label_dim] (zeros when none are given; None for an unconditional network)."""
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
    if label_dim == 0:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, label_dim], device=x.device)
    else:
        class_labels = class_labels.to(torch.float32).reshape(-1, label_dim)
    return x, sigma, class_labels


PRECOND_KEYS = ("use_fp16", "sigma_min", "sigma_max", "sigma_data")


def network_from_config(config, attention_implementation="sdpa"):
    """The raw network (no preconditioning) that an EDMPrecond with these keywords wraps; the attention
    implementation (layers.ATTENTION_IMPLEMENTATIONS) is a choice of speed, not part of the config."""
    config = {k: v for k, v in config.items() if k not in PRECOND_KEYS}
    model_type = config.pop("model_type", "DhariwalUNet")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not supported; valid: {', '.join(MODEL_TYPES)}")
    channels = config.pop("img_channels")
    return MODEL_TYPES[model_type](img_resolution=config.pop("img_resolution"), in_channels=channels,
                                   out_channels=channels, attention_implementation=attention_implementation,
                                   **config)


class EDMPrecond(torch.nn.Module):
    """The EDM teacher: keyword arguments, forward signature and state-dict keys (`model.*`) as
    in NVlabs/edm, so that EDM's network snapshots and extracted state dicts load strictly."""

    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_min=0,
                 sigma_max=float("inf"), sigma_data=0.5, model_type="DhariwalUNet", attention_implementation="sdpa",
                 **model_kwargs):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = network_from_config(dict(img_resolution=img_resolution, img_channels=img_channels,
                                              label_dim=label_dim, model_type=model_type, **model_kwargs),
                                         attention_implementation)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels = precond_inputs(x, sigma, class_labels, self.label_dim)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if use_half else torch.float32

        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        raw = self.model((c_in * x).to(dtype), c_noise.flatten().expand(x.shape[0]),
                         class_labels=None if class_labels is None else class_labels.expand(x.shape[0], -1),
                         **model_kwargs)
        return c_skip * x + c_out * raw.to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)
