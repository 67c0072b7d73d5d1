"""Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"): a
teacher D guided by a weaker network of the same task, D_guide, denoises as

    D_w(x; σ) = D_guide(x; σ) + w·(D(x; σ) − D_guide(x; σ)),

w = 1 being D itself. It is a denoiser like any other: the samplers use it as they use D, and PID
distils its probability-flow ODE into a one-step student.
"""

import dataclasses
import math

import torch

from .settings import option

NO_GUIDANCE = 1.0


@dataclasses.dataclass(kw_only=True)
class GuidanceOptions:
    guide_model_path: str = option("", "guiding network of autoguidance (a teacher file of the same resolution, "
                                       "channels and labels, e.g. EDM2's XS beside its S); with --guidance",
                                   defines_run=True)
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


class GuidedDenoiser(torch.nn.Module):
    """D_guide + w·(D − D_guide), with the attributes of D (`img_channels`, `img_resolution`, `label_dim`)."""

    def __init__(self, denoiser, guide, guidance, source="--guide_model_path"):
        super().__init__()
        for name in ("img_channels", "img_resolution", "label_dim"):
            if getattr(guide, name) != getattr(denoiser, name):
                raise ValueError(f"{source}: the guiding network has {name} {getattr(guide, name)}, the teacher "
                                 f"{getattr(denoiser, name)}; a guide must denoise the same images and labels")
        self.denoiser, self.guide, self.guidance = denoiser, guide, float(guidance)
        self.img_channels, self.img_resolution, self.label_dim = (denoiser.img_channels, denoiser.img_resolution,
                                                                  denoiser.label_dim)

    def forward(self, x, sigma, class_labels=None):
        guided = self.denoiser(x, sigma, class_labels).to(torch.float32)
        return self.guide(x, sigma, class_labels).to(torch.float32).lerp(guided, self.guidance)
