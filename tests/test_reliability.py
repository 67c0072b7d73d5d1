"""No silent wrong answers: seeds that decide, sampler and noise-level options refused before any work, a
student sampled at its own σ, interrupted saves that leave nothing to mistake for a checkpoint, folders of
another kind refused, and messages that name the flag or file. Each test shows both sides: the same input
gives the same result and another input another one (or a refusal)."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import small_run_config as make_config
from pid_diffusion import cli, process
from pid_diffusion.evaluation.sampling import load_sampling_model, sampler_options
from pid_diffusion.evaluation.walk import checkpoints_in
from pid_diffusion.generate import generate, seeded_inputs
from pid_diffusion.run_folder import TEACHER_RUN, write_run_config
from pid_diffusion.samplers import check_sampler_options, sample
from pid_diffusion.seeding import INDEX_LIMIT, SAMPLE, STEP, derived_seed, seeded_generator
from pid_diffusion.loop import RunFolderError, TrainingInterrupted
from pid_diffusion.teachers import GaussianMixtureDenoiser, gaussian_teacher
from pid_diffusion.trainer import PIDTrainer, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
STUDENT_MODE, TEACHER_MODE = "one_shot_pinn_edm_edm_one_shot", "one_shot_pinn_edm_edm_teacher"


def weights(path):
    return torch.load(path, weights_only=True)


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def run_script(script, args, cwd=REPO, log_dir=None, timeout=120):
    env = {**os.environ, **({"OPENAI_LOGDIR": str(log_dir)} if log_dir else {})}
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def progress_steps(folder):
    with open(folder / "progress.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


# ----------------------------------------------------------------------------------------------- seeds
def test_every_seed_reaches_the_cpu_generator_and_every_index_its_own_stream():
    draw = lambda seed, index: torch.randn(4, generator=seeded_generator(SAMPLE, seed, index))
    assert torch.equal(draw(7, 3), draw(7, 3))
    # the CPU generator keeps the low 32 bits of a seed: the old seed·2³² + index made every seed draw alike
    assert len({tuple(draw(seed, 3).tolist()) for seed in (0, 1, 5, -1, 2 ** 40)}) == 5
    low_bits = {derived_seed(SAMPLE, 0, index) % 2 ** 32 for index in range(100_000)}
    assert len(low_bits) == 100_000  # no two samples of a seed share a stream, on the CPU either
    assert derived_seed(SAMPLE, 0, 5) != derived_seed(STEP, 0, 5)  # samples and training steps apart
    with pytest.raises(ValueError, match="index must lie in"):
        derived_seed(SAMPLE, 0, INDEX_LIMIT)


def test_the_training_seed_decides_the_run(teacher_path, tmp_path):
    # a teacher's weights start the student and dropout is 0: only the noise of the steps can differ
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        train(make_config(teacher_path, tmp_path / name, seed=seed))
    a, b, c = (weights(tmp_path / name / "model000002.pt") for name in "abc")
    assert same_weights(a, b)
    assert not same_weights(a, c)
    recorded = json.loads((tmp_path / "c" / "run_config.json").read_text())
    assert recorded["seed"] == 8


@pytest.mark.parametrize("sampler,options", [
    ("heun", dict(s_churn=5.0, steps=4)), ("dpm", dict(s_churn=5.0, steps=3)), ("ancestral", dict(steps=4)),
    ("multistep", dict(steps=6, ts="0,2,5")), ("heun_deter", dict(steps=4)),
])
def test_every_sampler_is_reproducible_per_sample_and_follows_the_seed(sampler, options):
    # an element-wise (Gaussian) denoiser: a sample's arithmetic does not depend on its batch, so any
    # difference between batchings would be a difference in the random numbers a sample gets
    teacher = gaussian_teacher(torch.rand(3, 4, 4, dtype=torch.float64) * 2 - 1, 0.3)

    def images(seed, batch_size, world_size=1):
        parts = [(batch.indices, batch.images) for rank in range(world_size)
                 for batch in generate(teacher, 6, batch_size, seed, (3, 4, 4), rank=rank, world_size=world_size,
                                       sampler=sampler, **options)]
        order = sorted(range(len(parts)), key=lambda k: parts[k][0][0])
        return torch.cat([parts[k][1] for k in order])

    reference = images(3, 6)
    assert torch.equal(reference, images(3, 6))
    # batch size and process count change which samples share a call, never what a sample is
    assert torch.equal(reference, images(3, 4))
    assert torch.equal(reference, images(3, 2, world_size=2))
    assert (reference - images(4, 6)).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every sample changes with the seed


def test_stochastic_samplers_draw_their_noise_from_the_samples_generators():
    """Churn must draw from sample i's generator, after its noise: calling the sampler with that randn_like
    reproduces generate()'s images exactly, and a global-generator draw would not."""
    teacher = GaussianMixtureDenoiser(torch.rand(3, 3, 4, 4) * 2 - 1, stds=0.1)
    (batch,) = generate(teacher, 3, 3, 11, (3, 4, 4), sampler="heun", steps=4, s_churn=5.0)
    generators = [seeded_generator(SAMPLE, 11, i) for i in range(3)]
    noise = torch.stack([torch.randn((3, 4, 4), generator=g) for g in generators])
    by_hand = sample(teacher, noise, "heun", steps=4, s_churn=5.0,
                     randn_like=lambda x: torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x))
    assert torch.equal(batch.images, by_hand.clamp(-1, 1))
    torch.manual_seed(0)
    unseeded = sample(teacher, noise, "heun", steps=4, s_churn=5.0)
    assert not torch.equal(batch.images, unseeded.clamp(-1, 1))


# ------------------------------------------------------------------------------ options refused up front
@pytest.mark.parametrize("options,message", [
    (dict(sampler="multistep", steps=40), "needs --ts with at least 2 grid indices"),
    (dict(sampler="multistep", steps=40, ts="39,22,0"), "must increase strictly"),
    (dict(sampler="multistep", steps=40, ts="0,99"), "lie in 0 … 39"),
    (dict(sampler="heun", ts="0,3"), "--ts is read by --sampler multistep only"),
    (dict(sampler="heun", s_churn=-5.0), "--s_churn must be a finite number ≥ 0"),
    (dict(sampler="heun", s_noise=float("nan")), "--s_noise must be"),
    (dict(sampler="heun", s_tmin=2.0, s_tmax=1.0), "0 ≤ s_tmin ≤ s_tmax"),
    (dict(sampler="heun", sigma_max=0.001), "--sigma_max must be a finite number above --sigma_min 0.002"),
    (dict(sampler="heun", sigma_min=0.0), "--sigma_min must be a positive number"),
    (dict(sampler="euler", steps=0), "--steps must be a positive integer"),
])
def test_sampler_options_that_would_write_garbage_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        check_sampler_options(**options)
    with pytest.raises(ValueError, match=message):  # the library's entry point refuses them too
        sample(GaussianMixtureDenoiser(torch.zeros(1, 3, 4, 4), stds=0.1), torch.randn(1, 3, 4, 4), **options)
    check_sampler_options(**{**options, **_valid_version(options)})  # the same sampler with valid values runs


def _valid_version(options):
    return dict(steps=40, sigma_min=0.002, sigma_max=80.0, s_churn=0.0, s_noise=1.0, s_tmin=0.0, s_tmax=float("inf"),
                ts="0,22,39" if options["sampler"] == "multistep" else "")


@pytest.mark.parametrize("flags,message", [
    (["--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    (["--num_samples", "0"], "--num_samples must be at least 1"),
    (["--training_mode", TEACHER_MODE, "--s_churn", "-5"], "--s_churn must be"),
    (["--training_mode", TEACHER_MODE, "--sigma_max", "0.001"], "--sigma_max must be"),
    (["--training_mode", TEACHER_MODE, "--sampler", "multistep"], "needs --ts"),
])
def test_image_sample_refuses_bad_options_before_any_work(teacher_path, tmp_path, flags, message):
    out = tmp_path / "out"
    done = run_script("image_sample.py", ["--model_path", teacher_path, "--training_mode", STUDENT_MODE, *flags],
                      log_dir=out)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not out.exists()  # nothing was made


@pytest.mark.parametrize("overrides,message", [
    (dict(sigma_min=0.0), "--sigma_min must be a positive number"), (dict(sigma_min=-1.0), "--sigma_min must be"),
    (dict(sigma_min=float("nan")), "--sigma_min must be"), (dict(sigma_max=0.002), "--sigma_max must be a finite"),
    (dict(sigma_max=0.001), "above --sigma_min 0.002"), (dict(sigma_max=float("inf")), "--sigma_max must be"),
    (dict(opt_eps=0.0), "--opt_eps must be a positive number"), (dict(rho=0.0), "--rho must be a positive"),
    (dict(ema_rate="0.99,0.99"), "lists the rate 0.99 twice"), (dict(ema_rate="0.99,1.5"), "must lie in \\[0, 1\\)"),
    (dict(dropout=1.0), "--dropout must lie in"), (dict(weight_decay=-1.0), "--weight_decay must be"),
])
def test_training_options_that_would_diverge_or_mislead_are_refused(teacher_path, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        PIDTrainer(make_config(teacher_path, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_uneven_micro_batches_are_refused_and_a_per_process_batch_is_recorded(teacher_path, tmp_path):
    with pytest.raises(ValueError, match="--microbatch 3 does not divide the 8 images per process.*\\[1, 2, 4, 8\\]"):
        PIDTrainer(make_config(teacher_path, tmp_path / "a", global_batch_size=8, microbatch=3))
    train(make_config(teacher_path, tmp_path / "b", global_batch_size=8, microbatch=4))  # a divisor runs
    train(make_config(teacher_path, tmp_path / "c", batch_size=3, global_batch_size=8))
    recorded = json.loads((tmp_path / "c" / "run_config.json").read_text())
    assert recorded["global_batch_size"] == 3  # what ran, not the 8 that --batch_size overrode
    assert "makes the global batch 3 (not --global_batch_size 8)" in (tmp_path / "c" / "log.txt").read_text()


def test_ema_rates_are_compared_as_numbers_and_an_empty_list_is_said(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path / "a", ema_rate="0.99,0.999"))
    train(make_config(teacher_path, tmp_path / "a", ema_rate="0.990,0.999", total_training_steps=4))  # the same rates
    assert (tmp_path / "a" / "ema_0.99_000004.pt").exists()
    with pytest.raises(ValueError, match="ema_rate"):  # other rates are a change
        train(make_config(teacher_path, tmp_path / "a", ema_rate="0.99,0.9999", total_training_steps=6))
    train(make_config(teacher_path, tmp_path / "b", ema_rate=""))
    assert "no EMA: --ema_rate is empty" in (tmp_path / "b" / "log.txt").read_text()


# ---------------------------------------------------------------------------------- σ of the student
def test_a_student_is_sampled_at_the_noise_levels_it_was_trained_at(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path / "run", sigma_max=40.0, sigma_min=0.004))
    path = str(tmp_path / "run" / "ema_0.9_000002.pt")
    defaults = sampler_options(STUDENT_MODE, "heun", steps=40, sigma_min=0.002, sigma_max=80.0, s_churn=0.0, s_tmin=0.0,
                               s_tmax=float("inf"), s_noise=1.0, ts="", clip_denoised=True)
    loaded = load_sampling_model(STUDENT_MODE, path, {}, "cpu", defaults)
    student, options = loaded.model, loaded.options
    assert (options["sigma_min"], options["sigma_max"]) == (0.004, 40.0) and student.sigma_max == 40.0
    noise, labels = seeded_inputs(0, range(2), (3, 8, 8), label_dim=3)
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    with torch.no_grad():
        expected = student(40.0 * noise, 0.004, one_hot).clamp(-1, 1)
        assert torch.allclose(sample(student, noise, class_labels=one_hot, **options), expected, rtol=0, atol=1e-6)
        assert not torch.allclose(sample(student, noise, class_labels=one_hot, **defaults), expected, atol=1e-3)
    with pytest.raises(ValueError, match="trained with --sigma_max 40 .*--sigma_max 80 was given.*drop --sigma_max"):
        load_sampling_model(STUDENT_MODE, path, {}, "cpu", defaults, given={"sigma_max"})
    same = {**defaults, "sigma_max": 40.0}
    assert load_sampling_model(STUDENT_MODE, path, {}, "cpu", same, given={"sigma_max"}).options["sigma_max"] == 40.0
    refused = run_script("image_sample.py", ["--model_path", path, "--sigma_max", "80", "--num_samples", "2"],
                         log_dir=tmp_path / "out")
    assert refused.returncode == 1 and "trained with --sigma_max 40" in refused.stderr


# ------------------------------------------------------------------------------- interrupted saves
def test_a_second_signal_during_a_save_waits_for_the_checkpoint(teacher_path, tmp_path, monkeypatch):
    from pid_diffusion import run_folder

    real_save = run_folder.atomic_torch_save
    sent = []

    def save_interrupted(obj, path):  # Ctrl-C twice while the first EMA file of step 2 is written
        if os.path.basename(str(path)).startswith("ema_") and not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, path)

    monkeypatch.setattr(run_folder, "atomic_torch_save", save_interrupted)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT at step 2"):
        train(make_config(teacher_path, tmp_path, total_training_steps=6))
    assert sent and sorted(n for n in os.listdir(tmp_path) if n.endswith(".pt")) == [
        "ema_0.9_000002.pt", "model000002.pt", "opt000002.pt", "trainer_state000002.pt"]
    monkeypatch.setattr(run_folder, "atomic_torch_save", real_save)
    resumed = train(make_config(teacher_path, tmp_path, total_training_steps=4))
    assert resumed.step == 4 and progress_steps(tmp_path) == [1, 2, 3, 4]


def test_the_files_of_an_interrupted_save_and_the_lost_steps_log_are_cleared(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path, total_training_steps=4))
    # what a killed save leaves: step 6's EMA and optimizer files without its model file, rows 5 and 6 logged
    shutil.copy(tmp_path / "ema_0.9_000004.pt", tmp_path / "ema_0.9_000006.pt")
    shutil.copy(tmp_path / "opt000004.pt", tmp_path / "opt000006.pt")
    with open(tmp_path / "progress.csv") as f:
        rows = f.read().splitlines()
    with open(tmp_path / "progress.csv", "a") as f:
        f.write("\n".join(rows[-1].replace("4", "5", 1) for _ in range(2)) + "\n")
    assert [name for name, _, _ in checkpoints_in(tmp_path)][-2:] == ["ema_0.9_000004", "model000004"]  # not evaluated
    walk = run_script("fid_evaluation.py", ["--exp_dir", str(tmp_path), "--detector", "pixels", "--ref_path",
                                            str(_pixel_reference(tmp_path)), "--num_samples", "4", "--batch_size", "4",
                                            "--checkpoints", ""])
    assert "ema_0.9_000006: skipped, its checkpoint's save was interrupted" in walk.stdout, walk.stderr

    train(make_config(teacher_path, tmp_path, total_training_steps=6))
    log = (tmp_path / "log.txt").read_text()
    assert "removed 2 file(s) of checkpoints whose save was interrupted" in log and "ema_0.9_000006.pt" in log
    assert "progress.csv: removed 2 row(s) after step 4" in log
    assert progress_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "model000006.pt").exists()


def _pixel_reference(folder):
    import numpy as np
    path = folder.parent / "pixels-ref.npz"
    np.savez(path, mu=np.zeros(192), sigma=np.eye(192))
    return path


def test_the_last_step_is_logged_when_the_log_interval_is_longer_than_the_run(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path, total_training_steps=3, log_interval=100, save_interval=3))
    assert progress_steps(tmp_path) == [3]


def test_a_signal_before_the_training_loop_ends_the_script_with_one_line(capsys):
    def body(info):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the script")

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        process.run_script(body)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM: every file written so far is complete" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is previous  # the caller's handler is back


# ------------------------------------------------------------------------------- run kinds, processes
def test_a_folder_of_another_kind_of_run_is_refused_whatever_the_flags_say(teacher_path, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    write_run_config(str(tmp_path), {"run_kind": TEACHER_RUN, "network_config": {}, "ema_rate": "0.9"})
    for allow in (False, True):
        with pytest.raises(RunFolderError, match="holds a teacher training .* run .*not a PID distillation"):
            PIDTrainer(make_config(teacher_path, tmp_path, allow_changed_settings=allow))
    train(make_config(teacher_path, tmp_path / "pid"))  # a PID folder is a PID trainer's
    from pid_diffusion.teacher_trainer import TeacherTrainConfig, TeacherTrainer
    with pytest.raises(RunFolderError, match="holds a PID distillation .*not a teacher training"):
        TeacherTrainer(TeacherTrainConfig(log_dir=str(tmp_path / "pid"), allow_changed_settings=True))


@pytest.mark.skipif(MPIRUN is None, reason="no mpirun: install the mpich extra (pip install -e '.[mpich]')")
def test_resuming_on_another_number_of_processes_is_said_and_recorded(teacher_path, tmp_path):
    args = ["--teacher_model_path", teacher_path, "--global_batch_size", "4", "--loss_norm", "l2", "--ema_rate", "0.9",
            "--log_interval", "1", "--save_interval", "2"]
    env = {**os.environ, "OPENAI_LOGDIR": str(tmp_path)}
    script = os.path.join(REPO, "scripts", "cm_train.py")
    first = subprocess.run([sys.executable, script, *args, "--total_training_steps", "2"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([MPIRUN, "-np", "2", sys.executable, script, *args, "--total_training_steps", "4"], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    assert "resumed on 2 process(es), the checkpoint was written by 1" in second.stdout
    changes = json.loads((tmp_path / "run_config.json").read_text())["changes"]
    assert {"step": 2, "setting": "world_size", "from": 1, "to": 2} in changes


# ----------------------------------------------------------------------------------- files and messages
def test_sampling_never_replaces_samples_unless_asked(teacher_path, tmp_path):
    args = ["--training_mode", TEACHER_MODE, "--model_path", teacher_path, "--sampler", "euler", "--steps", "2",
            "--num_samples", "3", "--batch_size", "3"]
    first = run_script("image_sample.py", [*args, "--seed", "1"], log_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "samples_3x8x8x3.npz").read_bytes()
    again = run_script("image_sample.py", [*args, "--seed", "2"], log_dir=tmp_path)
    assert again.returncode == 1 and "samples_3x8x8x3.npz exists" in again.stderr and "--overwrite True" in again.stderr
    assert (tmp_path / "samples_3x8x8x3.npz").read_bytes() == before
    replaced = run_script("image_sample.py", [*args, "--seed", "2", "--overwrite", "True"], log_dir=tmp_path)
    assert replaced.returncode == 0 and (tmp_path / "samples_3x8x8x3.npz").read_bytes() != before
    other_count = [*args[:-4], "--num_samples", "2", "--batch_size", "2", "--seed", "2"]
    (tmp_path / "samples_grid.png").unlink()  # the samples file alone says that the folder holds an earlier run
    refused = run_script("image_sample.py", other_count, log_dir=tmp_path)
    assert refused.returncode == 1 and "samples_3x8x8x3.npz exists" in refused.stderr
    assert "samples_2x8x8x3.npz" not in os.listdir(tmp_path)
    replaced = run_script("image_sample.py", [*other_count, "--overwrite", "True"], log_dir=tmp_path)
    assert replaced.returncode == 0 and "removed samples_3x8x8x3.npz" in replaced.stdout
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".npz")) == ["samples_2x8x8x3.npz"]


def test_abbreviated_flags_are_refused_not_misread(teacher_path, tmp_path):
    done = run_script("cm_train.py", ["--teacher_model_path", teacher_path, "--mixed_prec", "fp16"], log_dir=tmp_path)
    assert done.returncode == 2 and "unrecognized arguments: --mixed_prec" in done.stderr


def test_wrong_files_get_messages_that_point_the_right_way(teacher_path, tmp_path):
    from pid_diffusion.checkpoint import StudentLoadError, TeacherLoadError, load_student, load_teacher, read_teacher_file
    from pid_diffusion.evaluation.statistics import load_reference_stats

    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(StudentLoadError, match="is a teacher file .*--training_mode one_shot_pinn_edm_edm_teacher"):
        load_student(teacher_path)
    for path in (png, tmp_path / "run_config.json"):
        path.write_bytes(path.read_bytes() if path.exists() else b'{"seed": 0}')
        with pytest.raises(StudentLoadError, match="is not a student checkpoint"):
            load_student(path)
    with pytest.raises(ValueError, match="picture.png: not a reference-statistics .npz"):
        load_reference_stats(str(png))
    with pytest.raises(FileNotFoundError, match="is a folder; give the teacher file in it"):
        load_teacher(str(tmp_path))
    renamed = tmp_path / "teacher.pkl"
    renamed.write_bytes(png.read_bytes())
    with pytest.raises(TeacherLoadError, match="teacher.pkl: not an EDM network snapshot: it is no pickle"):
        load_teacher(str(renamed))
    # a digits-sized bare state dict: no flag suggestion that cannot work, the way that does
    _, state = read_teacher_file(teacher_path)
    (tmp_path / "bare").mkdir()
    torch.save(dict(state), tmp_path / "bare" / "bare.pt")
    with pytest.raises(TeacherLoadError, match="official flags cannot describe.*run_config.json of its run folder"):
        load_teacher(str(tmp_path / "bare" / "bare.pt"))
    with pytest.raises(FileNotFoundError, match="--lpips_vgg_weights .* is a folder"):
        PIDTrainer(make_config(teacher_path, tmp_path / "run", loss_norm="lpips", lpips_vgg_weights=str(tmp_path)))


def test_resume_checkpoint_must_name_a_model_file(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path / "a"))
    with pytest.raises(ValueError, match="give the model file of a checkpoint, model%06d.pt"):
        train(make_config(teacher_path, tmp_path / "b", resume_checkpoint=str(tmp_path / "a" / "ema_0.9_000002.pt")))
    resumed = train(make_config(teacher_path, tmp_path / "c", total_training_steps=3,
                                resume_checkpoint=str(tmp_path / "a" / "model000002.pt")))
    assert resumed.step == 3


def test_options_that_would_be_silently_ignored_are_refused(teacher_path, tmp_path):
    from pid_diffusion.evaluation.sampling import load_sampling_model
    from pid_diffusion.log import log_formats

    with pytest.raises(ValueError, match="--vae_path vae: .* models pixels, not latents.*drop --vae_path"):
        PIDTrainer(make_config(teacher_path, tmp_path / "run", vae_path="vae"))
    with pytest.raises(ValueError, match="models pixels, not latents"):
        load_sampling_model("one_shot_pinn_edm_edm_teacher", teacher_path, {}, "cpu",
                            dict(sampler="euler", steps=2), vae_path="vae")
    with pytest.raises(ValueError, match="names no format: the run would log nothing"):
        log_formats(",")
    args, given = cli.parse_distillation(["--teacher_model_path", "t.pt", "--use_fp16", "True", "--mixed_precision",
                                          "bf16"])
    with pytest.raises(ValueError, match="--use_fp16 True asks for float16 and --mixed_precision bf16"):
        cli.distillation_config(args, given, "run", "cpu")
    args, given = cli.parse_distillation(["--teacher_model_path", "t.pt", "--use_fp16", "True", "--mixed_precision",
                                          "fp16"])  # the same thing said twice: accepted
    assert cli.distillation_config(args, given, "run", "cpu").mixed_precision == "fp16"


@pytest.mark.parametrize("script", ["cm_train.py", "demo_metrics.py"])
def test_ctrl_c_while_a_script_imports_torch_ends_it_with_one_line(script):
    started = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", script), "--help"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and started.poll() is None:  # until torch's library is being loaded
        with open(f"/proc/{started.pid}/maps") as maps:
            if "libtorch" in maps.read():
                break
        time.sleep(0.002)
    started.send_signal(signal.SIGINT)
    out, err = started.communicate(timeout=120)
    assert (started.returncode, err, out) == (130, "stopped by SIGINT while starting (importing torch): nothing was "
                                                   "written\n", "")
    finished = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0 and "usage:" in finished.stdout  # left alone, the same command starts
