import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import tiny_song_config
from pid_diffusion.checkpoint import save_teacher
from pid_diffusion.demo import MixtureMetrics, format_table
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.teachers import DEMO_MIXTURE, demo_mixture


@pytest.fixture(scope="module")
def metrics():
    mixture = demo_mixture()  # the analytic teacher: its Heun endpoints are the exact ODE's, up to 18 steps
    return MixtureMetrics(mixture, mixture, num_samples=400, seed=0, reference_samples=4000)


def test_exact_samples_and_the_exact_teacher_score_as_such(metrics):
    exact, teacher = metrics.exact_row(), metrics.teacher_row()
    std = DEMO_MIXTURE["std"]
    assert exact["nearest_rms"] == pytest.approx(std, rel=0.05)  # data sit one std from their component
    assert exact["coverage_tv"] < 0.1 and exact["pixel_fid"] < 0.05
    assert teacher["nfe"] == 35 and teacher["mode_agreement"] == 1.0 and teacher["rmse_vs_teacher"] == 0.0
    assert teacher["coverage_tv"] < 0.12 and teacher["nearest_rms"] < 2 * std


def test_a_generator_that_ignores_the_noise_scores_badly(metrics):
    first_mean = metrics.mixture.means[0].to(torch.float32)
    collapsed = metrics.student_row("collapsed", lambda z, t, labels=None: first_mean.expand_as(z))
    assert collapsed["coverage_tv"] == pytest.approx(7 / 8)  # all mass on one of 8 equal components
    assert collapsed["mode_agreement"] < 0.3 and collapsed["pixel_fid"] > 1.0
    assert "collapsed" in format_table([collapsed])


def test_few_step_teacher_rows_sit_between_the_student_and_the_full_sampler(metrics):
    rows = metrics.few_step_teacher_rows()
    assert [(r["generator"], r["nfe"]) for r in rows] == [("teacher euler 5 steps", 5), ("teacher euler 10 steps", 10)]
    coarse, finer = rows
    # More steps of the same ODE solver land closer to the 35-call endpoints.
    assert finer["rmse_vs_teacher"] < coarse["rmse_vs_teacher"] < 0.5
    assert 0.5 < coarse["mode_agreement"] <= finer["mode_agreement"] < 1.0


def test_demo_metrics_script_explains_bad_run_folders(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "demo_metrics.py")

    def run(folder):
        return subprocess.run([sys.executable, script, "--run_dir", str(folder), "--num_samples", "16"],
                              capture_output=True, text=True, timeout=120)

    missing = run(tmp_path / "nothing")
    assert missing.returncode == 1 and "run_config.json" in missing.stderr and "Traceback" not in missing.stderr
    config = tiny_song_config(img_resolution=16)
    save_teacher(EDMPrecond(**config), tmp_path / "teacher16.pt", config)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run_config.json").write_text(json.dumps({"teacher_model_path": str(tmp_path / "teacher16.pt")}))
    foreign = run(folder)
    assert foreign.returncode == 1 and "is not a demo teacher" in foreign.stderr
    assert "Traceback" not in foreign.stderr
    assert sorted(os.listdir(folder)) == ["run_config.json"]  # nothing written
