"""Analytic teachers: denoisers with an exact D(x; σ), the oracle for tests and the demo teacher.

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
