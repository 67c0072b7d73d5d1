"""Seeing a run while it trains: a sample grid per checkpoint and FID during training (--eval_interval), which
equal what the sampling and FID scripts give for the same checkpoint and never change the training."""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_run_config
from pid_diffusion import trainer as trainer_module
from pid_diffusion.checkpoint import load_student
from pid_diffusion.generate import CAPTION_HEIGHT, GRID_GAP, MIN_GRID_CELL, generate, save_grid, to_uint8
from pid_diffusion.trainer import EVALUATION_FILE, GRID_SAMPLES, PIDTrainer, train
from tolerances import between_implementations, fid_terms_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
PIXELS = 3 * 8 * 8  # the pixels detector's features of the tiny teacher's images


@pytest.fixture(scope="module")
def pixel_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "pixels.npz"
    np.savez(path, mu=np.full(PIXELS, 0.1), sigma=np.eye(PIXELS) * 0.02)
    return str(path)


def evaluated_config(teacher_path, log_dir, reference, **overrides):
    values = dict(eval_interval=2, eval_samples=10, detector="pixels", ref_path=reference)
    return small_run_config(teacher_path, log_dir, **{**values, **overrides})


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_each_checkpoint_has_the_grid_image_sample_would_draw(teacher_path, tmp_path):
    train(small_run_config(teacher_path, tmp_path / "run", save_interval=1, seed=3))
    for step in (1, 2):
        with Image.open(tmp_path / "run" / f"samples_{step:06d}.png") as grid:
            cell = 8 * -(-MIN_GRID_CELL // 8)  # 8×8 images enlarged, tiles GRID_GAP apart, a caption above
            width, height = 8 * cell + 7 * GRID_GAP, GRID_SAMPLES // 8 * (cell + GRID_GAP) - GRID_GAP
            assert grid.size[0] == width and (grid.size[1] - height) % CAPTION_HEIGHT == 0 and grid.mode == "RGB"
            assert grid.size[1] > height
            pixels = np.asarray(grid)
    # the grid of step 2 is the EMA file's one-step samples 0–63 of --seed, as image_sample.py draws them, with
    # their classes in the corners and a caption saying what they are
    student = load_student(tmp_path / "run" / "ema_0.9_000002.pt")
    batches = list(generate(student, GRID_SAMPLES, 16, 3, (3, 8, 8), 3, sampler="oneshot", clip_denoised=True))
    images, labels = torch.cat([to_uint8(b.images) for b in batches]), torch.cat([b.labels for b in batches])
    save_grid(images, tmp_path / "expected.png", labels=labels,
              caption="ema_0.9, step 2: one-step samples 0-63 of seed 3 (class in the corner)")
    with Image.open(tmp_path / "expected.png") as expected:
        assert np.array_equal(pixels, np.asarray(expected))
    with Image.open(tmp_path / "run" / "samples_000001.png") as first:
        assert not np.array_equal(pixels, np.asarray(first))  # another checkpoint, other samples


def test_grids_and_evaluations_never_change_the_training(teacher_path, tmp_path, pixel_reference, monkeypatch):
    """Dropout draws from the global generator: any random draw the grids or evaluations took would show."""
    train(evaluated_config(teacher_path, tmp_path / "watched", pixel_reference, dropout=0.3, eval_interval=1,
                           save_interval=1))
    monkeypatch.setattr(PIDTrainer, "after_save", lambda self: None)
    train(small_run_config(teacher_path, tmp_path / "plain", dropout=0.3, save_interval=1))
    assert os.path.exists(tmp_path / "watched" / "samples_000002.png")
    assert not os.path.exists(tmp_path / "plain" / "samples_000002.png")
    for name in ("model000002.pt", "ema_0.9_000002.pt", "opt000002.pt"):
        watched, plain = (torch.load(tmp_path / run / name, weights_only=True) for run in ("watched", "plain"))
        flat = lambda state: torch.cat([v.flatten().float() for v in _tensors(state)])
        assert torch.equal(flat(watched), flat(plain)), name


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _tensors(value)


def _fid_bound(fid, reference_trace):
    """Two float64 computations of one FID (other batch sizes or process counts: other summation orders), each
    printed to six decimals."""
    return between_implementations(PIXELS ** 2, torch.float64) * fid_terms_size(fid, reference_trace) + 2 * 0.5e-6


def test_fid_during_training_equals_the_fid_walk(teacher_path, tmp_path, pixel_reference):
    trainer = train(evaluated_config(teacher_path, tmp_path / "run", pixel_reference))
    measured = {row["model_name"]: float(row["FID"]) for row in rows(tmp_path / "run" / EVALUATION_FILE)}
    assert set(measured) == {"ema_0.9_000002", "model000002"}
    assert measured["ema_0.9_000002"] != measured["model000002"]
    progress = [row for row in rows(tmp_path / "run" / "progress.csv") if row["step"] == "2"]
    assert float(progress[0]["fid_ema_0.9"]) == measured["ema_0.9_000002"]
    assert "FID at step 2 (10 samples, pixels detector" in (tmp_path / "run" / "log.txt").read_text()
    walked, said = fid_walk(tmp_path / "run", pixel_reference, 10, results_dir=tmp_path / "walked")  # measured anew
    assert "already evaluated" not in said
    for name, fid in walked.items():
        assert abs(measured[name] - fid) <= _fid_bound(fid, 0.02 * PIXELS), name
    # in the run folder the walk finds the answers FID during training recorded: measured once
    answered, said = fid_walk(tmp_path / "run", pixel_reference, 10)
    assert answered == measured and said.count("already evaluated") == 2
    answered, said = fid_walk(tmp_path / "run", pixel_reference, 9)  # another question: measured
    assert "already evaluated" not in said and answered != measured
    assert trainer.step == 2


def fid_walk(folder, reference, num_samples, results_dir=None):
    """fid_evaluation.py on a run's step-2 checkpoints with the training's seed: ({checkpoint: FID} of the
    results table's rows of `num_samples`, what it printed)."""
    extra = ["--results_dir", str(results_dir)] if results_dir else []
    walk = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "fid_evaluation.py"), "--exp_dir", str(folder),
                           "--checkpoints", "ema_0.9_000002.pt,model000002.pt", "--seed", "0", "--num_samples",
                           str(num_samples), "--batch_size", "3", "--detector", "pixels", "--ref_path", reference,
                           "--save_samples", "False", *extra], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert walk.returncode == 0, walk.stderr
    table = os.path.join(results_dir or folder, "fid_results_0.csv")
    return {row["model_name"]: float(row["FID"]) for row in rows(table) if row["num_samples"] == str(num_samples)}, \
        walk.stdout


@pytest.mark.skipif(MPIRUN is None, reason="no mpirun: install the mpich extra (pip install -e '.[mpich]')")
def test_fid_during_training_on_two_processes_equals_the_fid_walk(teacher_path, tmp_path, pixel_reference):
    """Each process samples its share (11 samples: 6 and 5); the features are summed over processes."""
    args = ["--teacher_model_path", teacher_path, "--global_batch_size", "4", "--loss_norm", "l2", "--ema_rate", "0.9",
            "--total_training_steps", "2", "--save_interval", "2", "--lr", "0.001", "--eval_interval", "2",
            "--eval_samples", "11", "--detector", "pixels", "--ref_path", pixel_reference]
    done = subprocess.run([MPIRUN, "-np", "2", sys.executable, os.path.join(REPO, "scripts", "cm_train.py"), *args],
                          cwd=REPO, env={**os.environ, "OPENAI_LOGDIR": str(tmp_path / "run")}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()  # each phase of the start says itself, once (rank 0), before the run's line
    assert lines[:2] == [f"starting: reading the teacher {teacher_path}",
                         f"starting: loading the pixels detector and the reference statistics of {pixel_reference} for "
                         "FID during training"] and lines[2].startswith("PID distillation: teacher")
    measured = {row["model_name"]: float(row["FID"]) for row in rows(tmp_path / "run" / EVALUATION_FILE)}
    walked = fid_walk(tmp_path / "run", pixel_reference, 11, results_dir=tmp_path / "walked")[0]
    assert set(walked) == set(measured) == {"ema_0.9_000002", "model000002"}
    for name, fid in walked.items():
        assert abs(measured[name] - fid) <= _fid_bound(fid, 0.02 * PIXELS), name


def test_fid_during_training_refuses_what_it_cannot_measure(teacher_path, tmp_path, pixel_reference):
    cases = [(dict(detector="inception", detector_path=str(tmp_path / "missing.pt"), ref_path=pixel_reference),
              FileNotFoundError, "inception-2015-12-05.pt"),
             (dict(ref_path=str(tmp_path / "missing.npz")), FileNotFoundError, "missing.npz"),
             (dict(eval_samples=1), ValueError, "--eval_samples must be at least 2"),
             (dict(eval_interval=-1), ValueError, "--eval_interval must be 0")]
    np.savez(tmp_path / "other.npz", mu=np.zeros(5), sigma=np.eye(5))
    cases.append((dict(ref_path=str(tmp_path / "other.npz")), ValueError, "do not fit the detector's 192"))
    for number, (overrides, error, message) in enumerate(cases):
        folder = tmp_path / f"run{number}"
        config = small_run_config(teacher_path, folder, **{**dict(eval_interval=2, detector="pixels"), **overrides})
        with pytest.raises(error, match=message):
            PIDTrainer(config)
        assert not folder.exists()  # refused before the run folder is made


def test_a_failed_evaluation_is_logged_and_training_goes_on(teacher_path, tmp_path, pixel_reference, monkeypatch):
    real, calls = trainer_module.run_generation, []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "run_generation", failing_once)
    trainer = train(evaluated_config(teacher_path, tmp_path / "run", pixel_reference, eval_interval=1))
    assert trainer.step == 2
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "FID at step 1 failed (RuntimeError: out of memory (test)); training goes on" in log
    assert {row["step"] for row in rows(tmp_path / "run" / EVALUATION_FILE)} == {"2"}


def test_a_resumed_run_cuts_its_fids_back_to_the_checkpoint(teacher_path, tmp_path, pixel_reference):
    config = lambda: evaluated_config(teacher_path, tmp_path / "run", pixel_reference, eval_interval=1, save_interval=1)
    train(config())
    for name in ("model000002.pt", "ema_0.9_000002.pt", "opt000002.pt", "trainer_state000002.pt"):
        os.remove(tmp_path / "run" / name)  # as if the run had ended after the evaluation of step 2, before its save
    train(config())
    assert [row["step"] for row in rows(tmp_path / "run" / EVALUATION_FILE)] == ["1", "1", "2", "2"]
    assert f"{EVALUATION_FILE}: removed 2 row(s) after step 1" in (tmp_path / "run" / "log.txt").read_text()


def test_tensorboard_holds_every_logged_number_and_the_grids(teacher_path, tmp_path, pixel_reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(evaluated_config(teacher_path, tmp_path / "run", pixel_reference, save_interval=1,
                           log_format="stdout,log,csv,tensorboard"))
    assert [n for n in os.listdir(tmp_path / "run") if n.startswith("events.out.tfevents.")]
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    progress = rows(tmp_path / "run" / "progress.csv")
    for column in ("loss", "grad_norm", "param_norm", "images_per_second", "lr", "fid_ema_0.9", "fid_model"):
        logged = {int(row["step"]): float(row[column]) for row in progress if row[column]}
        recorded = {event.step: event.value for event in events.Scalars(column)}
        assert recorded.keys() == logged.keys(), column  # fid_* at the evaluation's step only
        # TensorBoard keeps float32: one rounding of the logged number
        assert all(abs(recorded[s] - v) <= torch.finfo(torch.float32).eps / 2 * abs(v) for s, v in logged.items())
    grids = events.Images("samples")
    assert [image.step for image in grids] == [1, 2]
    with Image.open(tmp_path / "run" / "samples_000002.png") as png:
        assert (grids[1].width, grids[1].height) == png.size


def test_log_format_chooses_what_is_written(teacher_path, tmp_path, capsys, monkeypatch):
    train(small_run_config(teacher_path, tmp_path / "log-only", log_format="log"))
    assert not capsys.readouterr().out and (tmp_path / "log-only" / "log.txt").exists()
    assert not (tmp_path / "log-only" / "progress.csv").exists()
    monkeypatch.setenv("OPENAI_LOG_FORMAT", "stdout,csv")  # the original logger's variable
    train(small_run_config(teacher_path, tmp_path / "from-environment"))
    assert "step       2" in capsys.readouterr().out and (tmp_path / "from-environment" / "progress.csv").exists()
    assert not (tmp_path / "from-environment" / "log.txt").exists()
    with pytest.raises(ValueError, match="unknown format 'json'; valid: stdout, log, csv, tensorboard"):
        PIDTrainer(small_run_config(teacher_path, tmp_path / "bad", log_format="stdout,json"))
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else
                        real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"needs the tensorboard package: pip install -e '\.\[tensorboard\]'"):
        PIDTrainer(small_run_config(teacher_path, tmp_path / "no-tensorboard", log_format="tensorboard"))
    assert not (tmp_path / "bad").exists() and not (tmp_path / "no-tensorboard").exists()


def test_a_stop_signal_during_an_evaluation_ends_it_saves_and_exits(teacher_path, tmp_path, pixel_reference):
    """SIGTERM (a scheduler's notice) during FID at step 2 of 4 (400 samples in batches of 4): the evaluation
    stops at the next batch, the checkpoint of step 2 is written and the run ends; the same command goes on."""
    import signal

    from pid_diffusion.loop import TrainingInterrupted

    config = evaluated_config(teacher_path, tmp_path / "run", pixel_reference, eval_samples=400,
                              total_training_steps=4, save_interval=4)
    trainer = PIDTrainer(config)
    real_detector, calls = trainer.detector, []

    def noticed(images, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the probe, then two batches
            os.kill(os.getpid(), signal.SIGTERM)
        return real_detector(images, **kwargs)

    trainer.detector = noticed
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 2"):
        trainer.run()
    trainer.close()
    assert len(calls) == 3  # the 100 batches of each of the three networks were not all made
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "FID at step 2 interrupted by a stop signal (stopped after 2 of 100 batches)" in log
    assert (tmp_path / "run" / "model000002.pt").exists() and not (tmp_path / "run" / EVALUATION_FILE).exists()
    resumed = train(evaluated_config(teacher_path, tmp_path / "run", pixel_reference, eval_samples=8,
                                     total_training_steps=4, save_interval=4))
    assert resumed.step == 4


def test_a_grid_has_gaps_its_images_enlarged_their_labels_and_a_caption(tmp_path):
    from pid_diffusion.generate import GRID_BACKGROUND

    images = torch.randint(0, 256, (5, 8, 8, 1), dtype=torch.uint8)
    plain = save_grid(images, tmp_path / "plain.png", columns=3)
    cell = 8 * -(-MIN_GRID_CELL // 8)
    assert plain.shape == (2 * cell + GRID_GAP, 3 * cell + 2 * GRID_GAP, 1)
    zoomed = images[1].numpy().repeat(cell // 8, 0).repeat(cell // 8, 1)
    assert np.array_equal(plain[:cell, cell + GRID_GAP:2 * cell + GRID_GAP], zoomed)  # the second tile, enlarged
    assert (plain[:, cell:cell + GRID_GAP] == GRID_BACKGROUND).all()  # a gap between columns
    assert (plain[cell:, 2 * (cell + GRID_GAP):] == GRID_BACKGROUND).all()  # the missing sixth tile is background
    labelled = save_grid(images, tmp_path / "labelled.png", columns=3, labels=[7, 1, 2, 3, 4])
    assert not np.array_equal(labelled[:12, :12], plain[:12, :12])  # the class drawn in the tile's corner
    assert np.array_equal(labelled[cell - 8:cell, :cell], plain[cell - 8:cell, :cell])  # the rest of it untouched
    captioned = save_grid(images, tmp_path / "captioned.png", columns=3, caption="step 20, seed 0")
    assert captioned.shape[0] == plain.shape[0] + CAPTION_HEIGHT and np.array_equal(captioned[CAPTION_HEIGHT:], plain)
    assert (captioned[:CAPTION_HEIGHT] != GRID_BACKGROUND).any()  # the caption's text
    long = save_grid(images, tmp_path / "long.png", columns=3, caption="a long caption " * 8)
    assert long.shape[0] > captioned.shape[0]  # wrapped to the grid's width


def test_a_non_finite_fid_during_training_is_logged_but_never_written_as_an_answer(teacher_path, tmp_path,
                                                                                   pixel_reference):
    """The walk's results table holds finite values only (a NaN row there is damage): a NaN FID during training
    stays in fid_during_training.csv and the log; the finite ones of another run become rows."""
    trainer = PIDTrainer(evaluated_config(teacher_path, tmp_path / "nan", pixel_reference))
    real_detector = trainer.detector
    trainer.detector = lambda pixels, return_features=True: real_detector(pixels) * float("nan")
    try:
        trainer.run()
    finally:
        trainer.close()
    assert {row["FID"] for row in rows(tmp_path / "nan" / EVALUATION_FILE)} == {"nan"}
    assert not (tmp_path / "nan" / "fid_results_0.csv").exists()
    train(evaluated_config(teacher_path, tmp_path / "finite", pixel_reference))
    assert len(rows(tmp_path / "finite" / "fid_results_0.csv")) == 2
