"""Moving averages of a network's parameters at several rates, kept by parameter name: exponential (a fixed
rate, the original's) or EDM2's power-function profiles (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", section 3), named by their relative standard deviation σ_rel.

A power-function average after t updates weighs update τ ∝ τ^γ; its width relative to t is
σ_rel = ((γ + 1) / ((γ + 2)²(γ + 3)))^½, so γ is the largest real root of
γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²) = 0. Each update moves the average towards θ with
β_t = (1 − 1/(t + 1))^(γ + 1), t the number of updates before it (EDM2's β for images t·B, B per update,
is the same). The first update copies θ.
"""

import math

import numpy as np
import torch

MAX_POWER_FUNCTION_STD = 1 / math.sqrt(12)
"""σ_rel of γ = 0 (the plain running mean), the widest power-function profile."""


def power_function_exponent(std):
    """γ of the power-function profile of relative standard deviation `std`."""
    if not 0 < std < MAX_POWER_FUNCTION_STD:
        raise ValueError(f"a power-function EMA's σ_rel must lie in (0, {MAX_POWER_FUNCTION_STD:.4f}), got {std}")
    inverse_square = std ** -2
    return float(np.roots([1, 7, 16 - inverse_square, 12 - inverse_square]).real.max())


class EMA:
    """Averages initialised to θ, updated after every optimizer step: ema ← rate·ema + (1 − rate)·θ for each
    rate, or with `power_function` for each σ_rel in `rates`, rate = β_t of its power-function profile."""

    def __init__(self, module, rates, power_function=False):
        self.module = module
        self.rates = tuple(float(r) for r in rates)
        self.exponents = {rate: power_function_exponent(rate) for rate in self.rates} if power_function else None
        for rate in self.rates:
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"EMA rates must lie in [0, 1), got {rate}")
        self.names = [name for name, p in module.named_parameters()]
        self.averages = {rate: [p.detach().clone() for p in module.parameters()] for rate in self.rates}

    def rate(self, rate, updates_before):
        """The weight the average keeps in the update after `updates_before` updates."""
        if self.exponents is None:
            return rate
        return (1 - 1 / (updates_before + 1)) ** (self.exponents[rate] + 1)

    @torch.no_grad()
    def update(self, updates_before=0, counts=None):
        """Move the averages towards θ; `counts`, a 0/1 device scalar, multiplies each step's weight (an fp16
        update discarded on the device moves nothing, with no host read)."""
        params = [p.detach() for p in self.module.parameters()]
        for rate, averages in self.averages.items():
            weight = 1.0 - self.rate(rate, updates_before)
            if counts is None:
                torch._foreach_lerp_(averages, params, weight)
            else:
                torch._foreach_lerp_(averages, params, [counts * weight] * len(averages))

    def state_dict(self, rate):
        """A full network state dict with the averaged parameters (buffers from the live module)."""
        state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        for name, average in zip(self.names, self.averages[rate]):
            state[name] = average.detach().clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, rate, state):
        missing = [name for name in self.names if name not in state]
        if missing:
            raise KeyError(f"EMA state for rate {rate} lacks {missing[:4]}")
        for name, average in zip(self.names, self.averages[rate]):
            average.copy_(state[name])
