import csv
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import relative_error, tiny_song_config
from pid_diffusion import cli
from pid_diffusion import trainer as trainer_module
from pid_diffusion.checkpoint import load_student, save_teacher
from pid_diffusion.losses import pid_loss
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.samplers import sample
from pid_diffusion.loop import FP16_INITIAL_LOG2_SCALE, TrainingDivergedError, per_process_batch
from pid_diffusion.trainer import PIDTrainer, TrainConfig, train
from tolerances import between_implementations, network_roundings, pid_step_bounds, rounding_bound

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO, "scripts", "cm_train.py")
MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
TINY_FLAGS = ["--global_batch_size", "8", "--loss_norm", "l2", "--ema_rate", "0.9,0.99", "--log_interval", "2",
              "--lr", "0.001"]


def make_config(teacher_path, log_dir, **overrides):
    values = dict(teacher_model_path=teacher_path, log_dir=str(log_dir), global_batch_size=8, loss_norm="l2",
                  ema_rate="0.9,0.99", log_interval=2, save_interval=2, total_training_steps=4, lr=1e-3)
    values.update(overrides)
    return TrainConfig(**values)


def run_script(args, log_dir, processes=None, timeout=240):
    command = [sys.executable, TRAIN_SCRIPT, *args]
    if processes:
        command = [MPIRUN, "-np", str(processes), *command]
    env = {**os.environ, "OPENAI_LOGDIR": str(log_dir)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def load(path):
    return torch.load(path, weights_only=True)


def total_norm(tensors):
    """The norm of all the tensors together."""
    return float(sum(t.double().pow(2).sum() for t in tensors) ** 0.5)


def read_csv_column(path, name):
    """A column of a CSV file, its empty cells left out ([] when the column is absent)."""
    with open(path, newline="") as f:
        return [row[name] for row in csv.DictReader(f) if row.get(name)]


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_checkpoint(dir_a, dir_b, step):
    for name in (f"model{step:06d}.pt", f"ema_0.9_{step:06d}.pt", f"ema_0.99_{step:06d}.pt"):
        assert_same_tensors(load(os.path.join(dir_a, name)), load(os.path.join(dir_b, name)))
    opt_a, opt_b = load(os.path.join(dir_a, f"opt{step:06d}.pt")), load(os.path.join(dir_b, f"opt{step:06d}.pt"))
    for key, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][key][name]))


def run_difference_bounds(teacher_path, log_dir, steps):
    """{parameter: bound on ‖Δ‖} between two runs of TINY_FLAGS' training that differ only in rounding
    (one process or two): each step's update differs by at most the first step's relative gradient
    bound (pid_step_bounds) times its size, and each updated weight may round either way (one ulp)."""
    trainer = PIDTrainer(make_config(teacher_path, log_dir, total_training_steps=steps))
    _, gradient_bound = pid_step_bounds(trainer)
    previous = {k: v.clone() for k, v in trainer.student.net.state_dict().items()}
    bounds = dict.fromkeys(previous, 0.0)
    for _ in range(steps):
        trainer.train_step()
        for key, value in trainer.student.net.state_dict().items():
            ulp = torch.finfo(value.dtype).eps * value.norm()
            bounds[key] += float(gradient_bound * (value - previous[key]).norm() + ulp)
            previous[key] = value.clone()
    trainer.close()
    return bounds


@pytest.mark.skipif(MPIRUN is None, reason="no mpirun: install the mpich extra (pip install -e '.[mpich]')")
@pytest.mark.parametrize("use_fp16", [False, True])
def test_two_processes_match_one_process(teacher_path, tmp_path, use_fp16):
    """The same run on one process and two (fp16: loss scaling, the overflow check on the all-reduced
    gradients), to rounding."""
    args = ["--teacher_model_path", teacher_path, *TINY_FLAGS, "--total_training_steps", "3", "--save_interval", "3",
            "--use_fp16", str(use_fp16)]
    single = run_script(args, tmp_path / "one")
    double = run_script([*args, "--ddp_bucket_cap_mb", "0"], tmp_path / "two", processes=2)  # fast's one bucket
    assert single.returncode == 0, single.stderr
    assert double.returncode == 0, double.stderr
    assert "2 process(es) on cpu (gradients all-reduced in one bucket)" in double.stdout
    assert double.stdout.count("PID distillation") == 1  # rank 0 prints
    one, two = load(tmp_path / "one" / "model000003.pt"), load(tmp_path / "two" / "model000003.pt")
    moved = [k for k in one if not torch.equal(one[k], load(teacher_path)["state_dict"]["model." + k])]
    assert len(moved) > len(one) // 2  # training really changed the weights
    if use_fp16:  # each is the float32 run plus float16's rounding: a step skipped or applied on one process
        # only, or an unsynchronised scale, would move the weights by a third of three steps' movement
        train(make_config(teacher_path, tmp_path / "fp32", total_training_steps=3, save_interval=3))
        fp32, start = load(tmp_path / "fp32" / "model000003.pt"), load(teacher_path)["state_dict"]
        movement = total_norm(fp32[k] - start["model." + k] for k in one)
        for run in (one, two):  # measured: 0.4% and 0.6% (the rounding depends on the CPU's fp16 kernels)
            assert total_norm(run[k] - fp32[k] for k in one) <= 0.05 * movement
    else:
        bounds = run_difference_bounds(teacher_path, tmp_path / "bounds", steps=3)
        assert all((one[k] - two[k]).norm() <= bounds[k] for k in one)
    if use_fp16:  # fp16 starts at 2^20, which overflows on this network: both runs skipped steps on the way
        two_scales = read_csv_column(tmp_path / "two" / "progress.csv", "lg_loss_scale")
        assert len(two_scales) == 2 and float(two_scales[0]) < FP16_INITIAL_LOG2_SCALE - 1


@pytest.mark.skipif(TORCHRUN is None, reason="no torchrun beside this Python (it comes with torch)")
def test_torchrun_launches_the_same_run_as_one_process(teacher_path, tmp_path):
    args = ["--teacher_model_path", teacher_path, *TINY_FLAGS, "--total_training_steps", "3", "--save_interval", "3"]
    single = run_script(args, tmp_path / "one")
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OPENAI_LOGDIR": str(tmp_path / "torchrun")}
    launched = subprocess.run([TORCHRUN, "--nproc_per_node", "2", TRAIN_SCRIPT, *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=240)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "2 process(es) on cpu" in launched.stdout
    one, three = load(tmp_path / "one" / "model000003.pt"), load(tmp_path / "torchrun" / "model000003.pt")
    bounds = run_difference_bounds(teacher_path, tmp_path / "bounds", steps=3)
    assert all((one[k] - three[k]).norm() <= bounds[k] for k in one)


def test_resume_is_bit_identical_and_training_stops(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path / "straight", total_training_steps=4))
    train(make_config(teacher_path, tmp_path / "resumed", total_training_steps=2))
    resumed = train(make_config(teacher_path, tmp_path / "resumed", total_training_steps=4))
    assert resumed.step == 4
    assert_same_checkpoint(tmp_path / "straight", tmp_path / "resumed", 4)
    assert not os.path.exists(tmp_path / "straight" / "model000006.pt")
    log = open(tmp_path / "resumed" / "log.txt").read()
    assert "resumed from" in log and "model000002.pt at step 2" in log


def test_killed_run_resumes_from_last_complete_checkpoint(teacher_path, tmp_path):
    args = ["--teacher_model_path", teacher_path, *TINY_FLAGS, "--save_interval", "1"]
    reference = run_script(args + ["--total_training_steps", "30"], tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "OPENAI_LOGDIR": str(killed_dir)}
    process = subprocess.Popen([sys.executable, TRAIN_SCRIPT, *args, "--total_training_steps", "30"], env=env,
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed_dir / "model000003.pt").exists():
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Whatever the kill interrupted, also leave the debris of a save cut short: a temporary file and a
    # step whose model and optimizer files exist but whose EMA file does not.
    newest = max(int(n[5:11]) for n in os.listdir(killed_dir) if n.startswith("model"))
    broken = newest + 1
    for name in (f"model{broken:06d}.pt", f"opt{broken:06d}.pt", f"trainer_state{broken:06d}.pt"):
        shutil.copy(killed_dir / f"{name[:-9]}{newest:06d}.pt", killed_dir / name)
    (killed_dir / f"ema_0.9_{broken:06d}.pt.abc.tmp").write_bytes(b"partial")

    finished = run_script(args + ["--total_training_steps", "30"], killed_dir)
    assert finished.returncode == 0, finished.stderr
    assert f"at step {newest}" in finished.stdout
    assert_same_checkpoint(tmp_path / "reference", killed_dir, 30)


def test_microbatches_sum_gradients_like_the_original(teacher_path, tmp_path):
    trainer = PIDTrainer(make_config(teacher_path, tmp_path, microbatch=4, lr=0.0))
    z, t, t_next, labels, _ = trainer.step_inputs(0)
    trainer.train_step()
    got = [p.grad.clone() for p in trainer.student.net.parameters()]
    trainer.optimizer.zero_grad()
    expected_loss = sum(pid_loss(trainer.student, trainer.teacher, z[s], t[s], t_next[s], labels[s],
                                 weight_schedule=trainer.config.weight_schedule,
                                 batched_student=trainer.config.batched_student).mean()
                        for s in (slice(0, 4), slice(4, 8)))
    expected_loss.backward()
    _, gradient_bound = pid_step_bounds(trainer)
    for g, p in zip(got, trainer.student.net.parameters()):
        assert (g - p.grad).norm() <= gradient_bound * p.grad.norm()


def test_checkpoints_load_strictly_into_the_sampling_path(teacher_path, tmp_path):
    trainer = train(make_config(teacher_path, tmp_path, total_training_steps=2))
    noise = torch.randn(2, 3, 8, 8)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    for name in ("model000002.pt", "ema_0.99_000002.pt"):
        student = load_student(tmp_path / name)
        out = sample(student, noise, "oneshot", class_labels=labels)
        assert out.shape == noise.shape
    with torch.no_grad():
        expected = trainer.student.eval()(noise * 80, 0.002, labels)
    one_step = sample(load_student(tmp_path / "model000002.pt"), noise, "oneshot", class_labels=labels)
    assert relative_error(one_step, expected) <= between_implementations(network_roundings(trainer.student, 8))
    with pytest.raises(ValueError, match="not a network state dict"):
        load_student(tmp_path / "opt000002.pt")


def test_official_cifar10_command_parses_and_runs(teacher_path, tmp_path):
    script = os.path.join(REPO, "scripts", "distill_pid_diffusion.sh")
    printed = subprocess.run(["bash", script, "cifar10"], env={**os.environ, "DRY_RUN": "1"}, capture_output=True,
                             text=True, check=True).stdout.splitlines()
    command = shlex.split(printed[1])
    assert command[:3] == ["mpirun", "-np", "8"] and printed[0] == "OPENAI_LOGDIR=./experiment/pid_cifar10"
    flags = command[command.index("./scripts/cm_train.py") + 1:]
    args, given = cli.parse_distillation(flags)
    config = cli.distillation_config(args, given, "unused", "cuda")
    assert (config.global_batch_size, config.lr, config.start_scales, config.loss_norm, config.total_training_steps,
            config.ema_rates, config.weight_schedule) == (
        512, 2e-4, 250, "lpips", 800000, (0.999, 0.9999, 0.99995), "uniform")
    # fp16 everywhere (docs/precision.md: neutral on CIFAR-10's architecture); --use_fp16 False appended: float32 student
    assert (config.mixed_precision, config.student_precision, config.loss_scaling) == ("fp16", "autocast", True)
    args, given = cli.parse_distillation(flags + ["--use_fp16", "False"])
    float32_student = cli.distillation_config(args, given, "unused", "cuda")
    assert (float32_student.mixed_precision, float32_student.student_precision, float32_student.loss_scaling) == (
        "bf16", "fp32", False)
    assert config.network_flags == dict(image_size=32, num_channels=128, num_res_blocks=4,
                                        attention_resolutions="2", class_cond=False)
    # The same line with a tiny teacher for a CPU: the teacher's recorded architecture replaces the flags.
    tiny = [f for f in flags]
    assert (config.eval_interval, config.eval_samples, config.fid_dataset, config.detector) == (
        10000, 10000, "cifar10", "inception")
    for flag, value in (("--teacher_model_path", teacher_path), ("--global_batch_size", "4"),
                        ("--total_training_steps", "1"), ("--loss_norm", "l2"), ("--eval_interval", "0")):
        tiny[tiny.index(flag) + 1] = value
    for flag in ("--image_size", "--num_channels", "--num_res_blocks", "--attention_resolutions", "--class_cond"):
        del tiny[tiny.index(flag):tiny.index(flag) + 2]
    result = run_script(tiny, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "model000001.pt").exists() and "ignored by PID" in result.stderr


def test_bad_inputs_give_clear_messages(teacher_path, tmp_path):
    missing = run_script(["--teacher_model_path", str(tmp_path / "nope.pkl"), *TINY_FLAGS], tmp_path / "a")
    assert missing.returncode == 1 and "teacher file not found" in missing.stderr
    assert "Traceback" not in missing.stderr

    mismatch = run_script(["--teacher_model_path", teacher_path, *TINY_FLAGS, "--num_channels", "32"], tmp_path / "b")
    assert mismatch.returncode == 1 and "--num_channels 32 (file: 16)" in mismatch.stderr

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    unwritable = run_script(["--teacher_model_path", teacher_path, *TINY_FLAGS], a_file / "run")
    assert unwritable.returncode == 1 and "cannot write the run folder" in unwritable.stderr

    mode = run_script(["--teacher_model_path", teacher_path, "--training_mode", "consistency_distillation"], tmp_path)
    assert mode.returncode == 2 and "valid: one_shot_pinn_edm_edm" in mode.stderr

    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        per_process_batch(make_config(teacher_path, tmp_path), 3)
    with pytest.raises(ValueError, match="valid: radam, adam"):
        PIDTrainer(make_config(teacher_path, tmp_path, optimizer="sgd"))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(teacher_path, tmp_path, monkeypatch):
    config = make_config(teacher_path, tmp_path, total_training_steps=8, save_interval=2, log_interval=1)
    trainer = PIDTrainer(config)
    real_loss = trainer_module.pid_loss

    def poisoned(*args, **kwargs):
        losses = real_loss(*args, **kwargs)
        return losses * float("nan") if trainer.step >= 3 else losses

    monkeypatch.setattr(trainer_module, "pid_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match="in the update to step 4.*model000002.pt"):
        trainer.run()
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("model")) == ["model000002.pt"]


def test_fp16_forward_overflow_stops_instead_of_retrying_the_step_forever(teacher_path, tmp_path, monkeypatch):
    """A skipped fp16 step is retried with the same noise; one whose loss overflowed (not only its
    gradients) would overflow again at every scale. Gradients that overflow with a finite loss are the
    ordinary skip and the run goes on."""
    config = make_config(teacher_path, tmp_path, total_training_steps=6, save_interval=2, log_interval=1,
                         mixed_precision="fp16")
    trainer = PIDTrainer(config)
    trainer.log2_loss_scale = 40.0  # the gradients overflow, the loss does not: skipped, then trained on
    trainer.run()
    assert trainer.step == 6 and trainer.log2_loss_scale < 40.0 - 10
    trainer.close()
    config = make_config(teacher_path, tmp_path, total_training_steps=8, save_interval=2, log_interval=1,
                         mixed_precision="fp16")
    trainer = PIDTrainer(config)  # resumes at step 6
    trainer.log2_loss_scale = 8.0
    real_loss = trainer_module.pid_loss

    def overflowing(*args, **kwargs):
        losses = real_loss(*args, **kwargs)
        return losses * float("inf") if trainer.step >= 7 else losses

    monkeypatch.setattr(trainer_module, "pid_loss", overflowing)
    with pytest.raises(TrainingDivergedError, match="loss of step 8 is NaN or infinite under fp16.*--use_fp16 False"
                                                     ".*continues from model000006.pt"):
        trainer.run()
    assert trainer.step == 7 and sorted(n for n in os.listdir(tmp_path) if n.startswith("model")) == \
        ["model000002.pt", "model000004.pt", "model000006.pt"]


def test_disk_full_during_save_keeps_earlier_checkpoints(teacher_path, tmp_path, monkeypatch):
    trainer = PIDTrainer(make_config(teacher_path, tmp_path, total_training_steps=4, save_interval=2))
    real_save, calls = torch.save, []

    def filling_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 5:  # the second checkpoint: 5 files per checkpoint
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling_disk)
    with pytest.raises(OSError, match="No space left"):
        trainer.run()
    monkeypatch.undo()
    files = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pt") or n.endswith(".tmp"))
    assert files == ["ema_0.99_000002.pt", "ema_0.9_000002.pt", "model000002.pt", "opt000002.pt",
                     "trainer_state000002.pt"]
    assert load(tmp_path / "model000002.pt").keys() == trainer.student.net.state_dict().keys()


def trainer_state(trainer):
    """Everything a skipped step must leave as it was: weights, EMA averages, optimizer state, norms."""
    return ({k: v.clone() for k, v in trainer.student.net.state_dict().items()},
            {rate: [a.clone() for a in averages] for rate, averages in trainer.ema.averages.items()},
            {index: {k: torch.as_tensor(v).clone() for k, v in state.items()}
             for index, state in trainer.optimizer.state_dict()["state"].items()},
            trainer.norm_totals.clone())


def assert_same_state(a, b):
    (weights_a, ema_a, optimizer_a, norms_a), (weights_b, ema_b, optimizer_b, norms_b) = a, b
    assert_same_tensors(weights_a, weights_b)
    assert ema_a.keys() == ema_b.keys() and all(map(torch.equal, sum(ema_a.values(), []), sum(ema_b.values(), [])))
    assert optimizer_a.keys() == optimizer_b.keys()
    assert all(torch.equal(v, optimizer_b[i][k]) for i, state in optimizer_a.items() for k, v in state.items())
    assert torch.equal(norms_a, norms_b)


def test_fp16_loss_scale_skips_a_non_finite_gradient_and_grows(teacher_path, tmp_path):
    trainer = PIDTrainer(make_config(teacher_path, tmp_path, mixed_precision="fp16", fp16_scale_growth=0.5))
    trainer.log2_loss_scale = 10.0
    _, applied = trainer.train_step()  # a first step: optimizer state and EMA averages exist
    assert applied and trainer.step == 1 and trainer.log2_loss_scale == 10.5
    before = trainer_state(trainer)
    one_weight = next(trainer.student.net.parameters())
    hook = one_weight.register_hook(lambda gradient: gradient * float("nan"))  # one NaN gradient tensor
    _, applied = trainer.train_step()
    assert not applied and trainer.step == 1 and trainer.log2_loss_scale == 9.5
    assert_same_state(trainer_state(trainer), before)
    hook.remove()
    trainer.log2_loss_scale = 200.0  # 2^200 overflows float32: every gradient becomes inf
    _, applied = trainer.train_step()
    assert not applied and trainer.step == 1 and trainer.log2_loss_scale == 199.0
    assert_same_state(trainer_state(trainer), before)
    trainer.log2_loss_scale = 10.0
    _, applied = trainer.train_step()
    assert applied and trainer.step == 2 and trainer.log2_loss_scale == 10.5
    assert all(torch.isfinite(p).all() for p in trainer.student.net.parameters())
    after = trainer_state(trainer)
    assert not torch.equal(after[0][next(iter(after[0]))], before[0][next(iter(before[0]))])  # this step applied
    trainer.close()


def test_fp16_gradients_are_unscaled_before_the_update_and_the_norms(teacher_path, tmp_path):
    """The loss is multiplied by the scale; the update and the logged norms see the gradient of the loss
    itself, whatever the scale (scales are powers of two here, so unscaling is exact up to fp16's
    underflow, which the larger scale avoids). RAdam's first steps are not scale-invariant (lr·m̂),
    so a gradient left scaled would move the weights 2^12 times as far."""
    updates, norms = [], []
    for log2_scale in (0.0, 12.0):
        trainer = PIDTrainer(make_config(teacher_path, tmp_path / str(log2_scale), mixed_precision="fp16"))
        start = {k: v.clone() for k, v in trainer.student.net.state_dict().items()}
        trainer.log2_loss_scale = log2_scale
        _, applied = trainer.train_step()
        assert applied
        updates.append({k: v - start[k] for k, v in trainer.student.net.state_dict().items()})
        norms.append(trainer.norm_totals.clone())
        trainer.close()
    assert relative_error(norms[1], norms[0]) < 1e-3
    for key, update in updates[0].items():
        ulp = torch.finfo(torch.float32).eps * start[key].norm()  # each updated weight may round either way
        assert (updates[1][key] - update).norm() <= 1e-3 * update.norm() + ulp, key


def test_explicit_resume_checkpoint_from_another_folder(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path / "first", total_training_steps=2))
    second = PIDTrainer(make_config(teacher_path, tmp_path / "second", total_training_steps=4,
                                    resume_checkpoint=str(tmp_path / "first" / "model000002.pt")))
    assert second.step == 2
    assert_same_tensors(second.student.net.state_dict(), load(tmp_path / "first" / "model000002.pt"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        PIDTrainer(make_config(teacher_path, tmp_path / "third", resume_checkpoint=str(tmp_path / "model000009.pt")))
    cut = tmp_path / "model000002.pt"
    cut.write_bytes((tmp_path / "first" / "model000002.pt").read_bytes()[:2000])
    with pytest.raises(ValueError, match="cannot read this torch file"):
        PIDTrainer(make_config(teacher_path, tmp_path / "fourth", resume_checkpoint=str(cut)))


def test_the_teacher_precision_follows_the_command_line_not_the_file(tmp_path):
    from pid_diffusion.evaluation.sampling import load_sampling_model

    config = tiny_song_config(use_fp16=True)  # as EDM's ImageNet-64 .pkl records
    save_teacher(EDMPrecond(**config), tmp_path / "fp16_teacher.pt", config)
    trainer = PIDTrainer(make_config(str(tmp_path / "fp16_teacher.pt"), tmp_path / "run"))
    assert trainer.teacher.use_fp16 is False
    trainer.close()
    teacher = load_sampling_model("one_shot_pinn_edm_edm_teacher", str(tmp_path / "fp16_teacher.pt"), {}, "cpu",
                                  {}).model
    assert teacher.use_fp16 is False


def test_progress_logs_the_mean_micro_batch_loss_and_the_norms(teacher_path, tmp_path):
    whole = PIDTrainer(make_config(teacher_path, tmp_path / "whole", lr=0.0))
    loss_whole, _ = whole.train_step()
    split = PIDTrainer(make_config(teacher_path, tmp_path / "split", microbatch=4, lr=0.0))
    loss_split, _ = split.train_step()
    # the mean of two equal micro-batches' means is the batch mean (the original's logged value), not their sum
    _, gradient_bound = pid_step_bounds(whole)
    assert abs(float(loss_split) - float(loss_whole)) <= gradient_bound * abs(float(loss_whole))
    with torch.no_grad():
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in split.student.net.parameters()]))
        param_norm = torch.linalg.vector_norm(torch.stack([p.norm() for p in split.student.net.parameters()]))
    train(make_config(teacher_path, tmp_path / "run", microbatch=4, lr=0.0, total_training_steps=1, log_interval=1))
    with open(tmp_path / "run" / "progress.csv") as f:
        header, row = [line.strip().split(",") for line in f]
    logged = dict(zip(header, map(float, row)))
    assert logged["loss"] == pytest.approx(float(loss_split), rel=rounding_bound(4))
    # the same first step (lr 0: before and after it the same weights); norms over ≈ 2·10⁵ values
    assert logged["grad_norm"] == pytest.approx(float(grad_norm), rel=between_implementations(2 * 10 ** 5))
    assert logged["param_norm"] == pytest.approx(float(param_norm), rel=between_implementations(2 * 10 ** 5))
