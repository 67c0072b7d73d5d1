"""Analytic teachers: denoisers with an exact D(x; σ), the oracle for tests (`builtin:gmm`).

Data distribution: an isotropic Gaussian mixture in image space,
    p(x₀) = Σ_k w_k N(x₀; μ_k, s_k² I).
Noised by σ, x = x₀ + σ·n has p_σ(x) = Σ_k w_k N(x; μ_k, (s_k² + σ²) I), and the ideal denoiser
is the posterior mean
    D(x; σ) = Σ_k r_k(x) [μ_k + s_k²/(s_k² + σ²) (x − μ_k)],
    log r_k = log w_k − (d/2) log(s_k² + σ²) − ‖x − μ_k‖²/(2(s_k² + σ²)) − logsumexp(·),
computed in log space so that far-apart components never underflow.

For one component the probability-flow ODE dx/dσ = (x − D(x; σ))/σ = σ(x − μ)/(s² + σ²) has the
closed-form solution x(σ) = μ + √((s² + σ²)/(s² + σ₀²)) · (x(σ₀) − μ).
"""

import math

import torch


class GaussianMixtureDenoiser(torch.nn.Module):
    """`teacher(x, sigma, class_labels=None)` → exact D(x; σ), with EDMPrecond's call signature and
    attributes (`img_resolution`, `img_channels`, `label_dim`), so it can stand in for one.

    means: [K, C, H, W]; weights: [K] (normalised here; default uniform); stds: a number or [K]
    (the per-component standard deviation s_k of the data).
    """

    def __init__(self, means, weights=None, stds=0.0):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 4:
            raise ValueError(f"means must be [K, C, H, W], got shape {tuple(means.shape)}")
        num_components = means.shape[0]
        weights = torch.ones(num_components) if weights is None else torch.as_tensor(weights)
        weights = weights.to(torch.float64)
        if weights.shape != (num_components,) or (weights <= 0).any():
            raise ValueError(f"weights must be {num_components} positive numbers, got {weights.tolist()}")
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(num_components).clone()
        if (stds < 0).any():
            raise ValueError("component standard deviations must be non-negative")
        self.register_buffer("means", means)
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        self.register_buffer("variances", stds ** 2)
        self.img_channels, self.img_resolution = means.shape[1], means.shape[-1]
        self.label_dim = 0

    @property
    def num_components(self):
        return self.means.shape[0]

    def responsibilities(self, x, sigma):
        """Posterior component probabilities r_k(x) [N, K] and total variances s_k² + σ² [N, K]."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1, 1)
        total_var = self.variances.to(dtype) + sigma ** 2                       # [N or 1, K]
        # Differences, not cdist's ‖x‖² + ‖μ‖² − 2xμ, which cancels catastrophically at small σ.
        sq_dist = (x.flatten(1)[:, None, :] - self.means.to(dtype).flatten(1)[None]).square().sum(-1)  # [N, K]
        dim = x[0].numel()
        logits = self.log_weights.to(dtype) - 0.5 * dim * total_var.log() - sq_dist / (2 * total_var)
        return logits.softmax(dim=1), total_var.expand_as(logits)

    def forward(self, x, sigma, class_labels=None):
        dtype = torch.promote_types(x.dtype, torch.float32)
        resp, total_var = self.responsibilities(x, sigma)
        shrink = self.variances.to(dtype) / total_var                              # [N, K]
        means = self.means.to(dtype)
        # Σ_k r_k [μ_k + shrink_k (x − μ_k)] = Σ_k r_k (1 − shrink_k) μ_k + (Σ_k r_k shrink_k) x
        mean_part = torch.einsum("nk,kchw->nchw", resp * (1 - shrink), means)
        x_part = (resp * shrink).sum(dim=1).reshape(-1, 1, 1, 1) * x.to(dtype)
        return (mean_part + x_part).to(x.dtype)

    def nearest_component(self, x):
        """Index of the closest mean for each image in x [N, C, H, W]."""
        distances = (x.flatten(1).to(torch.float64)[:, None, :] - self.means.flatten(1)[None]).square().sum(-1)
        return distances.argmin(dim=1)

    def sample_data(self, num_samples, generator=None):
        """Exact draws x₀ ~ p(x₀) (float32) and their component indices."""
        components = torch.multinomial(self.log_weights.exp(), num_samples, replacement=True, generator=generator)
        noise = torch.randn((num_samples, *self.means.shape[1:]), generator=generator, dtype=torch.float64)
        x = self.means[components] + self.variances[components].sqrt().reshape(-1, 1, 1, 1) * noise
        return x.to(torch.float32), components

    def ode_solution(self, x_from, sigma_from, sigma_to):
        """The exact probability-flow ODE state at σ_to from x_from at σ_from (one component only)."""
        if self.num_components != 1:
            raise ValueError("the closed-form ODE solution exists for a single Gaussian only "
                             f"(this mixture has {self.num_components} components)")
        mean, var = self.means[0].to(x_from.dtype), float(self.variances[0])
        scale = torch.sqrt((var + torch.as_tensor(sigma_to, dtype=torch.float64) ** 2)
                           / (var + torch.as_tensor(sigma_from, dtype=torch.float64) ** 2))
        return mean + scale.reshape(-1, 1, 1, 1).to(x_from.dtype) * (x_from - mean)


def gaussian_teacher(mean, std):
    """A single isotropic Gaussian N(mean, std² I) as a teacher; `mean` is [C, H, W]."""
    return GaussianMixtureDenoiser(torch.as_tensor(mean)[None], stds=std)


def smooth_templates(num_components, resolution, channels=3, generator=None):
    """Smooth colour images in [−0.8, 0.8]: a random colour per channel times a low-frequency cosine
    pattern, reproducible from `generator`."""
    coords = torch.linspace(0, math.pi, resolution, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    templates = []
    for _ in range(num_components):
        colour = torch.rand(channels, 1, 1, generator=generator, dtype=torch.float64) * 1.6 - 0.8
        fy, fx, phase = torch.rand(3, generator=generator, dtype=torch.float64) * torch.tensor([2.0, 2.0, 2 * math.pi])
        templates.append(colour * (0.6 + 0.4 * torch.cos(fy * yy + fx * xx + phase)))
    return torch.stack(templates)


DEMO_MIXTURE = dict(num_components=8, resolution=8, channels=3, std=0.05, seed=0)
"""The built-in mixture (`builtin:gmm`): 8 smooth 3×8×8 colour templates, equal weights, std 0.05."""


def demo_mixture():
    spec = DEMO_MIXTURE
    generator = torch.Generator().manual_seed(spec["seed"])
    means = smooth_templates(spec["num_components"], spec["resolution"], spec["channels"], generator)
    return GaussianMixtureDenoiser(means, stds=spec["std"])


DEMO_NETWORK_CONFIG = dict(img_resolution=DEMO_MIXTURE["resolution"], img_channels=DEMO_MIXTURE["channels"],
                           label_dim=0, model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=2,
                           attn_resolutions=[4], dropout=0.0, augment_dim=0, embedding_type="positional",
                           encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                           resample_filter=[1, 1])
"""EDMPrecond keywords of the student that distils the analytic `builtin:gmm` teacher (from random weights)."""

BUILTIN_PREFIX = "builtin:"
BUILTIN_TEACHERS = {"gmm": (demo_mixture, DEMO_NETWORK_CONFIG)}
"""name → (analytic teacher factory, network config of a student for it), used as
`--teacher_model_path builtin:<name>`. An analytic teacher has no weights to copy: its student
starts from random weights."""


def builtin_teacher(path):
    """(teacher, student network config) for 'builtin:<name>'."""
    name = path[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_TEACHERS:
        raise ValueError(f"unknown built-in teacher {path!r}; valid: "
                         + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_TEACHERS))
    factory, network_config = BUILTIN_TEACHERS[name]
    return factory().eval().requires_grad_(False), dict(network_config)
