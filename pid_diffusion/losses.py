"""The PID loss: the student's trajectory must satisfy the teacher's
probability-flow ODE, dx/dt = (x − D(x; t))/t, i.e. x − t·dx/dt = D(x; t).

With the derivative a finite difference between two noise levels of the ρ-grid,

    implied(z, t) = x_θ(z,t) − t·(x_θ(z,t) − x_θ(z,t'))/(t − t')
    loss(z, t)    = λ(t) · d(implied(z, t), sg[D(x_θ(z,t); t)])

gradients flow through both student evaluations and never into the teacher.

Also here: EDM's denoising objective, which makes teachers (Karras et al. 2022, eq. 8 with the
loss weight of Table 1): λ(σ)·‖D(y + σn; σ) − y‖², ln σ ~ N(P_mean, P_std²).
"""

import torch
import torch.nn.functional as F

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


PSEUDO_HUBER_C = 0.00054
"""The pseudo-Huber distance's c per √(values per image) (Song & Dhariwal 2023, "Improved techniques for training
consistency models": c = 0.00054·√d for images in [−1, 1])."""
FINITE_DIFFERENCES = ("first", "second")
"""--finite_difference: the paper's two-point difference, or the three-point one (one more student call)."""
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


EDM2_PIXEL_P_MEAN, EDM2_PIXEL_P_STD = -0.8, 1.6
"""EDM2's log-normal σ distribution for pixels (its ImageNet-64 configurations)."""
EDM2_LATENT_P_MEAN, EDM2_LATENT_P_STD = -0.4, 1.0
"""EDM2's log-normal σ distribution for latents (its ImageNet-512 configurations)."""


def edm2_denoising_loss(precond, images, sigma, noise, class_labels=None, sigma_data=SIGMA_DATA):
    """Per-sample EDM2 loss: the mean over C,H,W of λ(σ)/e^u(σ)·(D(y + σ·n; σ) − y)² + u(σ), where u(σ) is the
    network's learned log-variance (EDM2's uncertainty weighting: minimising over u makes e^u the expected
    weighted error at σ, so every σ contributes alike) and λ(σ) EDM's weight."""
    noisy = images + sigma.reshape(-1, 1, 1, 1) * noise
    denoised, logvar = precond(noisy, sigma, class_labels, return_logvar=True)
    weight = edm_loss_weight(sigma, sigma_data).reshape(-1, 1, 1, 1)
    return _mean_over_pixels(weight / logvar.exp() * (denoised.to(images.dtype) - images) ** 2 + logvar)


def implied_denoised(x_t, x_t_next, t, t_next):
    """x − t·dx/dt with a finite-difference derivative: the denoised image the student's own
    trajectory implies. Per-sample t, t_next broadcast over C, H, W."""
    t = t.reshape(-1, 1, 1, 1)
    t_next = t_next.reshape(-1, 1, 1, 1)
    slope = (x_t - x_t_next) / (t - t_next)
    return x_t - t * slope


def implied_denoised_second_order(x_t, x_a, x_b, t, t_a, t_b):
    """x − t·dx/dt with the three-point derivative at t: the slope at t of the quadratic in t through (t, x_t),
    (t_a, x_a) and (t_b, x_b), on the non-uniform ρ-grid (exact for a trajectory quadratic in t, where the
    two-point difference errs by O(h)). The weights, per sample, are computed in float64: in float32 the products
    of the small steps near σ_max lose digits the two-point difference's one quotient keeps."""
    t, t_a, t_b = (level.to(torch.float64).reshape(-1, 1, 1, 1) for level in (t, t_a, t_b))
    h_a, h_b = t_a - t, t_b - t
    weights = (t * (h_a + h_b) / (h_a * h_b), -t * h_b / (h_a * (h_b - h_a)), t * h_a / (h_b * (h_b - h_a)))
    w_t, w_a, w_b = (weight.to(x_t.dtype) for weight in weights)
    return x_t + w_t * x_t + w_a * x_a + w_b * x_b


def pseudo_huber_distance(a, b):
    """√(‖a − b‖² + c²) − c per sample, c = PSEUDO_HUBER_C·√(values per image): ‖a − b‖²/(2c) for small differences,
    ‖a − b‖ for large ones, so outliers weigh less than under l2."""
    c = PSEUDO_HUBER_C * a[0].numel() ** 0.5
    return ((a - b).flatten(1).square().sum(dim=1) + c ** 2).sqrt() - c


def _mean_over_pixels(x):
    return x.flatten(1).mean(dim=1)


def lpips_distance(lpips, a, b):
    """The official PID wrapper around LPIPS: bilinear resize to 224 when smaller than 256, map
    [−1, 1] → [0, 1], per-sample LPIPS."""
    if a.shape[-1] < LPIPS_RESIZE_BELOW:
        a = F.interpolate(a, size=(LPIPS_SIZE, LPIPS_SIZE), mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=(LPIPS_SIZE, LPIPS_SIZE), mode="bilinear", align_corners=False)
    return lpips((a + 1) / 2, (b + 1) / 2)


LOSS_NORMS = {
    "l1": lambda a, b, lpips: _mean_over_pixels((a - b).abs()),
    "l2": lambda a, b, lpips: _mean_over_pixels((a - b) ** 2),
    "lpips": lambda a, b, lpips: lpips_distance(lpips, a, b),
    "pseudo_huber": lambda a, b, lpips: pseudo_huber_distance(a, b),
}
"""--loss_norm → the per-sample distance d(implied, target, lpips module) of the PID loss: a new norm is one entry
(and its closed form in tests/test_formulas.py)."""


def pid_loss(student, teacher, z, t, t_next, class_labels=None, loss_norm="l2", weight_schedule="uniform",
             lpips=None, batched_student=False, t_third=None):
    """Per-sample PID loss [N] for noise z = σ_max·ε at noise levels t and partner levels t_next.

    `batched_student` evaluates x_θ(z, t) and x_θ(z, t_next) in one call on a doubled batch (the
    same function: every layer acts per sample; faster on GPUs). With `t_third` (pid_third_index's levels) the
    derivative is the three-point difference (implied_denoised_second_order), at one more student call."""
    if loss_norm not in LOSS_NORMS:
        raise ValueError(f"unknown loss_norm {loss_norm!r}; valid: {', '.join(LOSS_NORMS)}")
    if loss_norm == "lpips" and lpips is None:
        raise ValueError("loss_norm 'lpips' needs an LPIPS module: pass lpips=LPIPS(...)")
    weight = weightings(weight_schedule, t)
    levels = [t, t_next] + ([] if t_third is None else [t_third])
    if batched_student:
        labels = None if class_labels is None else torch.cat([class_labels] * len(levels))
        outputs = student(torch.cat([z] * len(levels)), torch.cat(levels), labels).chunk(len(levels))
    else:
        outputs = [student(z, level, class_labels) for level in levels]
    x_t = outputs[0]
    implied = (implied_denoised(*outputs, t, t_next) if t_third is None else
               implied_denoised_second_order(*outputs, t, t_next, t_third))
    with torch.no_grad():
        target = teacher(x_t.detach(), t, class_labels).to(implied.dtype)
    return weight * LOSS_NORMS[loss_norm](implied, target, lpips)
