"""The numeric bounds of the tests, derived from the precision of what each test compares.

Model (Higham and Mary, "A new approach to probabilistic rounding error analysis", SIAM J. Sci.
Comput. 41, 2019): every floating-point operation returns its exact result times (1 + δ) with
|δ| ≤ u, the unit roundoff of its format (2⁻²⁴ in float32, 2⁻⁵³ in float64). A value that went
through n roundings carries their sum, a relative error of mean zero; by Hoeffding's inequality it
exceeds λ·√n·u with probability at most 2·exp(−λ²/2). With λ = 6 that is 3·10⁻⁸ per value, so a
bound built this way holds for every summation order, thread count and library the computation
may take, not just the one observed.

Two computations of the same quantity (ours and a reference implementation's, or one code path
and another) each carry such an error, so they differ by at most the sum of the two bounds. A
quantity formed as a difference of two nearby values divided by their distance multiplies the
relative error of its inputs by its condition number (`amplification`).

Network comparisons count n generously: every dot product of every layer on a path from input to
output, every normalisation's reduction at the full resolution, parallel branches as if they were
in sequence. The overcount only loosens the bound, and a wrong formula still shows: it changes a
result by far more than the few 10⁻⁵ these bounds come to.
"""

import math

import torch

LAMBDA = 6.0
"""Hoeffding multiplier: a rounding sum exceeds λ·√n·u with probability ≤ 2·exp(−λ²/2) ≈ 3·10⁻⁸."""

UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}

ELEMENTWISE_ROUNDINGS_PER_LAYER = 8
"""Roundings of a layer's element-wise work (bias, activation, scaling, skip addition), generously."""


PARITY_ORDER = 1e-5
"""A second, empirical ceiling for parity with a reference implementation (the fixtures): the observed
relative errors are 0 to 3·10⁻⁷ (networks, sampler, student outputs, losses), while the derived bounds
above, honest about worst-case rounding through deep networks, reach 10⁻⁴–10⁻³. A formula off by
10⁻⁴ relative passes those and fails this."""


def rounding_bound(roundings, dtype=torch.float32, amplification=1.0):
    """Relative error of one computation that rounds `roundings` times in `dtype` on a path from its
    inputs, multiplied by the condition number of what is formed from it."""
    return amplification * LAMBDA * math.sqrt(max(roundings, 1)) * UNIT_ROUNDOFF[dtype]


def between_implementations(roundings, dtype=torch.float32, amplification=1.0):
    """Largest relative difference of two computations of the same quantity, each rounding
    `roundings` times in `dtype` (in other orders): the sum of their two bounds."""
    return 2 * rounding_bound(roundings, dtype, amplification)


def network_roundings(network, resolution):
    """Roundings on the longest input-to-output path of a network, counted generously (module doc)."""
    from pid_diffusion.networks.edm2 import Block, MPConv
    from pid_diffusion.networks.layers import GroupNorm, UNetBlock

    count = 0
    for module in network.modules():
        if isinstance(module, MPConv):  # EDM2 normalises every weight before use: one reduction over its fan-in
            count += module.weight[0].numel()
        if isinstance(module, Block):  # EDM2's pixel norm over the channels, and its attention
            count += module.out_channels + ELEMENTWISE_ROUNDINGS_PER_LAYER
            if module.num_heads:
                count += module.out_channels + 3 * resolution ** 2
            count += len(module.resample_filter) ** 2  # its resampling, when it resamples
            continue
        weight = getattr(module, "weight", None)
        if isinstance(module, (GroupNorm, torch.nn.GroupNorm)):
            groups = module.num_groups
            count += 2 * (module.weight.numel() // groups) * resolution ** 2 + ELEMENTWISE_ROUNDINGS_PER_LAYER
        elif isinstance(weight, torch.Tensor) and weight.dim() >= 2:  # convolution or linear: its fan-in
            count += weight[0].numel() + ELEMENTWISE_ROUNDINGS_PER_LAYER
        elif getattr(module, "resample_filter", None) is not None:  # a resampling layer without weights
            count += module.resample_filter.numel() + ELEMENTWISE_ROUNDINGS_PER_LAYER
        if isinstance(module, UNetBlock) and module.num_heads:  # scores over channels, softmax and sum over positions
            count += module.out_channels + 3 * resolution ** 2
    return count


def per_sample_norm(x):
    return x.flatten(1).to(torch.float64).norm(dim=1)


def finite_difference_ratio(t, t_next):
    """r = t/(t − t') per sample, in float64."""
    return t.double() / (t.double() - t_next.double())


def implied_denoised_rounding(x_t, x_t_next, t, t_next):
    """Per-sample bound on one computation's own rounding of x_t − t·(x_t − x_t')/(t − t'): four
    operations, each exact to u relative to its own result, so t·slope (the size of x_t, far larger
    than the implied image) carries most of it."""
    slope_term = finite_difference_ratio(t, t_next).reshape(-1, 1, 1, 1) * (x_t.double() - x_t_next.double())
    return rounding_bound(4) * (per_sample_norm(slope_term) + per_sample_norm(x_t.double() - slope_term))


def implied_denoised_difference_bound(x_t, x_t_next, t, t_next, dx_t, dx_t_next):
    """Largest ‖Δ‖ (over the batch) between two computations of PID's implied denoised image
    x_t − t·(x_t − x_t')/(t − t') whose inputs differ by dx_t and dx_t': the exact propagation
    ‖(1 − r)·Δx_t + r·Δx_t'‖ with r = t/(t − t'), plus each computation's own rounding."""
    r = finite_difference_ratio(t, t_next).reshape(-1, 1, 1, 1)
    propagated = per_sample_norm((1 - r) * dx_t.double() + r * dx_t_next.double())
    return float((propagated + 2 * implied_denoised_rounding(x_t, x_t_next, t, t_next)).norm())


def per_sample_distance_difference_bound(d, dd_norm, loss_norm):
    """Bound on |Δ loss| per sample between two computations of the mean squared (l2) or mean
    absolute (l1) distance of the differences d, whose values differ by at most dd_norm (a norm per
    sample): the propagation of dd_norm plus each computation's rounding of the mean over P pixels."""
    pixels = d[0].numel()
    d_norm = per_sample_norm(d)
    if loss_norm == "l2":
        propagated = (2 * d_norm * dd_norm + dd_norm ** 2) / pixels
        value = d_norm ** 2 / pixels
    else:
        propagated = dd_norm / pixels ** 0.5
        value = d.flatten(1).double().abs().mean(dim=1)
    return propagated + 2 * rounding_bound(pixels + 2) * value


def student_output_error(x, z, t, sigma_max, network_roundings_per_call):
    """Per-sample bound on the rounding error of one computation of the PID student
    x = (t/σ_max)·z + (1 − t/σ_max)·F: the network's rounding of its own part (1 − t/σ_max)·F, and
    three roundings of the combination relative to the output."""
    start = (t.double() / sigma_max).reshape(-1, 1, 1, 1) * z.double()
    return (rounding_bound(network_roundings_per_call) * per_sample_norm(x.double() - start)
            + rounding_bound(3) * per_sample_norm(x))


def pid_residual_error(x_t, x_t_next, target, z, t, t_next, sigma_max, student_roundings, teacher_roundings):
    """Per-sample bound on the rounding error of one computation of PID's residual implied − target:
    the students' errors through the finite difference (|1 − r|·e_t + r·e_t', r = t/(t − t')) and the
    formula's own four roundings, plus the teacher's rounding and the student's error it sees
    (networks taken as well-conditioned: κ = 1)."""
    r = finite_difference_ratio(t, t_next)
    e_t = student_output_error(x_t, z, t, sigma_max, student_roundings)
    e_next = student_output_error(x_t_next, z, t_next, sigma_max, student_roundings)
    formula = implied_denoised_rounding(x_t, x_t_next, t, t_next)
    teacher = (rounding_bound(teacher_roundings) + e_t / per_sample_norm(x_t)) * per_sample_norm(target)
    return (1 - r).abs() * e_t + r * e_next + formula + teacher


def lpips_roundings(lpips, resolution):
    """Roundings on a path through LPIPS at `resolution`: the VGG convolutions' fan-ins, each stage's
    unit normalisation over channels and weighted sum over them, the mean over positions, and the
    bilinear resize (four taps) before it."""
    channels = sum(module.out_channels for module in lpips.modules() if isinstance(module, torch.nn.Conv2d))
    return network_roundings(lpips, resolution) + 3 * channels + resolution ** 2 + 4


def sampler_roundings(network_roundings_per_call, network_calls, steps):
    """Roundings of an ODE sampler's result: every network call of the chain in sequence, and a few
    per step for the update itself (the solver's dynamics taken as well-conditioned: κ = 1)."""
    return network_calls * network_roundings_per_call + steps * ELEMENTWISE_ROUNDINGS_PER_LAYER


def backward_roundings(network, resolution, batch):
    """Roundings on a path of a network's backward pass: the forward's again for the input gradients,
    and for each weighted layer the weight gradient's sum over the batch and positions."""
    weighted = sum(1 for m in network.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
                   and m.weight.dim() >= 2)
    return 2 * network_roundings(network, resolution) + weighted * batch * resolution ** 2


def pid_step_bounds(trainer):
    """(relative bound on the loss, relative bound on the first update) between two computations of a
    PID trainer's first step that differ only in rounding (reduction orders, batched or separate student
    calls, attention kernels): the residual's error (pid_residual_error) bounds the loss, and — the
    first RAdam/Adam update being lr·g — the gradient: the residual's relative error scales every term,
    and the backward's own rounding is multiplied by the finite difference's 2·t/(t − t') (the
    derivatives of x_t and x_t' cancel as the values do)."""
    from pid_diffusion.losses import implied_denoised

    config, student, teacher = trainer.config, trainer.student, trainer.teacher
    z, t, t_next, labels, _ = trainer.step_inputs(0)
    resolution = trainer.image_shape[-1]
    with torch.no_grad():
        x_t, x_t_next = student(z, t, labels), student(z, t_next, labels)
        target = teacher(x_t, t, labels)
    d = implied_denoised(x_t, x_t_next, t, t_next) - target
    student_roundings = network_roundings(student, resolution)
    residual_error = 2 * pid_residual_error(x_t, x_t_next, target, z, t, t_next, config.sigma_max,
                                            student_roundings, network_roundings(teacher, resolution))
    relative_residual = float((residual_error / per_sample_norm(d)).max())
    if config.loss_norm in ("l1", "l2"):
        losses = (d.flatten(1).double() ** 2 if config.loss_norm == "l2" else d.flatten(1).double().abs()).mean(1)
        loss_bound = float(per_sample_distance_difference_bound(d, residual_error, config.loss_norm).sum() / losses.sum())
    else:  # LPIPS: a weighted squared distance of normalised features of the two images
        loss_bound = 2 * relative_residual + between_implementations(lpips_roundings(trainer.lpips, 224))
    r_max = float((t / (t - t_next)).max())
    gradient_bound = relative_residual + between_implementations(
        backward_roundings(student, resolution, len(z)), amplification=2 * r_max)
    return loss_bound, gradient_bound


def fid_terms_size(fid, reference_trace):
    """A bound on the size of FID's terms, which cancel: FID = ‖Δμ‖² + tr Σ + tr Σr − 2·tr √(Σ Σr), each at most
    2·((√FID + √tr Σr)² + tr Σr) (tr Σ ≤ (√FID + √tr Σr)², ‖Δμ‖² ≤ FID). A relative error of the statistics
    moves FID by that times this size."""
    return 2 * ((fid ** 0.5 + reference_trace ** 0.5) ** 2 + reference_trace)
