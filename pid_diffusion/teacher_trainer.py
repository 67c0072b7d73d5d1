"""Teacher training on a data set, on the same loop as PID distillation (launchers, micro-batches, precision,
EMA, logs, checkpoints, resume: `loop.TrainingLoop`), in one of two families:

  * edm:  EDM's denoising objective on an EDM-preconditioned DDPM++ (the shipped digits teacher);
  * edm2: EDM2's (Karras et al. 2024): its magnitude-preserving U-Net with forced weight normalisation,
          σ drawn log-normal (P_mean, P_std), the loss weighted by the network's learned log-variance
          (losses.edm2_denoising_loss), the learning rate warmed up linearly over --lr_rampup_steps and then
          decaying as 1/√(step/--lr_ref_steps), and power-function EMAs named by σ_rel (ema.py). With
          --latent_vae it models the data's latents, encoded as EDM2 encodes them (latents.py): an EDM2
          latent teacher, whose file records the encoder so that its samples decode into pixels.

It exists to make real teachers for the project's own tests and demos (the digits teachers); EDM's and EDM2's
released teachers are trained with their authors' code. Checkpoints are bare network state dicts, as the
student's; `TeacherTrainer.export` writes an EMA as a teacher file that `load_teacher` reads.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F

from . import dist
from .checkpoint import save_teacher
from .digits import DIGITS_NETWORK_CONFIG, at_size, load_digits
from .ema import power_function_exponent
from .families import FAMILY_KEY
from .families.edm2 import ENCODER_KEY, LATENT_ENCODER, PIXEL_ENCODER, precond_keywords
from .generate import to_pixels
from .latents import fitted_codec
from .losses import (EDM2_LATENT_P_MEAN, EDM2_LATENT_P_STD, EDM2_PIXEL_P_MEAN, EDM2_PIXEL_P_STD, EDM_P_MEAN,
                     EDM_P_STD, edm2_denoising_loss, edm_denoising_loss, edm_training_sigmas)
from .networks import EDMPrecond
from .networks.edm2 import EDM2Precond
from .loop import LoopConfig, TrainingLoop
from .run_folder import TEACHER_RUN
from .schedules import SIGMA_DATA
from .settings import option, redefault, setting

DATASETS = {"digits": (lambda: load_digits("train"), DIGITS_NETWORK_CONFIG)}
"""name → (loader of (images in [−1, 1], int labels), default EDMPrecond keywords)."""
FAMILIES = ("edm", "edm2")
LOG_NORMAL_SIGMAS = {("edm", False): (EDM_P_MEAN, EDM_P_STD), ("edm2", False): (EDM2_PIXEL_P_MEAN, EDM2_PIXEL_P_STD),
                     ("edm2", True): (EDM2_LATENT_P_MEAN, EDM2_LATENT_P_STD)}
"""(family, latent) → (P_mean, P_std) of its training σ."""


@dataclasses.dataclass(kw_only=True)
class TeacherTrainConfig(LoopConfig):
    """The loop's settings with the digits teacher's defaults, the data set, the family's network and loss."""
    HELP_GROUP = "the teacher's training: data and loss"

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
    family: str = option("edm", "edm: EDM's objective on a DDPM++ (the shipped digits teacher); edm2: EDM2's U-Net and "
                                "objective (log-normal σ, learned log-variance weighting), its learning-rate schedule "
                                "(--lr warmed up over --lr_rampup_steps, then ∝ 1/√(step/--lr_ref_steps), instead of "
                                "--lr_anneal_steps) and power-function EMAs (--ema_rate lists their σ_rel, e.g. "
                                "0.05,0.1)", defines_run=True)
    lr_ref_steps: int = option(2000, "edm2: the learning rate decays as 1/√(step/this) after this many steps (EDM2's "
                                     "ref_batches)", defines_run=True)
    lr_rampup_steps: int = option(200, "edm2: the learning rate rises linearly from 0 over this many steps (EDM2's "
                                       "rampup)", defines_run=True)
    latent_vae: str = option("", "edm2: model the digits' latents, encoded by this KL autoencoder folder "
                                 "(scripts/train_vae.py; diffusers' AutoencoderKL) as EDM2 encodes them: a latent "
                                 "teacher", defines_run=True)
    network_config: dict = setting(default_factory=lambda: dict(DIGITS_NETWORK_CONFIG), defines_run=True)
    p_mean: float = setting(EDM_P_MEAN, defines_run=True)
    p_std: float = setting(EDM_P_STD, defines_run=True)
    sigma_data: float = setting(SIGMA_DATA, defines_run=True)

    def choices(self):
        return {**super().choices(), "dataset": DATASETS, "family": FAMILIES}

    def validate(self):
        super().validate()
        if self.family == "edm2":
            for rate in self.ema_rates:
                try:
                    power_function_exponent(rate)
                except ValueError as e:
                    raise ValueError(f"--ema_rate {self.ema_rate}: with --family edm2 it lists the σ_rel of "
                                     f"power-function EMAs ({e})") from None
            for name in ("lr_ref_steps", "lr_rampup_steps"):
                if getattr(self, name) < 0:
                    raise ValueError(f"--{name} must be 0 (off) or a number of steps, got {getattr(self, name)}")
        elif self.latent_vae:
            raise ValueError("--latent_vae trains an EDM2 latent teacher: add --family edm2")


def edm2_learning_rate(lr, step, ref_steps, rampup_steps):
    """EDM2's learning-rate schedule in steps: lr/√max(step/ref_steps, 1), times min(step/rampup_steps, 1)."""
    if ref_steps:
        lr /= math.sqrt(max(step / ref_steps, 1))
    if rampup_steps:
        lr *= min(step / rampup_steps, 1)
    return lr


class TeacherTrainer(TrainingLoop):
    """A teacher of `config.family` trained on `config.dataset`; each step's images are drawn uniformly (with
    replacement) from the data set by the (seed, step) generator."""

    run_kind = TEACHER_RUN

    def __init__(self, config, dist_info=None):
        super().__init__(config, dist_info)
        load_data, _ = DATASETS[config.dataset]
        images, labels = load_data()
        network = dict(config.network_config)
        self.edm2 = config.family == "edm2"
        self.power_function_ema = self.edm2
        self.codec = None
        if config.latent_vae:  # the network models the data's latents: EDM2's raw latents, encoded anew each step
            self.codec, raw_latents = fitted_codec(config.latent_vae, to_pixels(images))
            network.update(img_channels=raw_latents.shape[1] // 2, img_resolution=raw_latents.shape[-1])
            network[ENCODER_KEY] = dict(kind=LATENT_ENCODER, vae_name=config.latent_vae,
                                        scale=self.codec.scale.flatten().tolist(),
                                        bias=self.codec.bias.flatten().tolist(), batch_size=self.codec.batch_size)
            self.images = raw_latents.to(self.device)
        else:
            self.images = at_size(images, network["img_resolution"], network["img_channels"]).to(self.device)
        self.label_dim = network.get("label_dim", 0)
        if self.label_dim and int(labels.max()) >= self.label_dim:
            raise ValueError(f"the {config.dataset} data have {int(labels.max()) + 1} classes, the network "
                             f"label_dim {self.label_dim}")
        self.labels = labels.to(self.device)
        self.precond = self.build_precond(network, config.attention)
        self.start(self.precond, self.precond if self.edm2 else self.precond.model, network)

    def build_precond(self, network, attention_implementation="sdpa"):
        """The preconditioned network of the family, untrained."""
        if self.edm2:
            return EDM2Precond(**precond_keywords(network), sigma_data=self.config.sigma_data,
                               attention_implementation=attention_implementation)
        return EDMPrecond(**network, sigma_data=self.config.sigma_data, attention_implementation=attention_implementation)

    def describe(self):
        what = (f"latents of {self.config.latent_vae} ({self.image_shape[0]}×{self.image_shape[1]}×{self.image_shape[2]})"
                if self.codec else f"{len(self.labels)} images at {'×'.join(map(str, self.image_shape))}")
        return (f"{self.config.family.upper()} teacher training on {self.config.dataset} ({what}), "
                f"{sum(p.numel() for p in self.network.parameters()):,} parameters")

    @property
    def image_shape(self):
        """(C, H, W) of what the network models: the images, or their latents."""
        channels = self.images.shape[1] // 2 if self.codec else self.images.shape[1]
        return channels, self.images.shape[-2], self.images.shape[-1]

    def learning_rate(self, step):
        if not self.edm2:
            return super().learning_rate(step)
        return edm2_learning_rate(self.config.lr, step, self.config.lr_ref_steps, self.config.lr_rampup_steps)

    def step_inputs(self, step):
        """This process's share of the step: clean images (or latents), one-hot labels, σ, unit noise."""
        generator = self.step_generator(step)
        picks = torch.randint(0, len(self.labels), (self.global_batch,), generator=generator, device=self.device)
        sigma = edm_training_sigmas(torch.randn(self.global_batch, generator=generator, device=self.device),
                                    self.config.p_mean, self.config.p_std)
        noise = torch.randn((self.global_batch, *self.image_shape), generator=generator, device=self.device)
        labels = F.one_hot(self.labels[picks], self.label_dim).to(torch.float32) if self.label_dim else None
        clean = self.images[picks]
        if self.codec:  # EDM2's latents of the picked images, with their own draw of the encoder's noise
            encoding = torch.randn((self.global_batch, *self.image_shape), generator=generator, device=self.device)
            clean = self.codec.encode_latents(clean, noise=encoding)
        return (self.share(clean).contiguous(memory_format=self.memory_format),
                None if labels is None else self.share(labels), self.share(sigma), self.share(noise))

    def batch_losses(self, model, inputs, eager=False):
        images, labels, sigma, noise = inputs
        loss = edm2_denoising_loss if self.edm2 else edm_denoising_loss
        return loss(model, images, sigma, noise, labels, self.config.sigma_data)

    def export(self, rate, path):
        """Write the EMA at `rate` as a teacher file ({state_dict, config}); rank 0 only."""
        if dist.is_main():
            teacher = self.build_precond(self.network_config)
            (teacher if self.edm2 else teacher.model).load_state_dict(self.ema.state_dict(rate))
            save_teacher(teacher, path, {**self.network_config, "sigma_data": self.config.sigma_data})
        dist.barrier()


def teacher_family_config(family, network_config):
    """A teacher config of `family` as the network flags describe it (`network_config`: the DDPM++ keywords of
    cli.teacher_network_config) — for edm2 EDM2's U-Net with the same widths, blocks and attention, in pixels."""
    if family == "edm":
        return network_config
    heads = min(64, network_config["model_channels"])  # EDM2's 64 channels per head, or one head on narrow networks
    return {FAMILY_KEY: "edm2", ENCODER_KEY: {"kind": PIXEL_ENCODER}, "use_fp16": False,
            **{key: network_config[key] for key in ("img_resolution", "img_channels", "label_dim", "model_channels",
                                                    "channel_mult", "num_blocks", "attn_resolutions", "dropout")},
            "channels_per_head": heads}


def log_normal_sigmas(family, latent):
    """(P_mean, P_std) of the training σ of a family's teacher (EDM2's differ for latents)."""
    if family not in FAMILIES:
        raise ValueError(f"--family {family!r} is not supported; valid: {', '.join(FAMILIES)}")
    return LOG_NORMAL_SIGMAS[(family, family == "edm2" and bool(latent))]
