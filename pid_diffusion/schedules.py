"""Noise-level grids (Karras et al. 2022) and the PID finite-difference partner, as pure functions.

The ρ-grid has `num_scales` points from σ_max (index 0) down to σ_min (index N−1):
    σ(i) = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ.
"""

import dataclasses
import math

import torch

from .settings import option

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
SIGMA_DATA = 0.5


@dataclasses.dataclass(kw_only=True)
class NoiseLevels:
    """The noise-level options of training and sampling."""
    HELP_GROUP = "noise levels"

    sigma_min: float = option(SIGMA_MIN, "smallest noise level σ_min of the ρ-grid (the one-step sample's level)",
                              defines_run=True)
    sigma_max: float = option(SIGMA_MAX, "largest noise level σ_max; the noise z = σ_max·ε", defines_run=True)
    rho: float = option(RHO, "curvature ρ of the noise-level grid σ_max … σ_min (PID's training grid, the teacher "
                             "samplers' steps); the original fixes it at EDM's 7", defines_run=True)


def check_noise_levels(sigma_min, sigma_max, rho=None):
    """The noise-level flags a ρ-grid needs: 0 < σ_min < σ_max < ∞ and ρ > 0 (ValueError naming the flag)."""
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"--sigma_min must be a positive number (the smallest noise level; PID and EDM use 0.002), "
                         f"got {sigma_min}")
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
        raise ValueError(f"--sigma_max must be a finite number above --sigma_min {sigma_min} (the largest noise "
                         f"level; PID and EDM use 80), got {sigma_max}")
    if rho is not None and not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"--rho must be a positive number (the grid's curvature; PID and EDM use 7), got {rho}")


def _check_num_scales(num_scales):
    if int(num_scales) != num_scales or num_scales < 2:
        raise ValueError(f"the ρ-grid needs at least 2 noise levels, got num_scales={num_scales}")


def index_to_sigma(index, num_scales, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """σ of grid index `index` (tensor or number) on the `num_scales`-point ρ-grid, in float64."""
    _check_num_scales(num_scales)
    index = torch.as_tensor(index, dtype=torch.float64)
    max_root = sigma_max ** (1 / rho)
    min_root = sigma_min ** (1 / rho)
    return (max_root + index / (num_scales - 1) * (min_root - max_root)) ** rho


def karras_sigmas(num_steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, device=None):
    """The `num_steps` noise levels σ_max … σ_min of the ρ-grid (float64, no trailing zero)."""
    if num_steps == 1:  # a one-point grid is its start, as torch.linspace(0, 1, 1) gives
        return torch.tensor([float(sigma_max)], dtype=torch.float64, device=device)
    return index_to_sigma(torch.arange(num_steps), num_steps, sigma_min, sigma_max, rho).to(device)


def append_zero(sigmas):
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def pid_partner_index(index, num_scales):
    """The finite-difference partner of each grid index: the next (smaller) σ, except at the last
    index N−1 (σ_min), whose partner is N−2 — a backward difference, as in the official code."""
    _check_num_scales(num_scales)
    index = torch.as_tensor(index)
    return torch.where(index + 1 == num_scales, index - 1, index + 1)


def pid_third_index(index, num_scales):
    """The third grid index of a three-point (second-order) difference at `index`, beside pid_partner_index's: the
    previous (larger) σ, so that the levels index − 1, index, index + 1 centre the difference; at σ_max (index 0)
    index 2 and at σ_min (N − 1) index N − 3, one-sided. Needs N ≥ 3."""
    _check_num_scales(num_scales)
    if num_scales < 3:
        raise ValueError(f"a second-order difference needs at least 3 noise levels, got num_scales={num_scales}")
    index = torch.as_tensor(index)
    return torch.where(index == 0, 2, torch.where(index + 1 == num_scales, index - 2, index - 1))


LEVEL_DISTRIBUTIONS = ("uniform", "lognormal")
"""--level_distribution: the paper's uniform draw of grid indices, or iCT's lognormal one."""
LOGNORMAL_P_MEAN, LOGNORMAL_P_STD = -1.1, 2.0
"""iCT's lognormal noise distribution (Song & Dhariwal 2023, §3.5): ln σ ~ N(−1.1, 2.0²)."""


def level_probabilities(num_scales, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, p_mean=LOGNORMAL_P_MEAN,
                        p_std=LOGNORMAL_P_STD):
    """The lognormal draw's probability of each grid index (float64 [N]): proportional to the lognormal mass of the
    interval between the index's level and its partner's (iCT's discrete lognormal), the last index sharing its
    partner's interval."""
    _check_num_scales(num_scales)
    sigmas = index_to_sigma(torch.arange(num_scales), num_scales, sigma_min, sigma_max, rho)
    cdf = torch.special.erf((sigmas.log() - p_mean) / (math.sqrt(2) * p_std))
    masses = cdf[:-1] - cdf[1:]  # interval [σ(i+1), σ(i)] for i < N − 1
    masses = torch.cat([masses, masses[-1:]])
    return masses / masses.sum()


def sample_pid_times(batch_size, num_scales, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO,
                     generator=None, device=None, distribution="uniform"):
    """The official draw: index i ~ U{0..N−1} per sample, t = σ(i), t_next = σ(partner(i)); with
    distribution="lognormal" i is drawn by level_probabilities instead.

    Returns (indices int64 [B], t float32 [B], t_next float32 [B]).
    """
    _check_num_scales(num_scales)
    if distribution not in LEVEL_DISTRIBUTIONS:
        raise ValueError(f"unknown level distribution {distribution!r}; valid: {', '.join(LEVEL_DISTRIBUTIONS)}")
    where = generator.device if generator is not None else "cpu"
    if distribution == "uniform":
        indices = torch.randint(0, num_scales, (batch_size,), generator=generator, device=where)
    else:
        probabilities = level_probabilities(num_scales, sigma_min, sigma_max, rho).to(where)
        indices = torch.multinomial(probabilities, batch_size, replacement=True, generator=generator)
    partners = pid_partner_index(indices, num_scales)
    t = index_to_sigma(indices, num_scales, sigma_min, sigma_max, rho).to(torch.float32)
    t_next = index_to_sigma(partners, num_scales, sigma_min, sigma_max, rho).to(torch.float32)
    return indices.to(device), t.to(device), t_next.to(device)


def to_d(x, sigma, denoised):
    """The probability-flow ODE slope dx/dσ = (x − D(x; σ)) / σ."""
    return (x - denoised) / sigma
