"""fp16's dynamic loss scaling with the skip decided on the device, so that the host need not wait for
the overflow check before it queues the optimizer, the EMA and the next step.

The rule is the original's: the loss is multiplied by 2^s; when any gradient is not finite the step
is skipped (weights, optimizer state, EMA and norms untouched) and s drops by one, otherwise s grows by
--fp16_scale_growth; skipped steps do not count, so the retry draws the same noise. Here an update is
always queued and undone on the device where it must not count: before the optimizer runs, its
parameters and state are copied (`Rollback`); afterwards every tensor becomes
`kept·tensor + discarded·copy` with `kept`, `discarded` ∈ {0, 1} device scalars (exact: x·1 + y·0 = x for
finite x, y; the gradients of a discarded update are zeroed first, so nothing is NaN), the EMA moves by a
weight multiplied by `kept`, and s changes by a `torch.where`. The host learns the outcome later (a
pinned flag behind a CUDA event) and meanwhile may have queued the next step speculatively: that
attempt is discarded on the device too when the one before it overflowed (its `prior`), and the host
then rewinds what lives on the host (the optimizer's step counters, the random generator) and retries
the skipped step. The first update, while the optimizer has no state to copy, is decided on the host.
"""

import dataclasses

import torch


@dataclasses.dataclass
class Attempt:
    """One queued try at the update from `step` to step + 1."""
    step: int
    loss: torch.Tensor
    applied: object  # a device bool (device-decided) or a Python bool (decided on the host)
    overflowed: object = None  # device bool: this attempt's own gradients were not finite
    flag: torch.Tensor = None  # a host copy of `applied`, written when the device gets there
    ready: object = None  # the CUDA event after which `flag` holds the answer
    optimizer_calls: int = 0
    random_state: torch.Tensor = None  # speculative attempts: the device generator's state before it (dropout)


class LossScale:
    """log2 of fp16's loss scale, on the device (float64, where the updates happen) and as the host knows
    it (`log2`, a float kept in step as attempts are resolved)."""

    def __init__(self, log2, growth, device):
        self.growth = growth
        self.device = device
        # the changes as double-precision device scalars (a Python number in torch.where would be float32)
        self.changes = {name: torch.tensor(value, dtype=torch.float64, device=device)
                        for name, value in (("drop", -1.0), ("grow", growth), ("none", 0.0))}
        self.set(log2)

    def set(self, log2):
        self.log2 = float(log2)
        self.device_log2 = torch.tensor(self.log2, dtype=torch.float64, device=self.device)

    def factors(self):
        """(scale, 1/scale): float32 device tensors of this attempt's scale, computed as 2.0 ** log2 in
        double precision, as Python computes it."""
        scale = torch.exp2(self.device_log2)
        return scale.float(), scale.reciprocal().float().reshape(1)

    def update(self, overflowed, prior):
        """The device's scale after an attempt: −1 on its own overflow, +growth when it counted, unchanged
        when an earlier attempt's overflow discarded it."""
        if overflowed is None:  # no gradients to check
            self.device_log2 += self.changes["grow"]
            return
        change = torch.where(overflowed, self.changes["drop"], self.changes["grow"])
        if prior is not None:
            change = torch.where(prior, self.changes["none"], change)
        self.device_log2 += change

    def resolved(self, applied):
        """The host's view after the host learns an attempt's outcome (its own, not a prior's)."""
        self.log2 += self.growth if applied else -1.0


class Rollback:
    """Copies of the trained parameters and of the optimizer's device state, put back where an update must
    not count. The optimizer's host-side state (the step counters torch.optim keeps on the CPU unless it is
    fused or capturable) is rewound by the host instead."""

    def __init__(self, optimizer, parameters, device):
        self.optimizer = optimizer
        self.tensors, self.host_counters = list(parameters), []
        for parameter in parameters:
            for name, value in optimizer.state[parameter].items():
                if not torch.is_tensor(value):
                    continue
                if value.device == device:
                    self.tensors.append(value)
                elif name == "step" and value.dim() == 0:
                    self.host_counters.append(value)
                else:
                    raise ValueError(f"the optimizer keeps its state {name!r} on {value.device}, not {device}: the "
                                     "update cannot be undone on the device")
        self.copies = [torch.empty_like(tensor) for tensor in self.tensors]
        self.identity = self._identity(optimizer, parameters)

    @staticmethod
    def _identity(optimizer, parameters):
        return [id(parameter) for parameter in parameters] + \
            [id(value) for parameter in parameters for value in optimizer.state[parameter].values()]

    def fits(self, parameters):
        """Whether these copies still mirror the parameters and the optimizer's state (a resume replaces the
        state's tensors)."""
        return self.identity == self._identity(self.optimizer, parameters)

    @torch.no_grad()
    def take(self):
        torch._foreach_copy_(self.copies, self.tensors)

    @torch.no_grad()
    def restore(self, discarded):
        """Every tensor ← kept·tensor + discarded·copy, `discarded` a 0/1 device scalar."""
        kept = 1.0 - discarded
        torch._foreach_mul_(self.tensors, kept)
        torch._foreach_mul_(self.copies, discarded)
        torch._foreach_add_(self.tensors, self.copies)

    def rewind(self, calls):
        """Undo `calls` discarded optimizer steps in the host-side step counters."""
        for counter in self.host_counters:
            counter -= calls


def optimizer_has_state(optimizer, parameters):
    return all(optimizer.state.get(parameter) for parameter in parameters)


def zero_if(discarded, tensors):
    """Zero `tensors` in place where `discarded` (a device bool) holds: a discarded update's gradients may be
    NaN, which no multiplication removes."""
    for tensor in tensors:
        tensor.masked_fill_(discarded, 0.0)
