"""Every flag of the four scripts reaches what it controls: a flag given another value arrives, as that
value, in the object that acts on it, and (where the flag acts here, not in a trainer or sampler tested
elsewhere) changes the result as its meaning says."""

import dataclasses
import os

import numpy as np
import pytest
import torch

from pid_diffusion import cli, digits
from pid_diffusion.evaluation.sampling import run_generation, SamplingModel, TEACHER_MODE
from pid_diffusion.evaluation.detectors import detector_input, load_detector
from pid_diffusion.evaluation.statistics import digits_reference_stats
from pid_diffusion.generate import GenerationRequest, draw_inputs, per_sample_randn_like, sample_generators, to_uint8
from pid_diffusion.guidance import GuidanceOptions
from pid_diffusion.loop import LoopConfig
from pid_diffusion.samplers import sample
from pid_diffusion.settings import options_of
from pid_diffusion.teacher_trainer import TeacherTrainConfig
from pid_diffusion.teachers import GaussianMixtureDenoiser
from pid_diffusion.trainer import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PID_VALUES = {  # a valid value other than the default for every flag that is a TrainConfig field
    "teacher_model_path": "teacher.pt", "start_scales": 18, "end_scales": 30, "scale_mode": "progressive",
    "sigma_min": 0.004, "sigma_max": 60.0, "rho": 5.0, "loss_norm": "l1", "weight_schedule": "snr+1", "finite_difference": "second", "level_distribution": "lognormal",
    "dropout": 0.2, "lpips_vgg_weights": "vgg.pth", "lpips_lin_weights": "lin.pt", "global_batch_size": 24,
    "batch_size": 3, "microbatch": 1, "lr": 3e-4, "weight_decay": 0.01, "lr_anneal_steps": 77, "optimizer": "adam",
    "opt_eps": 1e-6, "ema_rate": "0.5,0.75", "log_interval": 3, "save_interval": 9, "total_training_steps": 27,
    "resume_checkpoint": "model000009.pt", "fp16_scale_growth": 0.01, "seed": 5, "mixed_precision": "bf16",
    "student_precision": "fp32_output", "batched_student": False, "attention": "reference", "fused_optimizer": False,
    "channels_last": True, "compile": True, "compile_mode": "reduce-overhead", "cudnn_benchmark": False,
    "ddp_bucket_cap_mb": 64, "speculative_step": True, "allow_changed_settings": True, "log_format": "stdout,tensorboard", "eval_interval": 500,
    "eval_samples": 300, "eval_metrics": "fid,is",
    "detector": "digits", "detector_path": "d.pt", "detector_feed": "uint8", "dinov2_repo": "dinov2", "dinov2_path": "w.pth", "dinov2_resize": "pil", "fid_dataset": "digits", "ref_path": "r.npz",
    "guide_model_path": "guide.pt", "guidance": 1.5, "vae_path": "vae",
}


def argv_of(values):
    return [token for name, value in values.items() for token in (f"--{name}", str(value))]


def test_every_distillation_flag_reaches_the_trainer_config():
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"log_dir", "network_flags", "speed_preset"}
    assert fields == set(PID_VALUES), "a TrainConfig field without a flag value here: add it to PID_VALUES"
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, value in PID_VALUES.items():
        assert value != defaults[name], name
    args, given = cli.parse_distillation(argv_of(PID_VALUES))
    config = cli.distillation_config(args, given, "run", "cpu")
    for name, value in PID_VALUES.items():
        assert getattr(config, name) == value, name
    assert config.speed_preset == "eager"  # every speed option given: recorded as the preset resolved on a CPU
    args, given = cli.parse_distillation(["--teacher_model_path", "t.pt", "--speed", "fast", "--use_fp16", "True"])
    assert cli.distillation_config(args, given, "run", "cpu").speed_preset == "fast, use_fp16"
    # the architecture flags go to the teacher reader (files without a recorded architecture need them)
    args, given = cli.parse_distillation(["--teacher_model_path", "t.pt", "--num_channels", "32", "--class_cond", "True"])
    assert cli.distillation_config(args, given, "run", "cpu").network_flags == dict(num_channels=32, class_cond=True)


def test_every_teacher_training_flag_reaches_its_config():
    loop_flags = [f.name for f in options_of(LoopConfig)]
    values = {name: PID_VALUES[name] for name in loop_flags}
    values.update(num_channels=24, num_res_blocks=3, dropout=0.25)
    config = cli.teacher_training_config(cli.parse_teacher_training(argv_of(values)), "run")
    assert isinstance(config, TeacherTrainConfig)
    for name in loop_flags:
        assert getattr(config, name) == values[name], name
    network = config.network_config
    assert (network["model_channels"], network["num_blocks"], network["dropout"]) == (24, 3, 0.25)
    assert {k: v for k, v in network.items() if k not in ("model_channels", "num_blocks", "dropout")} == {
        k: v for k, v in digits.DIGITS_NETWORK_CONFIG.items() if k not in ("model_channels", "num_blocks", "dropout")}


SAMPLE_VALUES = dict(training_mode=TEACHER_MODE, sampler="dpm", steps=7, sigma_min=0.01, sigma_max=50.0, rho=4.0,
                     s_churn=3.0, s_tmin=0.1, s_tmax=20.0, s_noise=1.01, clip_denoised=False, num_samples=5,
                     batch_size=3, seed=9, class_label=1, use_fp16=True)


@pytest.mark.parametrize("parse", [cli.parse_sampling, cli.parse_fid])
def test_every_sampling_flag_reaches_the_sampler_and_the_request(parse):
    extra = ["--exp_dir", "run"] if parse is cli.parse_fid else []
    args, given = parse([*argv_of(SAMPLE_VALUES), *extra])
    options = cli.sampling_options(args)
    assert options == dict(sampler="dpm", steps=7, sigma_min=0.01, sigma_max=50.0, rho=4.0, s_churn=3.0, s_tmin=0.1,
                           s_tmax=20.0, s_noise=1.01, ts="", clip_denoised=False)
    assert cli.generation_request(args, given, SamplingModel(None, (3, 8, 8), 0, options)) == GenerationRequest(
        5, 3, 9, True, 1)
    args, _ = parse(["--guide_model_path", "g.pt", "--guidance", "1.5", "--vae_path", "vae", *extra])
    assert cli.guidance(args) == GuidanceOptions(guide_model_path="g.pt", guidance=1.5) and args.vae_path == "vae"
    args, _ = parse(["--training_mode", TEACHER_MODE, "--sampler", "multistep", "--ts", "0,3,6", *extra])
    assert cli.sampling_options(args)["ts"] == "0,3,6"
    # the defaults are the original's: clamped, 40 steps, Heun
    args, _ = parse(["--training_mode", TEACHER_MODE, *extra])
    assert cli.sampling_options(args) == dict(sampler="heun", steps=40, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                                              s_churn=0.0,
                                              s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, ts="", clip_denoised=True)


def test_generation_samples_with_the_options_it_is_given():
    """What the scripts hand to run_generation is what sample() computes, seeded per sample; another value of
    an option changes the images."""
    teacher = GaussianMixtureDenoiser(torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 4 - 2,
                                      stds=0.3)
    request = GenerationRequest(num_samples=4, batch_size=3, seed=3)
    base = dict(sampler="heun", steps=6, sigma_min=0.002, sigma_max=80.0, rho=7.0, s_churn=2.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, ts="", clip_denoised=False)

    def generated(**changes):
        images, _, _, _ = run_generation(teacher, (3, 4, 4), 0, request, {**base, **changes}, "cpu", progress=False)
        return images

    generators = sample_generators(3, range(4))  # each sample's noise, then its sampler noise, from its generator
    noise, _ = draw_inputs(generators, (3, 4, 4))
    options = {k: v for k, v in base.items() if k != "sampler"}
    expected = sample(teacher, noise, "heun", randn_like=per_sample_randn_like(generators), **options)
    assert torch.equal(generated(), to_uint8(expected))
    reference = generated()
    for change in (dict(steps=7), dict(s_noise=1.3), dict(s_churn=0.0), dict(sigma_max=40.0), dict(rho=3.0),
                   dict(sampler="euler", s_churn=0.0),
                   dict(clip_denoised=True)):
        assert not torch.equal(generated(**change), reference), change


def test_digits_reference_statistics_are_those_of_all_real_digits():
    detector = load_detector("digits", os.path.join(REPO, "model_zoo", "digits-classifier.pt"))
    mu, sigma = digits_reference_stats(detector)
    images, _ = digits.load_digits("all")
    assert len(images) == 1797
    with torch.no_grad():
        features = detector(detector_input(images)).double().numpy()
    assert np.allclose(mu, features.mean(0), rtol=0, atol=1e-9 * np.abs(features).max())
    assert np.allclose(sigma, np.cov(features, rowvar=False), rtol=0, atol=1e-9 * np.abs(features).max() ** 2)
    train_images, _ = digits.load_digits("train")
    with torch.no_grad():
        train_mu = detector(detector_input(train_images)).double().numpy().mean(0)
    assert not np.allclose(mu, train_mu, rtol=0, atol=1e-6 * np.abs(features).max())
