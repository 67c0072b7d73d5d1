"""Teacher training: EDM's denoising objective on a data set, on the same loop as PID distillation
(launchers, micro-batches, precision, EMA, logs, checkpoints, resume: `loop.TrainingLoop`).

It exists to make real teachers for the project's own tests and demo (the digits teacher); EDM's
released teachers are trained with EDM's code. Checkpoints are bare network state dicts, as the
student's; `TeacherTrainer.export` writes an EMA as a teacher file that `load_teacher` reads.
"""

import dataclasses

import torch
import torch.nn.functional as F

from . import dist
from .checkpoint import save_teacher
from .digits import DIGITS_NETWORK_CONFIG, at_size, load_digits
from .losses import EDM_P_MEAN, EDM_P_STD, edm_denoising_loss, edm_training_sigmas
from .networks import EDMPrecond
from .loop import LoopConfig, TrainingLoop
from .run_folder import TEACHER_RUN
from .schedules import SIGMA_DATA
from .settings import option, redefault, setting

DATASETS = {"digits": (lambda: load_digits("train"), DIGITS_NETWORK_CONFIG)}
"""name → (loader of (images in [−1, 1], int labels), default EDMPrecond keywords)."""


@dataclasses.dataclass(kw_only=True)
class TeacherTrainConfig(LoopConfig):
    """The loop's settings with the digits teacher's defaults, the data set, the network and EDM's loss."""
    global_batch_size: int = redefault(LoopConfig, "global_batch_size", 128)
    lr: float = redefault(LoopConfig, "lr", 2e-3)
    lr_anneal_steps: int = redefault(LoopConfig, "lr_anneal_steps", 8000)
    optimizer: str = redefault(LoopConfig, "optimizer", "adam")
    ema_rate: str = redefault(LoopConfig, "ema_rate", "0.999")
    log_interval: int = redefault(LoopConfig, "log_interval", 500)
    save_interval: int = redefault(LoopConfig, "save_interval", 2000)
    total_training_steps: int = redefault(LoopConfig, "total_training_steps", 8000)
    dataset: str = option("digits", "training data: digits (scikit-learn's 8×8 handwritten digits, training split)",
                          defines_run=True)
    network_config: dict = setting(default_factory=lambda: dict(DIGITS_NETWORK_CONFIG), defines_run=True)
    p_mean: float = setting(EDM_P_MEAN, defines_run=True)
    p_std: float = setting(EDM_P_STD, defines_run=True)
    sigma_data: float = setting(SIGMA_DATA, defines_run=True)

    def choices(self):
        return {**super().choices(), "dataset": DATASETS}


class TeacherTrainer(TrainingLoop):
    """An EDMPrecond trained with EDM's loss; each step's images are drawn uniformly (with
    replacement) from the data set by the (seed, step) generator."""

    run_kind = TEACHER_RUN

    def __init__(self, config, dist_info=None):
        super().__init__(config, dist_info)
        load_data, _ = DATASETS[config.dataset]
        images, labels = load_data()
        network = config.network_config
        self.images = at_size(images, network["img_resolution"], network["img_channels"]).to(self.device)
        self.label_dim = network.get("label_dim", 0)
        if self.label_dim and int(labels.max()) >= self.label_dim:
            raise ValueError(f"the {config.dataset} data have {int(labels.max()) + 1} classes, the network "
                             f"label_dim {self.label_dim}")
        self.labels = labels.to(self.device)
        self.precond = EDMPrecond(**config.network_config, sigma_data=config.sigma_data,
                                  attention_implementation=config.attention)
        self.start(self.precond, self.precond.model, dict(config.network_config))

    def describe(self):
        side, channels = self.images.shape[-1], self.images.shape[1]
        return (f"EDM teacher training on {self.config.dataset} ({len(self.labels)} images at {channels}×{side}×{side}), "
                f"{sum(p.numel() for p in self.network.parameters()):,} parameters")

    def step_inputs(self, step):
        """This process's share of the step: clean images, one-hot labels, σ, unit noise."""
        generator = self.step_generator(step)
        picks = torch.randint(0, len(self.labels), (self.global_batch,), generator=generator, device=self.device)
        sigma = edm_training_sigmas(torch.randn(self.global_batch, generator=generator, device=self.device),
                                    self.config.p_mean, self.config.p_std)
        noise = torch.randn((self.global_batch, *self.images.shape[1:]), generator=generator, device=self.device)
        labels = F.one_hot(self.labels[picks], self.label_dim).to(torch.float32) if self.label_dim else None
        return (self.share(self.images[picks]).contiguous(memory_format=self.memory_format),
                None if labels is None else self.share(labels), self.share(sigma), self.share(noise))

    def batch_losses(self, model, inputs, eager=False):
        images, labels, sigma, noise = inputs
        return edm_denoising_loss(model, images, sigma, noise, labels, self.config.sigma_data)

    def export(self, rate, path):
        """Write the EMA at `rate` as a teacher file ({state_dict, config}); rank 0 only."""
        if dist.is_main():
            teacher = EDMPrecond(**self.network_config, sigma_data=self.config.sigma_data)
            teacher.model.load_state_dict(self.ema.state_dict(rate))
            save_teacher(teacher, path, {**self.network_config, "sigma_data": self.config.sigma_data})
        dist.barrier()
