"""Guidance: a teacher D guided by another network of the same images, D_guide, denoises as

    D_w(x; σ) = D_guide(x; σ) + w·(D(x; σ) − D_guide(x; σ)),

w = 1 being D itself. EDM2 uses it two ways, with the same formula and sampler:
  * autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"): the guide
    is a smaller and/or shorter-trained version of the teacher, of the same labels;
  * classifier-free guidance: the guide is an *unconditional* network (no labels) beside a class-conditional
    teacher; it is handed no labels (EDM2's sampler hands it the teacher's, which an unconditional network
    ignores).
It is a denoiser like any other: the samplers use it as they use D, and PID distils its probability-flow
ODE into a one-step student.
"""

import dataclasses
import math

import torch

from .settings import option

NO_GUIDANCE = 1.0


@dataclasses.dataclass(kw_only=True)
class GuidanceOptions:
    HELP_GROUP = "guidance: autoguidance or classifier-free"

    guide_model_path: str = option("", "guiding network (a teacher file of the same resolution and channels): a "
                                       "weaker network of the same labels (autoguidance, e.g. EDM2's XS beside its S) "
                                       "or an unconditional one beside a class-conditional teacher (classifier-free "
                                       "guidance); with --guidance", defines_run=True)
    guidance: float = option(NO_GUIDANCE, "guidance weight w: the denoiser D_guide + w·(D − D_guide); 1 = the "
                                          "teacher alone (EDM2's ImageNet-64 S preset uses 1.7 with its XS guide)",
                             defines_run=True)

    def check_guidance(self):
        if not math.isfinite(self.guidance):
            raise ValueError(f"--guidance must be a finite number, got {self.guidance}")
        if self.guidance != NO_GUIDANCE and not self.guide_model_path:
            raise ValueError(f"--guidance {self.guidance:g} needs a guiding network: give --guide_model_path")
        if self.guide_model_path and self.guidance == NO_GUIDANCE:
            raise ValueError(f"--guide_model_path {self.guide_model_path} is used only with --guidance other than 1 "
                             "(which is the teacher alone); give the weight, e.g. --guidance 1.7")


def check_guide(denoiser, guide, source="--guide_model_path"):
    """Refuse a guide that does not denoise the teacher's images, or whose labels cannot guide the teacher's:
    its label count must be the teacher's, or 0 (an unconditional guide of a class-conditional teacher)."""
    for name in ("img_channels", "img_resolution"):
        if getattr(guide, name) != getattr(denoiser, name):
            raise ValueError(f"{source}: the guiding network has {name} {getattr(guide, name)}, the teacher "
                             f"{getattr(denoiser, name)}; a guide must denoise the same images")
    if guide.label_dim not in (0, denoiser.label_dim):
        what = ("the teacher is unconditional: its guide must be too" if not denoiser.label_dim else
                f"a guide has the teacher's {denoiser.label_dim} labels (autoguidance) or none (classifier-free "
                "guidance)")
        raise ValueError(f"{source}: the guiding network has label_dim {guide.label_dim}, the teacher "
                         f"{denoiser.label_dim}; {what}")


class GuidedDenoiser(torch.nn.Module):
    """D_guide + w·(D − D_guide), with the attributes of D (`img_channels`, `img_resolution`, `label_dim`); an
    unconditional guide is called without labels."""

    def __init__(self, denoiser, guide, guidance, source="--guide_model_path"):
        super().__init__()
        check_guide(denoiser, guide, source)
        self.denoiser, self.guide, self.guidance = denoiser, guide, float(guidance)
        self.img_channels, self.img_resolution, self.label_dim = (denoiser.img_channels, denoiser.img_resolution,
                                                                  denoiser.label_dim)

    def forward(self, x, sigma, class_labels=None):
        guided = self.denoiser(x, sigma, class_labels).to(torch.float32)
        guide_labels = class_labels if self.guide.label_dim else None
        return self.guide(x, sigma, guide_labels).to(torch.float32).lerp(guided, self.guidance)
