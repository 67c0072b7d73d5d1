"""Samplers as interchangeable pure functions.

Every sampler takes `(denoiser, x, sigmas, class_labels, randn_like, **options)`: `denoiser(x, σ,
class_labels)` is any D(x; σ) (an EDMPrecond, an analytic teacher, or the PID student x_θ(z, t)),
`x` the starting state σ_max·ε, `sigmas` the descending noise levels with a trailing 0, and
`randn_like` the only source of randomness. They integrate in float64, as EDM does, and call the
network on float32.

`sample()` is the one entry point that the official `--sampler` names go through; `network_calls()`
says what each costs. NFE with `steps` = S:

| sampler      | what it does                                                         | network calls |
|--------------|----------------------------------------------------------------------|---------------|
| `heun_deter` | EDM's deterministic Heun (2nd order; Euler on the last step)         | 2·S − 1       |
| `heun`       | EDM's stochastic Heun with churn (`s_churn`, `s_tmin/tmax`, `s_noise`) | 2·S − 1     |
| `euler`      | first-order Euler down the grid                                      | S             |
| `dpm`        | DPM-Solver-2 (midpoint in σ^(1/3)) with optional churn                | 2·S           |
| `ancestral`  | Euler-ancestral (η = 1)                                              | S             |
| `onestep`    | one denoiser call at σ_max                                           | 1             |
| `oneshot`    | the PID student at σ_min: x_θ(σ_max·ε, σ_min)                         | 1             |
| `progdist`   | Euler over S+1 levels σ_max … σ_min, ending at σ_min                  | S             |
| `multistep`  | consistency-model multistep over grid indices `ts`                   | len(ts) − 1   |

EDM's "35 NFE" CIFAR-10 setting is `heun_deter` with 18 steps; the original scripts' `--steps 35`
costs 69 calls.
"""

import math

import torch

from .schedules import (RHO, SIGMA_MAX, SIGMA_MIN, append_zero, check_noise_levels, index_to_sigma, karras_sigmas,
                        to_d)


def _churn_gamma(sigma, num_steps, s_churn, s_tmin, s_tmax):
    return min(s_churn / num_steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0


def _call(denoiser, x, sigma, class_labels):
    # The state is integrated in float64; the network sees float32 (EDMPrecond casts to float32
    # itself, and float64 would bypass autocast and run the network in double precision).
    return denoiser(x.to(torch.float32), sigma, class_labels).to(torch.float64)


def heun(denoiser, x, sigmas, class_labels=None, randn_like=torch.randn_like, s_churn=0.0, s_tmin=0.0,
         s_tmax=float("inf"), s_noise=1.0):
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 2); deterministic when s_churn = 0."""
    num_steps = len(sigmas) - 1
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        gamma = _churn_gamma(float(t_cur), num_steps, s_churn, s_tmin, s_tmax)
        t_hat = t_cur + gamma * t_cur
        if s_churn > 0:  # EDM draws on every step of a stochastic run, also where gamma = 0
            x = x + (t_hat ** 2 - t_cur ** 2).sqrt() * s_noise * randn_like(x)
        d_cur = to_d(x, t_hat, _call(denoiser, x, t_hat, class_labels))
        x_next = x + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_prime = to_d(x_next, t_next, _call(denoiser, x_next, t_next, class_labels))
            x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x


def euler(denoiser, x, sigmas, class_labels=None, randn_like=torch.randn_like):
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (sigma_next - sigma) * to_d(x, sigma, _call(denoiser, x, sigma, class_labels))
    return x


def dpm(denoiser, x, sigmas, class_labels=None, randn_like=torch.randn_like, s_churn=0.0, s_tmin=0.0,
        s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 as in the official code: a midpoint step in σ^(1/3) on every interval,
    the last one (to σ = 0) included."""
    num_steps = len(sigmas) - 1
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        gamma = _churn_gamma(float(sigma), num_steps, s_churn, s_tmin, s_tmax)
        sigma_hat = sigma * (gamma + 1)
        if s_churn > 0:
            x = x + randn_like(x) * s_noise * (sigma_hat ** 2 - sigma ** 2).sqrt()
        d = to_d(x, sigma_hat, _call(denoiser, x, sigma_hat, class_labels))
        sigma_mid = ((sigma_hat ** (1 / 3) + sigma_next ** (1 / 3)) / 2) ** 3
        x_mid = x + d * (sigma_mid - sigma_hat)
        d_mid = to_d(x_mid, sigma_mid, _call(denoiser, x_mid, sigma_mid, class_labels))
        x = x + d_mid * (sigma_next - sigma_hat)
    return x


def ancestral(denoiser, x, sigmas, class_labels=None, randn_like=torch.randn_like):
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = _call(denoiser, x, sigma, class_labels)
        sigma_up = torch.minimum(sigma_next, (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2).sqrt())
        sigma_down = (sigma_next ** 2 - sigma_up ** 2).sqrt()
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        x = x + randn_like(x) * sigma_up
    return x


def onestep(denoiser, x, sigmas, class_labels=None, randn_like=torch.randn_like):
    return _call(denoiser, x, sigmas[0], class_labels)


def oneshot(denoiser, x, sigmas, class_labels=None, randn_like=torch.randn_like, sigma_min=SIGMA_MIN):
    """The PID student's one-step sample x_θ(σ_max·ε, σ_min), whatever the number of steps."""
    return _call(denoiser, x, torch.tensor(sigma_min, dtype=torch.float64), class_labels)


def progdist(denoiser, x, sigmas, class_labels=None, randn_like=torch.randn_like):
    """Euler over the grid without its trailing zero (the grid has steps + 1 levels)."""
    return euler(denoiser, x, sigmas[:-1], class_labels, randn_like)


def multistep(denoiser, x, sigmas, class_labels=None, randn_like=torch.randn_like, ts=(), steps=40,
              sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """Consistency-model multistep sampling: denoise at grid index ts[i] of a `steps`-point
    ρ-grid, re-noise to the level of ts[i+1] (above σ_min), repeat."""
    levels = [float(index_to_sigma(index, steps, sigma_min, sigma_max, rho)) for index in ts]
    for t, t_next in zip(levels[:-1], levels[1:]):
        x0 = _call(denoiser, x, torch.tensor(t, dtype=torch.float64), class_labels)
        t_next = min(max(t_next, sigma_min), sigma_max)
        x = x0 + randn_like(x) * math.sqrt(t_next ** 2 - sigma_min ** 2)
    return x


SAMPLERS = {"heun_deter": heun, "heun": heun, "euler": euler, "dpm": dpm, "ancestral": ancestral,
            "onestep": onestep, "oneshot": oneshot, "progdist": progdist, "multistep": multistep}
_CHURN_SAMPLERS = ("heun", "dpm")


def _check_sampler(sampler):
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")


def parse_ts(ts):
    """The official `--ts` flag: comma-separated grid indices ("0,22,39"), or a sequence."""
    if isinstance(ts, str):
        try:
            return [int(v) for v in ts.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--ts must be comma-separated integers, got {ts!r}") from None
    return [int(v) for v in ts]


def check_sampler_options(sampler, steps=18, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO, s_churn=0.0,
                          s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, ts=()):
    """Refuse options that no sampler can use (ValueError naming the flag, its value and the valid range),
    before any work: a sampler given them would write noise, black or grey images without a word."""
    _check_sampler(sampler)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {steps}")
    check_noise_levels(sigma_min, sigma_max, rho)
    for name, value in (("s_churn", s_churn), ("s_noise", s_noise)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name} must be a finite number ≥ 0, got {value}")
    if not (s_tmin >= 0 and s_tmax >= s_tmin):  # NaN fails both
        raise ValueError(f"--s_tmin and --s_tmax must satisfy 0 ≤ s_tmin ≤ s_tmax (the σ window of churn), got "
                         f"{s_tmin} and {s_tmax}")
    churn = {name: value for name, value, default in (("s_churn", s_churn, 0.0), ("s_tmin", s_tmin, 0.0),
                                                       ("s_tmax", s_tmax, float("inf")), ("s_noise", s_noise, 1.0))
             if value != default}
    if churn and sampler not in (*_CHURN_SAMPLERS, "oneshot"):  # the student's one step reads no sampler option
        listed = ", ".join(f"--{name} {value:g}" for name, value in churn.items())
        raise ValueError(f"{listed}: stochastic churn is read by --sampler {' or '.join(_CHURN_SAMPLERS)} only; "
                         f"--sampler {sampler} would ignore it")
    indices = parse_ts(ts)
    if sampler != "multistep":
        if indices:
            raise ValueError(f"--ts is read by --sampler multistep only; --sampler {sampler} would ignore it")
        return
    if len(indices) < 2:
        example = ",".join(str(i) for i in sorted({0, steps // 2, steps - 1}))  # valid on this grid
        raise ValueError(f"--sampler multistep needs --ts with at least 2 grid indices (e.g. {example} for "
                         f"--steps {steps}), got {ts!r}")
    if any(not 0 <= index < steps for index in indices) or any(b <= a for a, b in zip(indices, indices[1:])):
        raise ValueError(f"--ts {ts!r}: the grid indices must increase strictly (from σ_max at 0 towards σ_min) and lie "
                         f"in 0 … {steps - 1}, the indices of the --steps {steps} grid")


def network_calls(sampler, steps, ts=()):
    """Network evaluations per sample (NFE) of `sampler` with `steps` steps."""
    _check_sampler(sampler)
    return {"heun_deter": 2 * steps - 1, "heun": 2 * steps - 1, "euler": steps, "dpm": 2 * steps,
            "ancestral": steps, "onestep": 1, "oneshot": 1, "progdist": steps,
            "multistep": max(len(parse_ts(ts)) - 1, 0)}[sampler]


def sample(denoiser, noise, sampler="heun_deter", steps=18, class_labels=None, sigma_min=SIGMA_MIN,
           sigma_max=SIGMA_MAX, rho=RHO, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, ts=(),
           clip_denoised=False, randn_like=torch.randn_like):
    """Generate from unit-normal `noise` [N, C, H, W] with an official sampler name.

    `clip_denoised=True` clamps every denoiser output and the result to [−1, 1], as the original
    scripts do (EDM does not). Returns float32 images.
    """
    check_sampler_options(sampler, steps, sigma_min, sigma_max, rho, s_churn, s_tmin, s_tmax, s_noise, ts)
    label_dim = getattr(denoiser, "label_dim", 0)
    if label_dim and class_labels is None:
        raise ValueError(f"the model is class-conditional ({label_dim} classes): give class_labels, one-hot "
                         f"[N, {label_dim}] (generate() draws them per sample; rows of zeros ask for EDM's 'no label', "
                         "meaningful for networks trained with label dropout: pass them to mean it)")
    grid_points = steps + 1 if sampler == "progdist" else steps
    sigmas = append_zero(karras_sigmas(grid_points, sigma_min, sigma_max, rho, device=noise.device))
    if clip_denoised:
        def run(x, sigma, labels):
            return denoiser(x, sigma, labels).clamp(-1, 1)
    else:
        run = denoiser
    options = {}
    if sampler in _CHURN_SAMPLERS:
        options = dict(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    elif sampler == "oneshot":
        options = dict(sigma_min=sigma_min)
    elif sampler == "multistep":
        options = dict(ts=parse_ts(ts), steps=steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    x = SAMPLERS[sampler](run, noise.to(torch.float64) * sigma_max, sigmas, class_labels, randn_like, **options)
    if clip_denoised:
        x = x.clamp(-1, 1)
    return x.to(torch.float32)


def edm_sampler(net, latents, class_labels=None, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7,
                S_churn=0, S_min=0, S_max=float("inf"), S_noise=1, randn_like=torch.randn_like):
    """EDM's `generate.py` sampler with EDM's signature: Heun from latents·σ_max in float64.
    Returns float64, as EDM does."""
    sigmas = append_zero(karras_sigmas(num_steps, sigma_min, sigma_max, rho, device=latents.device))
    return heun(net, latents.to(torch.float64) * sigmas[0], sigmas, class_labels, randn_like,
                s_churn=S_churn, s_tmin=S_min, s_tmax=S_max, s_noise=S_noise)
