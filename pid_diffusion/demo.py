"""Distillation-quality metrics for runs whose teacher was fitted to the built-in Gaussian mixture.

For the same noise, each generator (the teacher's 18-step / 35-call Heun sampler, the teacher's
few-step Euler samplers as yardsticks for a one-call student, the untrained student, trained student
checkpoints) is measured by:
  rmse_vs_teacher  per-pixel RMSE to the teacher's ODE endpoint from the same noise (what PID learns)
  mode_agreement   fraction of samples whose nearest mixture component is the teacher endpoint's
  coverage_tv      total variation between the nearest-component histogram and the mixture weights
  nearest_rms      per-pixel RMS distance to the nearest component mean (exact data: the component std)
  pixel_fid        FID in pixel space against exact mixture samples (the 'pixels' detector)
An 'exact data' row gives the same figures for true mixture samples (their sampling noise).
"""

import numpy as np
import torch

from .fid import FeatureStats, PixelDetector, detector_input, frechet_distance
from .generate import seeded_inputs
from .samplers import network_calls, sample

TEACHER_SAMPLER = dict(sampler="heun_deter", steps=18)
FEW_STEP_SAMPLERS = (dict(sampler="euler", steps=5), dict(sampler="euler", steps=10))
"""The teacher with few network calls: what a one-call student's figures can be compared with."""
METRIC_FIELDS = ("generator", "nfe", "rmse_vs_teacher", "mode_agreement", "coverage_tv", "nearest_rms", "pixel_fid")


def pixel_statistics(images):
    """(μ, Σ) of the 'pixels' detector's features for images in [-1, 1], as fid_evaluation computes them."""
    features = PixelDetector()(detector_input(images, "float"))
    stats = FeatureStats(features.shape[1])
    stats.update(features)
    return stats.mean_cov()


class MixtureMetrics:
    def __init__(self, mixture, teacher, num_samples=2000, seed=0, reference_samples=20000, batch_size=500):
        self.mixture = mixture
        shape = tuple(mixture.means.shape[1:])
        self.noise, _ = seeded_inputs(seed, range(num_samples), shape)
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(seed + 1)
        exact, _ = mixture.sample_data(reference_samples, generator)
        self.reference = pixel_statistics(exact)
        self.exact_samples, _ = mixture.sample_data(num_samples, generator)
        self.teacher = teacher
        self.teacher_endpoints = self.generate_images(teacher, **TEACHER_SAMPLER)
        self.teacher_modes = mixture.nearest_component(self.teacher_endpoints)

    def generate_images(self, denoiser, sampler, steps=1):
        with torch.no_grad():
            return torch.cat([sample(denoiser, chunk, sampler, steps=steps)
                              for chunk in self.noise.split(self.batch_size)]).clamp(-1, 1)

    def row(self, name, images, nfe):
        modes = self.mixture.nearest_component(images)
        weights = self.mixture.log_weights.exp()
        histogram = torch.bincount(modes, minlength=len(weights)).to(torch.float64) / len(modes)
        nearest = self.mixture.means[modes].to(images.dtype)
        mu, sigma = pixel_statistics(images)
        return dict(generator=name, nfe=nfe,
                    rmse_vs_teacher=float((images - self.teacher_endpoints).square().mean().sqrt()),
                    mode_agreement=float((modes == self.teacher_modes).to(torch.float64).mean()),
                    coverage_tv=float(0.5 * (histogram - weights).abs().sum()),
                    nearest_rms=float((images - nearest).square().flatten(1).mean(1).sqrt().mean()),
                    pixel_fid=frechet_distance(mu, sigma, *self.reference))

    def teacher_row(self):
        nfe = network_calls(TEACHER_SAMPLER["sampler"], TEACHER_SAMPLER["steps"])
        return self.row(f"teacher heun_deter {TEACHER_SAMPLER['steps']} steps", self.teacher_endpoints, nfe)

    def few_step_teacher_rows(self):
        return [self.row(f"teacher {spec['sampler']} {spec['steps']} steps",
                         self.generate_images(self.teacher, **spec), network_calls(spec["sampler"], spec["steps"]))
                for spec in FEW_STEP_SAMPLERS]

    def student_row(self, name, student):
        return self.row(name, self.generate_images(student, "oneshot"), 1)

    def exact_row(self):
        row = self.row("exact data", self.exact_samples, 0)
        row.update(rmse_vs_teacher=float("nan"), mode_agreement=float("nan"))
        return row


def format_table(rows):
    header = f"{'generator':<34}{'NFE':>5}{'RMSE vs teacher':>17}{'mode agreement':>16}{'coverage TV':>13}" \
             f"{'nearest RMS':>13}{'pixel FID':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = [f"{r['rmse_vs_teacher']:17.4f}", f"{r['mode_agreement']:16.3f}"]
        cells = [c if not np.isnan(v) else f"{'—':>{len(c)}}" for c, v in zip(cells, (r["rmse_vs_teacher"],
                                                                                 r["mode_agreement"]))]
        lines.append(f"{r['generator']:<34}{r['nfe']:>5}{cells[0]}{cells[1]}{r['coverage_tv']:13.3f}"
                     f"{r['nearest_rms']:13.4f}{r['pixel_fid']:11.4f}")
    return "\n".join(lines)
