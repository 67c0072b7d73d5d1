"""The PID student x_θ(z, t): a network that *is* the teacher's probability-flow ODE trajectory.

For noise z = σ_max·ε (the state at t = σ_max), the student returns its estimate of the ODE state
at noise level t:

    x_θ(z, t) = (t/σ_max)·z + (1 − t/σ_max)·F_θ(c_in·z, ln(t)/4),   c_in = 1/√(σ_data² + σ_max²).

The network always sees the same input c_in·z ≈ ε; only its noise label changes with t. At
t = σ_max the output is z exactly (the ODE's initial condition); at t = σ_min it is the one-step
sample. The official code hard-codes 80 for σ_max in c_in and in the noise scale; here all three
follow `sigma_max`, which equals 80 by default, so the numbers are the official ones.
"""

import torch

from .schedules import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN


class PIDStudent(torch.nn.Module):
    """Wraps a raw EDM network (SongUNet / DhariwalUNet, called as `net(x, noise_labels,
    class_labels)`) into x_θ(z, t). `student(z, t, class_labels=None)` with z = σ_max·ε, t a
    number or a tensor of per-sample noise levels, class labels one-hot [N, label_dim].
    `sigma_min` is the level of its one-step sample x_θ(z, σ_min) (the grid's end in training)."""

    def __init__(self, net, sigma_max=SIGMA_MAX, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN):
        super().__init__()
        self.net = net
        self.sigma_max = float(sigma_max)
        self.sigma_min = float(sigma_min)
        self.sigma_data = float(sigma_data)
        self.input_scale = 1 / (self.sigma_data ** 2 + self.sigma_max ** 2) ** 0.5

    @property
    def noise_levels(self):
        """The sampling options of its one-step sample: dict(sigma_min, sigma_max)."""
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max)

    def forward(self, z, t, class_labels=None):
        t = torch.as_tensor(t, dtype=torch.float32, device=z.device).reshape(-1).expand(z.shape[0])
        noise_labels = t.log() / 4
        raw = self.net(self.input_scale * z, noise_labels, class_labels)
        start_weight = (t / self.sigma_max).reshape(-1, 1, 1, 1)
        return start_weight * z + (1 - start_weight) * raw.to(z.dtype)
