import math

import pytest
import torch

from conftest import relative_error
from pid_diffusion.teachers import GaussianMixtureDenoiser, gaussian_teacher
from tolerances import between_implementations


def _log_density(x, means, log_weights, variances, sigma):
    """log p_σ(x) of the noised mixture, written independently of the denoiser's code."""
    total = variances + sigma ** 2
    dim = x[0].numel()
    terms = []
    for k in range(means.shape[0]):
        sq = ((x - means[k]) ** 2).flatten(1).sum(1)
        terms.append(log_weights[k] - 0.5 * dim * torch.log(2 * math.pi * total[k]) - sq / (2 * total[k]))
    return torch.logsumexp(torch.stack(terms, 1), 1)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 12.0])
def test_mixture_denoiser_satisfies_tweedie(sigma):
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(4, 3, 4, 4, generator=generator, dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    stds = torch.tensor([0.1, 0.2, 0.05, 0.3], dtype=torch.float64)
    teacher = GaussianMixtureDenoiser(means, weights, stds)
    x = (means[torch.tensor([0, 1, 2, 3, 1])] + sigma * torch.randn(5, 3, 4, 4, generator=generator,
                                                                   dtype=torch.float64)).requires_grad_()
    log_p = _log_density(x, means, (weights / weights.sum()).log(), stds ** 2, sigma).sum()
    score, = torch.autograd.grad(log_p, x)
    expected = x + sigma ** 2 * score  # Tweedie: D(x; σ) = x + σ² ∇ log p_σ(x)
    # float64 both ways; x + σ²·score cancels, by (‖x‖ + ‖σ²·score‖)/‖D‖; each side sums over the
    # pixels and the components
    amplification = float((x.detach().norm() + (sigma ** 2 * score).norm()) / expected.detach().norm())
    roundings = x[0].numel() + 4 * means.shape[0]
    assert relative_error(teacher(x.detach(), sigma), expected) <= between_implementations(
        roundings, torch.float64, amplification)


def test_far_apart_components_stay_finite_at_tiny_sigma():
    teacher = GaussianMixtureDenoiser(torch.stack([torch.full((3, 8, 8), -1.0), torch.full((3, 8, 8), 1.0)]))
    x = torch.full((2, 3, 8, 8), 0.2) + torch.tensor([-1.2, 0.0]).reshape(2, 1, 1, 1)
    out = teacher(x, torch.tensor([0.002, 0.002]))
    assert torch.isfinite(out).all()
    # the other component's posterior weight underflows to zero: the component means, exactly
    assert torch.equal(out[0], torch.full((3, 8, 8), -1.0)) and torch.equal(out[1], torch.full((3, 8, 8), 1.0))


def test_single_gaussian_denoiser_and_ode_solution_agree():
    teacher = gaussian_teacher(torch.zeros(3, 4, 4), 0.5)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 3
    assert relative_error(teacher(x, 3.0), 0.25 / (0.25 + 9.0) * x) <= between_implementations(4, torch.float64)
    assert torch.equal(teacher.ode_solution(x, 3.0, 3.0), x)  # no time passes: the state itself
    mixture = GaussianMixtureDenoiser(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="single Gaussian"):
        mixture.ode_solution(x, 3.0, 1.0)


def test_bad_mixture_arguments():
    with pytest.raises(ValueError, match=r"\[K, C, H, W\]"):
        GaussianMixtureDenoiser(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        GaussianMixtureDenoiser(torch.zeros(2, 3, 4, 4), weights=[1.0, 0.0])
