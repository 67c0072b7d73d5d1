"""Exponential moving averages of a network's parameters at several rates, kept by parameter name."""

import torch


class EMA:
    """ema ← rate·ema + (1 − rate)·θ after every optimizer step, for each rate; initialised to θ."""

    def __init__(self, module, rates):
        self.module = module
        self.rates = tuple(float(r) for r in rates)
        for rate in self.rates:
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"EMA rates must lie in [0, 1), got {rate}")
        self.names = [name for name, p in module.named_parameters()]
        self.averages = {rate: [p.detach().clone() for p in module.parameters()] for rate in self.rates}

    @torch.no_grad()
    def update(self):
        params = [p.detach() for p in self.module.parameters()]
        for rate, averages in self.averages.items():
            torch._foreach_lerp_(averages, params, 1.0 - rate)

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
