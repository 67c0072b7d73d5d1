"""The EDM2 digits route: EDM2's training objective, learning-rate schedule and power-function EMA against their
written-out forms, the teacher-training script in the edm2 family (pixels, unconditional, latents), the digits
autoencoder, the demo metrics of guided and latent teachers, and the whole route's driver on a few steps."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from pid_diffusion import cli
from pid_diffusion.checkpoint import read_teacher_file, load_teacher
from pid_diffusion.ema import EMA, MAX_POWER_FUNCTION_STD, power_function_exponent
from pid_diffusion.families.edm2 import ENCODER_KEY, LATENT_ENCODER, PIXEL_ENCODER
from pid_diffusion.losses import edm2_denoising_loss
from pid_diffusion.networks.edm2 import EDM2Precond
from pid_diffusion.teacher_trainer import TeacherTrainer, edm2_learning_rate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
diffusers = pytest.importorskip("diffusers", reason="the [latent] extra (diffusers) is not installed")


# ------------------------------------------------------------------ EDM2's objective, written out
def test_edm2_loss_is_the_uncertainty_weighted_error():
    torch.manual_seed(0)
    net = EDM2Precond(8, 1, 10, use_fp16=False, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                      attn_resolutions=[4], channels_per_head=8, logvar_channels=8).eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("gain") or name.startswith("logvar"):
                parameter.normal_()  # gains and the log-variance head matter
    images, noise = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    sigma, labels = torch.tensor([0.05, 1.0, 20.0]), torch.eye(10)[:3]
    with torch.no_grad():
        loss = edm2_denoising_loss(net, images, sigma, noise, labels)
        denoised, logvar = net(images + sigma.reshape(-1, 1, 1, 1) * noise, sigma, labels, return_logvar=True)
    weight = ((sigma ** 2 + 0.25) / (sigma * 0.5) ** 2).reshape(-1, 1, 1, 1)
    expected = (weight / logvar.exp() * (denoised - images) ** 2 + logvar).mean((1, 2, 3))
    assert loss.shape == (3,) and torch.allclose(loss, expected, rtol=1e-6)
    assert logvar.flatten().unique().numel() == 3  # a log-variance per noise level


def test_edm2_learning_rate_schedule_in_closed_form():
    lr = lambda step: edm2_learning_rate(0.01, step, ref_steps=1000, rampup_steps=100)  # noqa: E731
    assert [lr(0), lr(50), lr(100), lr(1000)] == [0.0, 0.005, 0.01, 0.01]
    assert lr(4000) == pytest.approx(0.005) and lr(9000) == pytest.approx(0.01 / 3)
    assert edm2_learning_rate(0.01, 0, 0, 0) == 0.01  # both off: constant


def test_power_function_ema_weighs_update_t_as_t_to_the_gamma():
    for std in (0.05, 0.1, 0.2):  # γ of σ_rel, as EDM2 defines σ_rel
        gamma = power_function_exponent(std)
        assert math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) == pytest.approx(std, rel=1e-9)
    with pytest.raises(ValueError, match="σ_rel must lie in"):
        power_function_exponent(MAX_POWER_FUNCTION_STD)
    module = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(module, (0.1,), power_function=True)
    thetas = torch.randn(50, generator=torch.Generator().manual_seed(0))
    for t, theta in enumerate(thetas):  # update t + 1 of the run, after t updates
        module.weight.data.fill_(float(theta))
        ema.update(t)
    gamma, steps = power_function_exponent(0.1), torch.arange(1, 51, dtype=torch.float64)
    weights = steps ** (gamma + 1) - (steps - 1) ** (gamma + 1)  # the discrete t^γ profile
    expected = float((weights * thetas.double()).sum() / weights.sum())
    assert ema.averages[0.1][0].item() == pytest.approx(expected, rel=1e-5)
    exponential = EMA(module, (0.9,))
    assert exponential.rate(0.9, 0) == exponential.rate(0.9, 49) == 0.9  # the original's fixed rates unchanged


# ------------------------------------------------------------------ training EDM2 digits teachers
def teacher_args(*flags):
    return cli.parse_teacher_training(["--family", "edm2", "--num_channels", "8", "--global_batch_size", "8",
                                       "--dropout", "0", *flags])


def write_tiny_vae(folder):
    from pid_diffusion.vae_trainer import digits_autoencoder, save_autoencoder

    torch.manual_seed(0)
    save_autoencoder(digits_autoencoder().eval(), str(folder))
    return str(folder)


@pytest.mark.parametrize("kind", ["pixel", "unconditional", "latent"])
def test_edm2_teachers_train_with_edm2_s_objective_and_export(tmp_path, kind):
    flags = {"pixel": [], "unconditional": ["--class_cond", "False"],
             "latent": ["--latent_vae", None, "--attention_resolutions", "2"]}[kind]
    if kind == "latent":
        flags[1] = write_tiny_vae(tmp_path / "vae")
    args = teacher_args(*flags, "--total_training_steps", "3", "--save_interval", "3", "--log_interval", "1",
                        "--lr_rampup_steps", "2", "--lr_ref_steps", "1")
    assert args.ema_rate == "0.05,0.1"  # EDM2's power-function EMAs unless given
    config = cli.teacher_training_config(args, str(tmp_path / "run"))
    assert (config.p_mean, config.p_std) == ((-0.4, 1.0) if kind == "latent" else (-0.8, 1.6))
    trainer = TeacherTrainer(config)
    try:
        assert type(trainer.network).__name__ == "EDM2Precond" and trainer.ema.exponents is not None
        images, labels, sigma, noise = trainer.step_inputs(0)
        assert images.shape == noise.shape == ((8, 4, 4, 4) if kind == "latent" else (8, 1, 8, 8))
        assert (labels is None) == (kind == "unconditional")
        if kind == "latent":  # EDM2's latents: per channel about zero mean and standard deviation 0.5
            all_latents = trainer.codec.encode_latents(trainer.images, generator=torch.Generator().manual_seed(0))
            assert all_latents.mean((0, 2, 3)).abs().max() < 0.05
            assert (all_latents.std((0, 2, 3)) - 0.5).abs().max() < 0.05
        trainer.run()
        trainer.export(0.1, str(tmp_path / "teacher.pt"))
    finally:
        trainer.close()
    with open(tmp_path / "run" / "progress.csv") as f:  # the lr of the next update: ramped up, then 1/√(step)
        logged = [float(row.split(",")[header.index("lr")]) for header in [f.readline().strip().split(",")]
                  for row in f]
    assert logged == pytest.approx([1e-3, 2e-3 / math.sqrt(2), 2e-3 / math.sqrt(3)])  # --lr 2e-3, the default
    config, state = read_teacher_file(tmp_path / "teacher.pt")
    assert config["family"] == "edm2" and config["label_dim"] == (0 if kind == "unconditional" else 10)
    assert any(key.startswith("logvar_") for key in state)  # the whole EDM2 Precond, its uncertainty head too
    encoder = config[ENCODER_KEY]
    assert encoder["kind"] == (LATENT_ENCODER if kind == "latent" else PIXEL_ENCODER)
    teacher = load_teacher(tmp_path / "teacher.pt")
    ema = torch.load(tmp_path / "run" / "ema_0.1_000003.pt", weights_only=True)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in ema.items())


@pytest.mark.parametrize("flags,message", [
    (["--family", "edm", "--latent_vae", "vae"], "--latent_vae trains an EDM2 latent teacher: add --family edm2"),
    (["--family", "edm2", "--ema_rate", "0.999"], "with --family edm2 it lists the σ_rel of power-function EMAs"),
    (["--family", "edm3"], "--family 'edm3' is not supported; valid: edm, edm2"),
])
def test_teacher_training_refuses_what_edm2_cannot_train(flags, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse_teacher_training(flags)
    assert message in capsys.readouterr().err


def test_the_digits_autoencoder_script_trains_reports_and_never_replaces(tmp_path):
    out = tmp_path / "vae"
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train_vae.py"), "--out", str(out), "--steps",
                           "3", "--batch_size", "8"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "reconstruction.json").read_text())
    assert report["steps"] == 3 and report["held_out_rmse_pixel_levels"] > 0 and report["held_out_digit_fid"] > 0
    assert diffusers.AutoencoderKL.from_pretrained(str(out)).config.in_channels == 1
    again = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train_vae.py"), "--out", str(out)],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode == 2 and f"--out {out} exists" in again.stderr


def test_the_edm2_digits_route_runs_end_to_end_on_a_few_steps(tmp_path):
    """The driver's every stage on tiny budgets: the autoencoder, four teachers, the guidance table, PID of the
    pixel, autoguided, classifier-free guided and latent teachers, their demo metrics and the summary."""
    zoo, out = tmp_path / "zoo", tmp_path / "out"
    zoo.mkdir()
    command = [sys.executable, os.path.join(REPO, "scripts", "edm2_digits.py"), "--zoo", str(zoo), "--out", str(out),
               "--teacher_steps", "4", "--vae_steps", "2", "--pid_steps", "2", "--samples", "20", "--weights", "1,2",
               "--processes", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("digits-vae", "digits-edm2.pt", "digits-edm2-autoguide.pt", "digits-edm2-uncond.pt",
                 "digits-edm2-latent.pt"):
        assert (zoo / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distilled_weights"] == {"autoguided": 2.0, "cfg": 2.0}
    assert [w for w, _, _ in summary["guidance"]["cfg"]] == [1.0, 2.0]
    runs = summary["runs"]
    assert set(runs) == {"pixel", "autoguided", "cfg", "latent"}
    assert [r["nfe"] for r in runs["cfg"][:3]] == [70, 10, 20] and runs["pixel"][0]["nfe"] == 35  # guided: 2 calls
    run_config = json.loads((out / "pid-cfg" / "run_config.json").read_text())
    assert run_config["guide_model_path"].endswith("digits-edm2-uncond.pt") and run_config["guidance"] == 2.0
    latent = json.loads((out / "pid-latent" / "run_config.json").read_text())
    assert latent["network_config"][ENCODER_KEY]["vae_name"] == os.path.join(str(zoo), "digits-vae")
    assert "| generator | network calls | digit FID |" in (out / "summary.md").read_text()
    assert (out / "pid-latent" / "teacher_vs_student.png").exists()
    # a second call keeps every file and measures nothing again
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "exists: kept" in again.stdout and "measured: kept" in again.stdout
    missing = subprocess.run([*command[:2], "--distil_only", "--zoo", str(tmp_path / "empty")], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and "--distil_only needs the shipped teachers" in missing.stderr


def test_the_quickstart_s_edm2_option_never_reuses_a_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "quickstart.sh"), "--edm2"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "QUICKSTART_RUN_DIR": str(tmp_path / "taken")})
    assert done.returncode == 2 and "exists; give another QUICKSTART_RUN_DIR" in done.stderr
