"""PID distillation on the training loop (pid_diffusion/loop.py), with the original's bugs fixed
(docs/differences.md): its configuration, and the trainer that builds the teacher and the student,
draws each step's noise and levels, and computes the PID loss (pid_diffusion/losses.py). While it
trains it writes a sample grid beside every checkpoint and, with --eval_interval, measures FID.
"""

import copy
import dataclasses
import math
import os
import time

import torch
import torch.nn.functional as F

from . import dist
from .checkpoint import read_denoiser, student_from_teacher
from .download import is_url
from .evaluation.metrics import metric_answers, MetricOptions, metrics_text, real_features_for
from .evaluation.results import (measured_against, METRICS_TABLE, record_result, results_file, sampling_description,
                                 weights_digest)
from .evaluation.sampling import GenerationStopped, ONE_SHOT_MODE, run_generation, sampler_options
from .families import family_of
from .files import digest_of_arrays
from .evaluation.detectors import DetectorOptions, DETECTORS, FAMILY_FEED, FEEDS, load_configured_detector, resolve_feed
from .evaluation.statistics import check_stats_dimension, DetectorTally, reference_name, reference_stats
from .generate import GenerationRequest, generate, save_grid, to_uint8
from .guidance import GuidanceOptions
from .latents import LatentOptions, output_shape
from .log import PROGRESS_FILE
from .loop import LoopConfig, TrainingLoop
from .losses import FINITE_DIFFERENCES, LOSS_NORMS, WEIGHTINGS, pid_loss
from .lpips import LPIPS
from .run_folder import PID_RUN, checkpoint_files
from .schedules import (LEVEL_DISTRIBUTIONS, NoiseLevels, check_noise_levels, index_to_sigma, pid_third_index,
                        sample_pid_times)
from .settings import option, setting
from .speed import STUDENT_PRECISION

SCALE_MODES = ("fixed", "progressive")
LPIPS_CHANNELS = 3
GRID_SAMPLES = 64
"""The samples in each checkpoint's samples_{step}.png."""
EVALUATION_FILE = "fid_during_training.csv"
"""The FIDs measured during training (--eval_interval), a row per network and evaluation."""


@dataclasses.dataclass(kw_only=True)
class TrainConfig(LoopConfig, NoiseLevels, DetectorOptions, GuidanceOptions, LatentOptions):
    """PID distillation: the loop's settings, the teacher (and its guide), the ρ-grid, the loss, FID during
    training."""
    HELP_GROUP = "PID: the teacher, the ρ-grid, the loss, the student"

    teacher_model_path: str = option("", "teacher file: an EDM .pkl, our .pt, or an extracted EDM state dict (.ckpt); "
                                         "a path or an http(s) URL (fetched once into torch hub's cache)",
                                     defines_run=True)
    network_flags: dict = setting(default_factory=dict)
    """The architecture flags given (for teacher files that do not record their architecture)."""
    start_scales: int = option(40, "N, the number of ρ-grid noise levels (the scripts use 250)", defines_run=True)
    end_scales: int = option(40, "final N with --scale_mode progressive", defines_run=True)
    scale_mode: str = option("fixed", "N schedule: fixed (N = start_scales) or progressive (grows to end_scales)",
                             defines_run=True)
    loss_norm: str = option("lpips", f"distance between implied and teacher denoised images: {', '.join(LOSS_NORMS)}",
                            defines_run=True)
    level_distribution: str = option("uniform", "how each sample's grid level is drawn: uniform (the paper's) or "
                                                "lognormal (iCT's: the lognormal mass of ln σ ~ N(−1.1, 2²) between a "
                                                "level and its partner; docs/quality.md)", defines_run=True)
    finite_difference: str = option("first", "the derivative dx/dt of the PID residual: first (the paper's two-point "
                                             "difference) or second (three-point on the ρ-grid, central inside it; one "
                                             "more student call per sample; docs/quality.md)", defines_run=True)
    weight_schedule: str = option("karras", f"loss weighting λ(t): {', '.join(WEIGHTINGS)}", defines_run=True)
    dropout: float = option(0.0, "student dropout (the teacher runs in eval mode)")
    lpips_vgg_weights: str = option("", "path or http(s) URL of torchvision's vgg16-397923af.pth (default: model_zoo/, "
                                        "torch hub cache)")
    lpips_lin_weights: str = option("", "path or http(s) URL of piq's lpips_weights.pt or lpips' vgg.pth (default: "
                                        "model_zoo/, hub cache)")
    student_precision: str = option("autocast", "with --mixed_precision fp16/bf16: autocast (the student in that "
                                                "precision too), fp32_output (its output layers in float32), fp32 (all "
                                                "of it in float32)", preset=True)
    batched_student: bool = option(True, "speed: both student evaluations of the PID residual in one call on a "
                                         "doubled batch", preset=True)
    eval_interval: int = option(0, "FID of every EMA network and the raw one every this many steps, from "
                                   "--eval_samples one-step samples against --fid_dataset / --ref_path with --detector "
                                   "(0 = off; the original accepted the flag and ignored it)",
                                group=DetectorOptions.HELP_GROUP)
    eval_samples: int = option(10000, "samples of each FID during training (fid_evaluation.py's 50,000 stay the "
                                      "measurement)", group=DetectorOptions.HELP_GROUP)
    eval_metrics: str = option("fid", "what FID during training adds from its pass, as fid_evaluation.py --metrics: is "
                                      "(Inception or digits detector), pr and kid (the digits detector: its real "
                                      "digits), e.g. fid,is,pr,kid; a column each in fid_during_training.csv and rows "
                                      "of metrics_{seed}.csv", group=DetectorOptions.HELP_GROUP)

    def choices(self):
        return {**super().choices(), "scale_mode": SCALE_MODES, "loss_norm": LOSS_NORMS, "weight_schedule": WEIGHTINGS,
                "finite_difference": FINITE_DIFFERENCES, "level_distribution": LEVEL_DISTRIBUTIONS,
                "student_precision": STUDENT_PRECISION, "detector": DETECTORS,
                "detector_feed": (*FEEDS, FAMILY_FEED)}

    def validate(self):
        super().validate()
        if not self.teacher_model_path:
            raise ValueError("--teacher_model_path is required: the teacher is what PID distils")
        if self.start_scales < 2 or self.end_scales < 2:
            raise ValueError("--start_scales/--end_scales: the ρ-grid needs at least 2 noise levels")
        if self.finite_difference == "second" and min(self.start_scales, self.end_scales) < 3:
            raise ValueError("--finite_difference second needs at least 3 noise levels: give --start_scales (and "
                             "--end_scales) of 3 or more")
        check_noise_levels(self.sigma_min, self.sigma_max, self.rho)
        self.check_guidance()
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must lie in [0, 1), got {self.dropout}")
        for flag in ("lpips_vgg_weights", "lpips_lin_weights"):
            path = getattr(self, flag)
            if self.loss_norm == "lpips" and path and not is_url(path) and not os.path.isfile(path):
                problem = "is a folder" if os.path.isdir(path) else "does not exist"
                raise FileNotFoundError(f"--{flag} {path} {problem}; give the weight file (see model_zoo/README.md)")
        if self.eval_interval < 0:
            raise ValueError(f"--eval_interval must be 0 (no FID during training) or a number of steps, got "
                             f"{self.eval_interval}")
        if self.eval_interval and self.eval_samples < 2:
            raise ValueError(f"--eval_samples must be at least 2 (FID needs a covariance), got {self.eval_samples}")


def num_scales_at(config, step):
    """N of the ρ-grid at a training step: `fixed` keeps start_scales; `progressive` grows it to
    end_scales with the original's square-root schedule (cm/script_util.py)."""
    if config.scale_mode == "fixed":
        return config.start_scales
    fraction = step / config.total_training_steps
    grown = math.ceil(math.sqrt(fraction * ((config.end_scales + 1) ** 2 - config.start_scales ** 2)
                                + config.start_scales ** 2) - 1)
    return max(grown, 1) + 1


TEACHER_WEIGHTS = "teacher_weights_sha256"
"""run_config.json's digest of the teacher's weights (with its guide's): a file replaced at the same path
changes it, which a resume refuses like any other run-defining change."""


class PIDTrainer(TrainingLoop):
    """PID distillation: the student x_θ starts from the teacher's weights (random weights for an
    analytic teacher) and learns from noise and the frozen teacher alone."""

    run_kind = PID_RUN
    logged_tables = (PROGRESS_FILE, EVALUATION_FILE)

    def __init__(self, config, dist_info=None):
        super().__init__(config, dist_info)
        guide = f" and its guide {config.guide_model_path}" if config.guide_model_path else ""
        self.starting(f"reading the teacher {config.teacher_model_path}{guide}")
        # with --guide_model_path the student learns the autoguided teacher's ODE
        self.teacher, teacher_config, teacher_state = read_denoiser(config.teacher_model_path, config, config.attention,
                                                                    **config.network_flags)
        # a teacher or guide replaced at the same path is another run: its weights, not its name, are recorded
        self.teacher_weights = digest_of_arrays(self.teacher.state_dict().values())
        self.teacher = self.teacher.to(self.device, memory_format=self.memory_format)
        family = family_of(teacher_config)
        if family.rewrites_weights_in_training and not config.batched_student:
            raise ValueError(f"{config.teacher_model_path} is an {family.name.upper()} network, which rewrites its weights "
                             "in every training call (forced weight normalisation): the student's two evaluations of the "
                             "PID residual must be one call. Drop --batched_student False (--speed reference sets it: "
                             "add --batched_student True)")
        self.decode = family.image_decoder(teacher_config, config.vae_path)  # None unless the teacher models latents
        if config.vae_path and self.decode is None:
            raise ValueError(f"--vae_path {config.vae_path}: {config.teacher_model_path} models pixels, not latents, so "
                             "no VAE decodes its samples; drop --vae_path")
        network_config = family.student_config(teacher_config, config.dropout)
        self.student = student_from_teacher(network_config, teacher_state, config.sigma_max, config.attention,
                                            config.sigma_min)
        self.student.net.float32_output = config.student_precision == "fp32_output"
        self.image_shape = (self.teacher.img_channels, self.teacher.img_resolution, self.teacher.img_resolution)
        if self.decode is not None:
            self.starting("loading the VAE that decodes the teacher's latents")
        self.output_shape()  # a latent teacher's VAE loads now, not at the first checkpoint's grid
        self.label_dim = self.teacher.label_dim
        self.lpips = None
        if config.loss_norm == "lpips":
            if self.image_shape[0] != LPIPS_CHANNELS:
                raise ValueError(f"--loss_norm lpips compares RGB images; this teacher's samples have {self.image_shape[0]} "
                                 "channel(s) (latents, or greyscale): use --loss_norm l2 or l1")
            self.lpips = LPIPS(config.lpips_vgg_weights or None, config.lpips_lin_weights or None).to(
                self.device, memory_format=self.memory_format)
        self.detector = self.reference = None
        self.real = None  # the real set of precision/recall and KID during training (RealFeatures)
        self.detector_feed = resolve_feed(config.detector_feed, family.sampling_protocol)
        self.metric_options = MetricOptions.parse(config.eval_metrics)
        if "fd_dinov2" in self.metric_options.names:
            raise ValueError("--eval_metrics fd_dinov2 would run DINOv2 ViT-L/14 (304M parameters, every sample at "
                             "224 × 224) beside the training: measure it on the checkpoints with "
                             "scripts/fid_evaluation.py --metrics fd_dinov2, or make FID during training FD_DINOv2 "
                             "with --detector dinov2")
        if self.metric_options.names and not config.eval_interval:
            raise ValueError(f"--eval_metrics {config.eval_metrics} adds to FID during training, which --eval_interval "
                             "0 turns off: give --eval_interval N")
        if config.eval_interval:  # refused before the run folder is touched when they cannot be loaded
            self.starting(f"loading the {config.detector} detector and the reference statistics of "
                          f"{reference_name(config.fid_dataset, config.ref_path)} for FID during training")
            self.detector = load_configured_detector(config, self.device)
            self.reference = reference_stats(config.fid_dataset, config.ref_path or None, self.detector,
                                             device=self.device)
            probe = DetectorTally(self.detector, self.output_shape(), self.device, self.detector_feed)
            check_stats_dimension(*self.reference, probe.dimension, reference_name(config.fid_dataset, config.ref_path))
            self.notes += [probe.note] if probe.note else []
            self.measured_with = measured_against(config.detector, self.detector, config.fid_dataset, config.ref_path,
                                                  self.reference)
            self.real = real_features_for(self.metric_options, self.detector, self.device)
        self.preview = None  # an eval-mode copy of the student for sample grids and evaluations
        self.latest_fids = {}
        self.answers = (None, [], [])  # (step, FID [(row, question)], other metrics'): for the tables once saved
        self.start(self.student, self.student.net, network_config)
        if teacher_state is None:
            self.logger.log(f"{config.teacher_model_path} is an analytic teacher without weights: the student "
                            "starts from random weights")
        self.teacher_call, self.lpips_call = self.config.compiled(self.teacher), self.config.compiled(self.lpips)

    def describe(self):
        return f"PID distillation: teacher {self.config.teacher_model_path}"

    def run_config(self):
        return {**super().run_config(), TEACHER_WEIGHTS: self.teacher_weights}

    def defining_settings(self):
        return (*super().defining_settings(), TEACHER_WEIGHTS)

    def network_state(self, state_dict):
        """Checkpoints of the student hold its raw network's keys; its family maps other spellings onto them."""
        return family_of(self.network_config).network_state_dict(state_dict)

    # ------------------------------------------------------------- what a run shows while it trains
    def _preview_with(self, state):
        """The eval-mode copy of the student holding `state` (made once, by copying: no random draw, so
        the training's random numbers are untouched)."""
        if self.preview is None:
            self.preview = copy.deepcopy(self.student).eval().requires_grad_(False)
            for parameter in self.preview.parameters():
                parameter.grad = None
        self.preview.net.load_state_dict(state)
        return self.preview

    def shown_networks(self):
        """(name, EMA rate or None for the raw network) of every EMA network, then the raw one, named as their
        checkpoint files are."""
        return [*((f"ema_{rate}", rate) for rate in self.ema.rates), ("model", None)]

    def shown_state(self, rate):
        return self.network.state_dict() if rate is None else self.ema.state_dict(rate)

    def one_step_options(self):
        """What image_sample.py and fid_evaluation.py sample a student checkpoint with (one step, clamped unless
        it samples latents)."""
        return sampler_options(ONE_SHOT_MODE, "oneshot", sigma_min=self.config.sigma_min,
                               sigma_max=self.config.sigma_max, clip_denoised=self.decode is None)

    def output_shape(self):
        """The shape of the images the student's samples become (its samples' own, unless they are latents)."""
        return output_shape(self.decode, self.image_shape, self.device)

    def after_save(self):
        """samples_{step}.png: the first network's (an EMA's, if any) one-step samples 0 … GRID_SAMPLES − 1 of
        --seed, the same noises and labels at every checkpoint (image_sample.py --seed draws them too); and this
        step's FIDs, if it was evaluated, as rows of the walk's fid_results_{seed}.csv."""
        if not dist.is_main():
            return
        step, answers, metric_rows = self.answers
        if step == self.step:  # FIDs of the weights just saved: the results table the walk reads holds them too
            for row, question in answers:
                record_result(results_file(self.config.log_dir, self.config.seed), row, question)
            for row, question in metric_rows:
                record_result(results_file(self.config.log_dir, self.config.seed, METRICS_TABLE), row, question,
                              table=METRICS_TABLE)
        name, rate = self.shown_networks()[0]
        shown = self._preview_with(self.shown_state(rate))
        batches = list(generate(shown, GRID_SAMPLES, GRID_SAMPLES, self.config.seed, self.image_shape, self.label_dim,
                                device=self.device, decode=self.decode, **self.one_step_options()))
        images = torch.cat([to_uint8(batch.images).cpu() for batch in batches])
        labels = torch.cat([batch.labels.cpu() for batch in batches]) if self.label_dim else None
        path = os.path.join(self.config.log_dir, f"samples_{self.step:06d}.png")
        caption = (f"{name}, step {self.step}: one-step samples 0-{GRID_SAMPLES - 1} of seed {self.config.seed}"
                   + (" (class in the corner)" if labels is not None else ""))
        try:
            self.logger.image("samples", save_grid(images, path, caption=caption, labels=labels), self.step)
        except OSError as e:  # a picture is not worth a run
            self.logger.log(f"could not write {path} ({e}); training goes on")

    def evaluation_due(self, step):
        return bool(self.config.eval_interval) and step % self.config.eval_interval == 0

    def evaluate(self):
        """FID (and with the digits detector conditional accuracy) of every EMA network and the raw one, from
        --eval_samples one-step samples of --seed (the same noises at every evaluation; fid_evaluation.py
        --seed draws the same). Every process samples its share; a failure on any process is logged and
        training goes on."""
        started = time.time()
        request = GenerationRequest(self.config.eval_samples, self.batch, self.config.seed)
        tallies, weights, problem = {}, {}, None
        # a stop signal ends the evaluation: one process checks before each batch, several (whose batch counts
        # may differ by one) agree before each network
        single = self.info.world_size == 1
        try:
            for name, rate in self.shown_networks():
                if not single and self._stop_requested():
                    raise GenerationStopped("stopped between networks")
                shown = self._preview_with(self.shown_state(rate))
                weights[name] = weights_digest(shown) if dist.is_main() else None
                tallies[name] = run_generation(shown, self.image_shape,
                                               self.label_dim, request, self.one_step_options(), self.device,
                                               detector=self.detector, feed=self.detector_feed,
                                               keep_images=False, progress=False, decode=self.decode,
                                               stop=(lambda: self.stop_signal is not None) if single else None,
                                               keep_samples=self.metric_options.keeps_samples)[3]
        except GenerationStopped as e:
            self.logger.log(f"FID at step {self.step} interrupted by a stop signal ({e}); the checkpoint is written "
                            "next and the run ends")
            return
        except Exception as e:  # noqa: BLE001 (an evaluation never stops the training)
            problem = f"{type(e).__name__}: {e}"
        if int(dist.all_reduce_sum(torch.tensor(int(problem is not None), device=self.device)).item()):
            self.logger.log(f"FID at step {self.step} failed ({problem or 'on another process'}); training goes on, "
                            "the next evaluation tries again")
            return
        # every process's per-sample outputs in sample order, for the metrics beside FID (a collective call)
        outputs = {name: tally.samples_in_order() for name, tally in tallies.items()} if self.metric_options.names else {}
        for tally in tallies.values():
            tally.all_reduce()
        if not dist.is_main():
            return
        seconds = time.time() - started
        results = {name: (tally.fid(self.reference), tally.class_accuracy()) for name, tally in tallies.items()}
        self.latest_fids = {f"fid_{name}": f"{fid:.6f}" for name, (fid, _) in results.items()}
        files = checkpoint_files("", self.step, self.ema.rates)  # file names by network: model, ema_{rate}
        # the walk's question for each checkpoint of this step (fid_evaluation.py --seed <--seed> --num_samples
        # <--eval_samples> with this detector and reference): it finds these answers instead of measuring again
        sampling = sampling_description(self.one_step_options(), request)
        question = dict(num_samples=self.config.eval_samples, seed=self.config.seed, sampling=sampling,
                        feed=self.detector_feed, **self.measured_with)
        answers, metric_rows, measured = [], [], {}
        asked = self.metric_options.questions(self.config.seed, self.config.eval_samples, self.real)
        for name, (fid, accuracy) in results.items():
            checkpoint = os.path.splitext(files[name])[0]  # the checkpoint of this step, as fid_results names it
            row = dict(step=self.step, model_name=checkpoint, FID=f"{fid:.6f}", num_samples=self.config.eval_samples,
                       seed=self.config.seed, detector=self.config.detector, seconds=f"{seconds:.2f}")
            if accuracy == accuracy:  # not NaN: a classifying detector and a class-conditional student
                row["class_accuracy"] = f"{accuracy:.6f}"
            if outputs:
                measured[name] = self.metric_options.measure(*outputs[name], self.real, self.config.seed)
                row.update({metric: f"{value:.6g}" for metric, (value, _) in measured[name].items()})
            self.logger.metrics(row, EVALUATION_FILE)
            answer = {key: row[key] for key in ("model_name", "step", "FID", "class_accuracy") if key in row}
            measured_by = {**question, "weights_sha256": weights[name]}
            if math.isfinite(fid):  # the results table holds finite values only (a NaN row is damage)
                answers.append((answer, measured_by))
            metric_rows += metric_answers(checkpoint, self.step, measured.get(name, {}), {
                metric: {**measured_by, "metric": metric, **parameters} for metric, parameters in asked.items()})[0]
        self.answers = (self.step, answers, metric_rows)
        shown = ", ".join(f"{name} {fid:.4f}" for name, (fid, _) in results.items())
        self.logger.log(f"FID at step {self.step} ({self.config.eval_samples} samples, {self.config.detector} "
                        f"detector, {seconds:.1f} s): {shown}")
        for name, values in measured.items():
            self.logger.log(f"  {name}: {metrics_text(values)}")

    def logged_evaluation(self):
        if not self.config.eval_interval:
            return {}
        columns = {f"fid_{name}": "" for name, _ in self.shown_networks()}
        columns.update(self.latest_fids)
        self.latest_fids = {}
        return columns

    def step_inputs(self, step):
        """This process's share of the step's global batch: z = σ_max·ε, t, t', one-hot labels, and the third levels
        of a second-order difference (None for the first-order one). The draws are the same either way."""
        generator = self.step_generator(step)
        num_scales = num_scales_at(self.config, step)
        noise = torch.randn((self.global_batch, *self.image_shape), generator=generator, device=self.device)
        noise = noise.contiguous(memory_format=self.memory_format)
        indices, t, t_next = sample_pid_times(self.global_batch, num_scales, self.config.sigma_min,
                                              self.config.sigma_max, self.config.rho, generator, self.device,
                                              self.config.level_distribution)
        t_third = None
        if self.config.finite_difference == "second":
            t_third = self.share(index_to_sigma(pid_third_index(indices, num_scales), num_scales, self.config.sigma_min,
                                                self.config.sigma_max, self.config.rho).to(torch.float32))
        labels = None
        if self.label_dim:
            classes = torch.randint(0, self.label_dim, (self.global_batch,), generator=generator, device=self.device)
            labels = self.share(F.one_hot(classes, self.label_dim).to(torch.float32))
        return self.config.sigma_max * self.share(noise), self.share(t), self.share(t_next), labels, t_third

    def batch_losses(self, model, inputs, eager=False):
        z, t, t_next, labels, t_third = inputs
        student = model if self.config.student_precision != "fp32" else float32_call(model)
        teacher, lpips = (self.teacher, self.lpips) if eager else (self.teacher_call, self.lpips_call)
        return pid_loss(student, teacher, z, t, t_next, labels, self.config.loss_norm,
                        self.config.weight_schedule, lpips, self.config.batched_student, t_third)


def float32_call(module):
    """`module` called with autocast off: it computes in float32 inside an autocast region."""
    def call(*args, **kwargs):
        with torch.autocast(args[0].device.type, enabled=False):
            return module(*args, **kwargs)
    return call


def train(config, trainer_class=PIDTrainer):
    """Run a whole training in this process (the caller has called dist.init)."""
    trainer = trainer_class(config)
    try:
        trainer.run()
    finally:
        trainer.close()
    return trainer
