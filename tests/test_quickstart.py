"""A shortened quickstart: the main job's whole chain (mpirun training, demo metrics, FID walk,
samples) on the shipped digits teacher, with improvements asserted against the untrained student."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_dir():
    path = os.path.join(REPO, "experiment", f"test-quickstart-{os.getpid()}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_shortened_quickstart_distils(run_dir):
    env = {**os.environ, "QUICKSTART_STEPS": "200", "QUICKSTART_SAMPLES": "500", "QUICKSTART_RUN_DIR": run_dir}
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "quickstart.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Warning" not in done.stderr, done.stderr[-3000:]  # a user's first command prints no warnings
    assert "demo metrics: 500 samples of the teacher" in done.stdout  # no silent phase
    rows = {row["generator"]: row for row in json.load(open(os.path.join(run_dir, "demo_metrics.json")))}
    assert list(rows) == ["teacher heun_deter 18 steps", "teacher euler 5 steps", "teacher euler 10 steps",
                          "student untrained (step 0)", "student ema_0.995_000200", "student ema_0.99_000200",
                          "student model000200"]
    assert [rows[name]["nfe"] for name in list(rows)[:4]] == [35, 5, 10, 1]
    with open(os.path.join(run_dir, "demo_metrics.csv"), newline="") as f:
        assert csv.DictReader(f).fieldnames[:4] == ["generator", "nfe", "fid", "class_accuracy"]
    untrained = rows["student untrained (step 0)"]
    trained = min((r for name, r in rows.items() if name.startswith("student ema") or name.startswith("student model")),
                  key=lambda r: r["fid"])
    # measured at 200 steps (docs/benchmarks.md): FID 929 → 38, accuracy 12% → 97%; margins far from both
    assert trained["fid"] < 0.2 * untrained["fid"]
    assert trained["class_accuracy"] > untrained["class_accuracy"] + 0.5
    # the paper-style columns beside FID: the trained student is nearer the real digits on each
    assert trained["digit_is"] > untrained["digit_is"] + 3 and 1 <= untrained["digit_is"] <= trained["digit_is"] <= 10
    assert trained["precision"] > untrained["precision"] and trained["recall"] > untrained["recall"]
    assert trained["kid"] < 0.2 * untrained["kid"]  # KID (raw): the trained student is far nearer the real digits
    assert rows["teacher heun_deter 18 steps"]["class_accuracy"] > 0.97
    for name in ("fid_results_0.csv", "fid_vs_step.png", "teacher_vs_student.png", "samples_000200.png"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "fid_results_0.csv"), newline="") as f:
        evaluated = list(csv.DictReader(f))
    assert len(evaluated) == 3 * 8 and all(0 <= float(r["class_accuracy"]) <= 1 for r in evaluated)
    with open(os.path.join(run_dir, "fid_during_training.csv"), newline="") as f:
        during = list(csv.DictReader(f))  # at every checkpoint (every 25 steps): both EMA networks and the raw one
    assert sorted({int(r["step"]) for r in during}) == list(range(25, 201, 25)) and len(during) == 24
    assert all(float(r["FID"]) > 0 and 0 <= float(r["class_accuracy"]) <= 1 for r in during)
    # each question measured once: the walk asks what FID during training measured (digits detector, 500
    # samples, seed 0) and finds every answer in the one table (their parity: test_watching.py)
    assert done.stdout.count(": already evaluated (FID") == 24
    assert {r["model_name"]: r["FID"] for r in evaluated} == {
        r["model_name"]: r["FID"] for r in during}
    assert "== summary (" in done.stdout and "distillation (with FID of every checkpoint) " in done.stdout
    for who in ("teacher", "student"):
        with np.load(os.path.join(run_dir, f"samples_{who}", "samples_100x8x8x1.npz")) as samples:
            assert samples["arr_0"].dtype == np.uint8 and samples["arr_0"].shape == (100, 8, 8, 1)
            assert samples["arr_1"].shape == (100,) and set(samples["arr_1"].tolist()) <= set(range(10))
    again = subprocess.run(["bash", os.path.join(REPO, "scripts", "quickstart.sh")], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "use --resume" in again.stderr  # never reuses a stale folder silently


def test_without_mpi_the_quickstart_runs_one_process(tmp_path, run_dir):
    # A Python whose mpi4py cannot load an MPI library, and no mpirun beside it or on the PATH.
    broken = tmp_path / "site" / "mpi4py"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('cannot load MPI library')\n")
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'site'} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not os.path.exists(os.path.join(p, "mpirun")))
    env = {**os.environ, "PATH": path, "PYTHON": str(python), "QUICKSTART_STEPS": "8", "QUICKSTART_SAMPLES": "64",
           "QUICKSTART_RUN_DIR": run_dir}
    done = subprocess.run(["bash", os.path.join(REPO, "scripts", "quickstart.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Warning" not in done.stderr, done.stderr[-3000:]  # a user's first command prints no warnings
    assert "demo metrics: 64 samples of the teacher" in done.stdout  # no silent phase
    again = subprocess.run(["bash", os.path.join(REPO, "scripts", "quickstart.sh"), "--resume", run_dir], env=env,
                           capture_output=True, text=True, timeout=900)  # a finished run: everything answered again
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already evaluated" in again.stdout and "== summary" in again.stdout
    assert "no working MPI runtime" in done.stdout and "1 process(es)" in done.stdout
    assert os.path.exists(os.path.join(run_dir, "model000008.pt"))
    assert os.path.exists(os.path.join(run_dir, "teacher_vs_student.png"))
