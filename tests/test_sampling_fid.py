import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from conftest import tiny_song_config
from pid_diffusion.families import edm
from pid_diffusion.checkpoint import save_teacher
from pid_diffusion.evaluation.walk import checkpoints_in
from pid_diffusion.evaluation.detectors import detector_input, load_detector
from pid_diffusion.evaluation.statistics import (check_stats_dimension, FeatureStats, frechet_distance,
                                                 load_reference_stats)
from pid_diffusion.generate import GRID_GAP, seeded_inputs, shard_batches
from pid_diffusion.networks import EDMPrecond, network_from_config
from pid_diffusion.trainer import TrainConfig, train
from tolerances import between_implementations, fid_terms_size, rounding_bound

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="no mpirun: install the mpich extra (pip install -e '.[mpich]')")


STAND_IN_FEATURES = 256
"""The stand-in's feature size: the real Inception's 2048 would make each Fréchet distance's matrix square root
take seconds on two cores; nothing here depends on the size."""


class StandInInception(torch.nn.Module):
    """Called like NVIDIA's TorchScript Inception: detector(pixels in [0, 255], return_features=True) → features."""

    def __init__(self):
        super().__init__()
        self.projection = torch.nn.Parameter(torch.randn(48, STAND_IN_FEATURES,
                                                         generator=torch.Generator().manual_seed(0)))

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(images / 255.0, 4).flatten(1)
        return torch.tanh(pooled @ self.projection)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny class-conditional teacher, a 2-step training run from it, a stand-in detector in
    ./model_zoo and reference statistics."""
    root = tmp_path_factory.mktemp("workspace")
    torch.manual_seed(0)
    config = tiny_song_config(label_dim=3)
    teacher = EDMPrecond(**config)
    for p in teacher.parameters():
        p.data.normal_(0, 0.05)
    save_teacher(teacher, root / "teacher.pt", config)
    train(TrainConfig(teacher_model_path=str(root / "teacher.pt"), log_dir=str(root / "run"), global_batch_size=4,
                      loss_norm="l2", ema_rate="0.9", save_interval=1, total_training_steps=2, log_interval=1))
    (root / "model_zoo").mkdir()
    torch.jit.save(torch.jit.script(StandInInception()), str(root / "model_zoo" / "inception-2015-12-05.pt"))
    np.savez(root / "ref.npz", mu=np.zeros(STAND_IN_FEATURES), sigma=np.eye(STAND_IN_FEATURES) * 0.01)
    return root


def run(script, args, cwd, log_dir=None, processes=None, timeout=120):
    command = [sys.executable, os.path.join(REPO, "scripts", script), *args]
    if processes:
        command = [MPIRUN, "-np", str(processes), *command]
    env = {**os.environ, **({"OPENAI_LOGDIR": str(log_dir)} if log_dir else {})}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@needs_mpirun
@pytest.mark.parametrize("mode,model,extra", [
    ("one_shot_pinn_edm_edm_one_shot", "run/ema_0.9_000002.pt", []),
    ("one_shot_pinn_edm_edm_teacher", "teacher.pt", ["--sampler", "heun_deter", "--steps", "3"]),
])
def test_samples_do_not_depend_on_batch_size_or_processes(workspace, tmp_path, mode, model, extra):
    args = ["--training_mode", mode, "--model_path", str(workspace / model), "--num_samples", "10", *extra]
    one = run("image_sample.py", args + ["--batch_size", "8"], workspace, tmp_path / "one")
    two = run("image_sample.py", args + ["--batch_size", "4"], workspace, tmp_path / "two", processes=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = np.load(tmp_path / "one" / "samples_10x8x8x3.npz"), np.load(tmp_path / "two" / "samples_10x8x8x3.npz")
    assert sorted(a.files) == ["arr_0", "arr_1"]
    assert a["arr_0"].dtype == np.uint8 and a["arr_0"].shape == (10, 8, 8, 3)
    assert a["arr_1"].shape == (10,) and set(a["arr_1"]) <= {0, 1, 2}
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert a["arr_0"].std() > 0
    grid = Image.open(tmp_path / "one" / "samples_grid.png")
    assert grid.size[0] == 8 * 32 + 7 * GRID_GAP and grid.size[1] > 2 * 32 + GRID_GAP  # 8×8 images enlarged 4×, a caption


def test_per_sample_noise_and_sharding():
    first, labels = seeded_inputs(7, [0, 1, 2, 3], (3, 4, 4), label_dim=5)
    again, labels_again = seeded_inputs(7, [2, 3], (3, 4, 4), label_dim=5)
    assert torch.equal(first[2:], again) and torch.equal(labels[2:], labels_again)
    shards = [shard_batches(10, 3, rank, 2) for rank in range(2)]
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(10))
    with pytest.raises(ValueError, match="must be positive"):
        shard_batches(0, 3)


def test_detector_feeds():
    images = torch.tensor([-1.5, -1.0, -0.3, 0.0, 0.49, 1.0, 2.0]).reshape(1, 1, 1, 7)
    assert detector_input(images, "float").flatten().tolist() == pytest.approx(  # three float32 operations
        [0.0, 0.0, 89.25, 127.5, 189.975, 255.0, 255.0], rel=rounding_bound(3), abs=0)
    # uint8: the saved images' integers, floor(x·127.5 + 128) clipped to [0, 255]
    assert detector_input(images, "uint8").flatten().tolist() == [0, 0, 89, 128, 190, 255, 255]
    with pytest.raises(ValueError, match="valid: float, uint8"):
        detector_input(images, "png")


def test_streaming_statistics_match_numpy():
    features = torch.randn(300, 16, dtype=torch.float64) * torch.linspace(0.5, 2, 16) + 3
    stats = FeatureStats(16)
    for chunk in features.split(64):
        stats.update(chunk)
    mu, sigma = stats.mean_cov()
    # float64 sums over the 300 samples, in other orders than numpy's
    count = len(features)
    assert np.allclose(mu, features.numpy().mean(0), rtol=between_implementations(count, torch.float64), atol=0)
    # Σffᵀ − n·μμᵀ cancels: the covariance carries the sums' rounding times (‖Σffᵀ‖ + n·‖μμᵀ‖)/‖(n − 1)·Σ‖
    expected = np.cov(features.numpy(), rowvar=False, ddof=1)
    second_moment = features.T @ features
    amplification = float((second_moment.norm() + count * np.linalg.norm(np.outer(mu, mu)))
                          / ((count - 1) * np.linalg.norm(expected)))
    assert np.linalg.norm(sigma - expected) <= between_implementations(count, torch.float64,
                                                                       amplification) * np.linalg.norm(expected)
    # a distribution's distance to itself: the trace terms cancel, to the rounding of the eigen-
    # decompositions (about dim² operations each) times their size
    dim = len(mu)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= between_implementations(dim ** 2, torch.float64) * (
        4 * np.trace(sigma))


def test_frechet_distance_agrees_with_scipy():
    rng = np.random.default_rng(0)
    for dim in (8, 64):
        a, b = rng.normal(size=(dim, 2 * dim)), rng.normal(size=(dim, 2 * dim))
        s1, s2 = a @ a.T / dim, b @ b.T / dim
        m1, m2 = rng.normal(size=dim), rng.normal(size=dim)
        root = scipy.linalg.sqrtm(s1 @ s2)
        expected = float(np.real(np.square(m1 - m2).sum() + np.trace(s1 + s2 - 2 * root)))
        # both in float64; the traces cancel, so the error scales with the terms' sizes, not the result
        size = np.square(m1 - m2).sum() + np.trace(s1) + np.trace(s2) + 2 * abs(np.trace(root))
        assert abs(frechet_distance(m1, s1, m2, s2) - expected) <= between_implementations(dim ** 2, torch.float64) * size
        assert isinstance(frechet_distance(torch.tensor(m1), torch.tensor(s1), m2, s2), float)
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_folder_walk(workspace, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(workspace / "run", folder)
    (folder / "model000005.pt").write_bytes((folder / "model000002.pt").read_bytes()[:3000])  # truncated
    assert [name for name, _, _ in checkpoints_in(folder)] == [
        "ema_0.9_000001", "model000001", "ema_0.9_000002", "model000002", "model000005"]
    args = ["--exp_dir", str(folder), "--ref_path", str(workspace / "ref.npz"), "--num_samples", "12",
            "--batch_size", "5", "--seed", "3"]
    first = run("fid_evaluation.py", args, workspace)
    assert first.returncode == 0, first.stderr
    assert "model000005: skipped, cannot be loaded" in first.stdout
    rows = (folder / "fid_results_3.csv").read_text().splitlines()
    assert rows[0].startswith("model_name,FID,step,num_samples,seed,sampling,detector")  # the original's columns first
    assert [r.split(",")[0] for r in rows[1:]] == ["ema_0.9_000001", "model000001", "ema_0.9_000002", "model000002"]
    assert all(float(r.split(",")[1]) > 0 for r in rows[1:])
    assert len(list((folder / "FID").glob("model000002_seed3-*_samples.png"))) == 1
    assert (folder / "fid_vs_step.png").exists()
    second = run("fid_evaluation.py", args, workspace)
    assert second.returncode == 0 and second.stdout.count("already evaluated") == 4
    assert (folder / "fid_results_3.csv").read_text().splitlines() == rows


@needs_mpirun
@pytest.mark.parametrize("num_samples,batch_size", [(11, 4), (3, 4)])  # (3, 4): one process gets no batch
def test_fid_sharded_over_two_processes_equals_one(workspace, tmp_path, num_samples, batch_size):
    results = []
    for processes, folder in ((None, tmp_path / "one"), (2, tmp_path / "two")):
        shutil.copytree(workspace / "run", folder)
        for name in os.listdir(folder):
            if name.startswith("ema") or name.startswith("model000001"):
                os.remove(folder / name)
        done = run("fid_evaluation.py", ["--exp_dir", str(folder), "--ref_path", str(workspace / "ref.npz"),
                                         "--num_samples", str(num_samples), "--batch_size", str(batch_size)],
                    workspace, processes=processes)
        assert done.returncode == 0, done.stderr
        results.append(float((folder / "fid_results_42.csv").read_text().splitlines()[1].split(",")[1]))
    # the same images (the same batches on either process count); only the float64 sums and the
    # all-reduce run in other orders, on FID's cancelling terms (tolerances.fid_terms_size; tr Σr = 0.01·d)
    size = fid_terms_size(results[0], 0.01 * STAND_IN_FEATURES)
    printing = 2 * 0.5e-6  # the CSV holds each FID to six decimals
    assert abs(results[0] - results[1]) <= between_implementations(STAND_IN_FEATURES ** 2, torch.float64) * size + printing


def test_bad_inputs(workspace, tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt.*nvlabs-fi-cdn"):
        load_detector("inception", path=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="valid: inception, dinov2, vgg16, digits, pixels"):
        load_detector("clip")
    with pytest.raises(FileNotFoundError, match="cifar10-32x32.npz.*fid-refs"):
        load_reference_stats(str(tmp_path / "stats" / "cifar10-32x32.npz"))
    with pytest.raises(ValueError, match=f"μ of shape \\({STAND_IN_FEATURES},\\) and Σ of shape \\({STAND_IN_FEATURES}, "
                                         f"{STAND_IN_FEATURES}\\) do not fit the detector's 2048 features"):
        load_reference_stats(str(workspace / "ref.npz"), dim=2048)
    with pytest.raises(ValueError, match=r"μ of shape \(64,\) and Σ of shape \(64,\) do not fit the detector's 64 features "
                                         r"\(μ of \(64,\) and Σ of \(64, 64\) expected"):  # not "(64,) vs 64"
        check_stats_dimension(np.zeros(64), np.ones(64), 64, "stats.npz")

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("fid_evaluation.py", ["--exp_dir", str(empty), "--detector", "pixels"], workspace)
    assert result.returncode == 1 and "no checkpoints (*.pt files but opt*.pt and trainer_state*.pt)" in result.stderr

    missing_stats = run("fid_evaluation.py", ["--exp_dir", str(workspace / "run"), "--num_samples", "4",
                                              "--seed", "99"], tmp_path)
    assert missing_stats.returncode == 1
    assert "Inception detector inception-2015-12-05.pt not found" in missing_stats.stderr and "Traceback" not in missing_stats.stderr

    wrong_dim = run("fid_evaluation.py", ["--exp_dir", str(workspace / "run"), "--detector", "pixels", "--ref_path",
                                          str(workspace / "ref.npz"), "--num_samples", "4", "--seed", "98"], workspace)
    assert wrong_dim.returncode == 1 and "do not fit the detector's 192 features" in wrong_dim.stderr

    for flags, message in ((["--training_mode", "edm"], "valid: one_shot_pinn_edm_edm_one_shot"),
                           (["--training_mode", "one_shot_pinn_edm_edm_teacher", "--sampler", "heun3"],
                            "valid: heun_deter, heun")):
        bad = run("image_sample.py", ["--model_path", str(workspace / "teacher.pt"), *flags], workspace, tmp_path)
        assert bad.returncode == 1 and message in bad.stderr

    uneven = run("image_sample.py", ["--model_path", str(workspace / "run" / "model000002.pt"), "--num_samples", "7",
                                     "--batch_size", "3"], workspace, tmp_path / "uneven")
    assert uneven.returncode == 0, uneven.stderr
    assert np.load(tmp_path / "uneven" / "samples_7x8x8x3.npz")["arr_0"].shape[0] == 7


def test_fid_walk_exit_codes_and_damaged_results(workspace, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model000001.pt", "model000002.pt"):
        (broken / name).write_bytes(b"not a checkpoint")
    args = ["--ref_path", str(workspace / "ref.npz"), "--num_samples", "6", "--batch_size", "3"]
    nothing = run("fid_evaluation.py", ["--exp_dir", str(broken), *args], workspace)
    assert nothing.returncode == 1 and "nothing could be evaluated" in nothing.stderr
    assert "Traceback" not in nothing.stderr

    folder = tmp_path / "run"
    shutil.copytree(workspace / "run", folder)
    # cut-off or garbled rows (a cut inside a number, 234.57 → 23, cannot be seen: the file is now always
    # rewritten whole through a temporary file, so it cannot happen)
    for cut in ("model000002\n", "model000002,23.5,two\n", "model000002,,2\n"):
        (folder / "fid_results_42.csv").write_text("model_name,FID,step\nmodel000001,12.5,1\n" + cut)
        damaged = run("fid_evaluation.py", ["--exp_dir", str(folder), *args], workspace)
        assert damaged.returncode == 1 and "fid_results_42.csv line 3: damaged row" in damaged.stderr, cut
        assert "Traceback" not in damaged.stderr


def test_a_walk_writes_its_results_outside_the_folder_it_measures_when_asked(workspace, tmp_path, monkeypatch):
    import types

    folder, results = tmp_path / "run", tmp_path / "elsewhere" / "results"
    shutil.copytree(workspace / "run", folder)
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    args = ["--exp_dir", str(folder), "--results_dir", str(results), "--checkpoints", "model000002.pt", "--batch_size",
            "4", "--num_samples", "4", "--ref_path", str(workspace / "ref.npz")]
    first = run("fid_evaluation.py", args, workspace)
    assert first.returncode == 0, first.stderr
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before  # not a byte written
    assert {"fid_results_42.csv", "FID", "fid_vs_step.png"} <= set(os.listdir(results))
    again = run("fid_evaluation.py", args, workspace)
    assert again.returncode == 0 and "model000002: already evaluated" in again.stdout  # the same table answers
    here = run("fid_evaluation.py", args[:2] + args[4:], workspace)  # without it: the folder's own table, measured
    assert here.returncode == 0 and "already evaluated" not in here.stdout and (folder / "fid_results_42.csv").exists()

    from pid_diffusion.evaluation.walk import results_folder

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only folder (root may write anywhere)
    with pytest.raises(PermissionError, match="is not writable .*give --results_dir <a folder you can write to>"):
        results_folder(types.SimpleNamespace(results_dir="", exp_dir=str(folder)))


def test_a_shortened_results_row_is_damage_not_a_row_of_the_originals_format(tmp_path):
    from pid_diffusion.evaluation.results import QUESTION_FIELDS, read_results

    header = ",".join(["model_name", "step", "FID", *QUESTION_FIELDS])
    whole = "model000001,1,12.5," + ",".join(["x"] * len(QUESTION_FIELDS))
    results = tmp_path / "fid_results_42.csv"
    results.write_text(f"{header}\n{whole}\n{whole}\n")
    assert [row["FID"] for row in read_results(str(results))] == ["12.5", "12.5"]
    results.write_text(f"{header}\n{whole}\nmodel000002,2,23.5\n")  # its question cut off
    with pytest.raises(ValueError, match="fid_results_42.csv line 3: damaged row .*wrong number of fields"):
        read_results(str(results))
    results.write_text("model_name,FID\nmodel000002,23.5\n")  # the original's rows have no question: kept
    assert read_results(str(results)) == [{"model_name": "model000002", "FID": "23.5", "step": "2"}]


def test_a_results_csv_written_by_the_original_is_continued_and_plotted(workspace, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(workspace / "run", folder)
    (folder / "fid_results_42.csv").write_text("model_name,FID\nmodel000001,12.5\n")  # the original's columns
    done = run("fid_evaluation.py", ["--exp_dir", str(folder), "--ref_path", str(workspace / "ref.npz"),
                                     "--num_samples", "6", "--batch_size", "3"], workspace)
    assert done.returncode == 0, done.stderr
    rows = (folder / "fid_results_42.csv").read_text().splitlines()
    assert rows[0].startswith("model_name,FID,step,") and rows[1].startswith("model000001,12.5,1,")  # kept, step from name
    # the original's row records no question, so it answers none: model000001 is evaluated again beside it
    assert "already evaluated" not in done.stdout and len(rows) == 6
    assert [r.split(",")[0] for r in rows[1:]].count("model000001") == 2
    assert (folder / "fid_vs_step.png").exists()


RELEASED_STYLE_FLAGS = ["--image_size", "32", "--num_channels", "16", "--num_res_blocks", "1", "--channel_mult", "1,2",
                        "--attention_resolutions", "2"]


def test_fid_eval_script_evaluates_a_released_style_student(workspace, tmp_path):
    """A bare state dict named pid_cifar.pt with no run_config.json, as the authors released it, among an
    optimizer and a trainer-state file: selected as the original selects, built from the flags."""
    folder = tmp_path / "pid_cifar"
    folder.mkdir()
    config = edm.config_from_flags(image_size=32, num_channels=16, num_res_blocks=1, channel_mult="1,2",
                                    attention_resolutions="2")
    torch.save(network_from_config(config).state_dict(), folder / "pid_cifar.pt")
    torch.save({"state": {}, "param_groups": []}, folder / "opt000001.pt")
    torch.save({"step": 1}, folder / "trainer_state000001.pt")
    assert [name for name, _, _ in checkpoints_in(folder)] == ["pid_cifar"]
    assert [name for name, _, _ in checkpoints_in(folder, ["pid_cifar.pt"])] == ["pid_cifar"]
    with pytest.raises(FileNotFoundError, match="not found in .*pid_cifar nor as paths: other.pt"):
        checkpoints_in(folder, ["other.pt"])

    dry = subprocess.run(["bash", os.path.join(REPO, "scripts", "fid_eval.sh"), "cifar10", str(folder)],
                         env={**os.environ, "DRY_RUN": "1"}, capture_output=True, text=True, cwd=REPO)
    assert dry.returncode == 0, dry.stderr
    for flag in ("--image_size 32 --num_channels 128 --num_res_blocks 4 --attention_resolutions 2",
                 "--class_cond False", "--fid_dataset cifar10", "--batch_size 125", "--num_samples 50000"):
        assert flag in dry.stdout, flag

    # the same command, run small: the extra flags come last and win, as in the script
    args = ["--exp_dir", str(folder), "--training_mode", "one_shot_pinn_edm_edm_one_shot", "--sampler", "oneshot",
            "--ref_path", str(workspace / "ref.npz"), "--num_samples", "6", "--batch_size", "3", "--seed", "0",
            *RELEASED_STYLE_FLAGS]
    done = run("fid_evaluation.py", args, workspace)
    assert done.returncode == 0, done.stderr
    rows = (folder / "fid_results_0.csv").read_text().splitlines()
    assert rows[0].startswith("model_name,FID,step,") and rows[1].startswith("pid_cifar,") and ",0,6,0," in rows[1]
    (samples_file,) = (folder / "FID").glob("pid_cifar_seed0-*_samples_6x32x32x3.npz")
    samples = np.load(samples_file)
    assert samples["arr_0"].shape == (6, 32, 32, 3) and samples["arr_0"].dtype == np.uint8
    assert "pid_cifar: FID" in (folder / "FID" / "log.txt").read_text()

    # without the flags the file cannot be described: a clear error, nothing evaluated
    shutil.rmtree(folder / "FID")
    (folder / "fid_results_0.csv").unlink()
    undescribed = run("fid_evaluation.py", args[:-len(RELEASED_STYLE_FLAGS)], workspace)
    assert undescribed.returncode == 1 and "pid_cifar: skipped, cannot be loaded" in undescribed.stdout
    assert "file (16,) vs network (128,)" in undescribed.stdout  # the default flags describe another network

    no_npz = run("fid_evaluation.py", [*args, "--save_samples", "False"], workspace)
    assert no_npz.returncode == 0 and not list((folder / "FID").glob("*.npz"))
    with_npz = run("fid_evaluation.py", args, workspace)  # the samples asked for now: measured again to write them
    assert with_npz.returncode == 0 and "measured again to write its samples" in with_npz.stdout
    assert len(list((folder / "FID").glob("*.npz"))) == 1
    third = run("fid_evaluation.py", args, workspace)
    assert third.returncode == 0 and "already evaluated" in third.stdout


def fid_rows(path):
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_results_row_answers_only_the_question_it_measured(workspace, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(workspace / "run", folder)
    base = ["--exp_dir", str(folder), "--checkpoints", "model000002.pt", "--batch_size", "4", "--detector", "pixels"]
    np.savez(tmp_path / "pixels.npz", mu=np.zeros(192), sigma=np.eye(192) * 0.01)
    np.savez(tmp_path / "pixels-other.npz", mu=np.full(192, 0.5), sigma=np.eye(192) * 0.01)
    first = run("fid_evaluation.py", [*base, "--ref_path", str(tmp_path / "pixels.npz"), "--num_samples", "8"], workspace)
    assert first.returncode == 0, first.stderr
    again = run("fid_evaluation.py", [*base, "--ref_path", str(tmp_path / "pixels.npz"), "--num_samples", "8"], workspace)
    assert "model000002: already evaluated" in again.stdout  # the same question: answered from the file
    steps = run("fid_evaluation.py", [*base, "--ref_path", str(tmp_path / "pixels.npz"), "--num_samples", "8",
                                      "--steps", "18", "--s_churn", "5"], workspace)
    assert "model000002: already evaluated" in steps.stdout  # a teacher sampler's options: not the student's question
    for changed in (["--ref_path", str(tmp_path / "pixels-other.npz"), "--num_samples", "8"],
                    ["--ref_path", str(tmp_path / "pixels.npz"), "--num_samples", "12"],
                    ["--ref_path", str(tmp_path / "pixels.npz"), "--num_samples", "8", "--detector_feed", "uint8"]):
        other = run("fid_evaluation.py", [*base, *changed], workspace)
        assert other.returncode == 0 and "already evaluated" not in other.stdout, (changed, other.stdout)
    rows = fid_rows(folder / "fid_results_42.csv")
    assert len(rows) == 4 and len({r["FID"] for r in rows}) == 4  # four questions, four answers, all kept
    assert {r["num_samples"] for r in rows} == {"8", "12"} and {r["feed"] for r in rows} == {"float", "uint8"}
    assert len({r["reference_sha256"] for r in rows}) == 2 and all(r["detector"] == "pixels" for r in rows)
    # other weights under the same name (a checkpoint replaced, or a file of another run) are another question
    same_question = [*base, "--ref_path", str(tmp_path / "pixels.npz"), "--num_samples", "8"]
    shutil.copy(folder / "model000001.pt", folder / "model000002.pt")
    replaced = run("fid_evaluation.py", same_question, workspace)
    assert replaced.returncode == 0 and "already evaluated" not in replaced.stdout
    other_run = tmp_path / "other"
    shutil.copytree(workspace / "run", other_run)
    elsewhere = run("fid_evaluation.py", [*same_question[:3], str(other_run / "model000002.pt"), *same_question[4:]],
                    workspace)
    assert elsewhere.returncode == 0 and "already evaluated" in elsewhere.stdout  # the same weights: answered
    rows = fid_rows(folder / "fid_results_42.csv")
    assert len(rows) == 5 and len({r["weights_sha256"] for r in rows}) == 2


def test_a_non_finite_fid_in_the_results_file_is_damage_reported_with_its_line(workspace, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(workspace / "run", folder)
    args = ["--exp_dir", str(folder), "--checkpoints", "model000002.pt", "--batch_size", "4", "--num_samples", "4",
            "--ref_path", str(workspace / "ref.npz")]
    assert run("fid_evaluation.py", args, workspace).returncode == 0
    results = folder / "fid_results_42.csv"
    lines = results.read_text().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    row[header.index("FID")] = "nan"
    results.write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    damaged = run("fid_evaluation.py", args, workspace)
    assert damaged.returncode == 1 and "line 2: damaged row" in damaged.stderr and "FID nan is not a finite" in \
        damaged.stderr and "already evaluated" not in damaged.stdout


def test_another_fid_seed_gives_another_fid_and_its_own_sample_files(workspace, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(workspace / "run", folder)
    args = ["--exp_dir", str(folder), "--checkpoints", "model000002.pt", "--ref_path", str(workspace / "ref.npz"),
            "--num_samples", "6", "--batch_size", "3"]
    fids = {}
    for seed in ("0", "0", "1"):
        done = run("fid_evaluation.py", [*args, "--seed", seed], workspace)
        assert done.returncode == 0, done.stderr
        fids.setdefault(seed, []).append(fid_rows(folder / f"fid_results_{seed}.csv")[0]["FID"])
    assert fids["0"][0] == fids["0"][1] and fids["0"][0] != fids["1"][0]
    names = sorted(p.name for p in (folder / "FID").glob("*.npz"))
    assert len(names) == 2 and names[0].startswith("model000002_seed0-") and names[1].startswith("model000002_seed1-")


def test_nan_statistics_are_refused_and_never_recorded(workspace, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(workspace / "run", folder)
    mu = np.zeros(STAND_IN_FEATURES)
    mu[3] = np.nan
    np.savez(tmp_path / "nan.npz", mu=mu, sigma=np.eye(STAND_IN_FEATURES))
    args = ["--exp_dir", str(folder), "--checkpoints", "model000002.pt", "--num_samples", "4", "--batch_size", "4"]
    refused = run("fid_evaluation.py", [*args, "--ref_path", str(tmp_path / "nan.npz")], workspace)
    assert refused.returncode == 1 and "hold NaN or infinite values" in refused.stderr
    assert not (folder / "fid_results_42.csv").exists()
    good = run("fid_evaluation.py", [*args, "--ref_path", str(workspace / "ref.npz")], workspace)
    assert good.returncode == 0 and "already evaluated" not in good.stdout
    assert np.isfinite(float(fid_rows(folder / "fid_results_42.csv")[0]["FID"]))


def _record_rows(path, names):
    from pid_diffusion.evaluation.results import record_result
    for name in names:
        record_result(path, dict(model_name=name, step=0, FID="1.0"), dict(seed=0))


def test_walks_beside_each_other_keep_every_row(workspace, tmp_path):
    import multiprocessing

    path = str(tmp_path / "fid_results_0.csv")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_record_rows, args=(path, [f"{who}{k}" for k in range(15)])) for who in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    assert sorted(r["model_name"] for r in fid_rows(path)) == sorted(f"{w}{k}" for w in "ab" for k in range(15))

    # two real walks at once on one folder, one on the EMA files and one on the model files
    folder = tmp_path / "run"
    shutil.copytree(workspace / "run", folder)
    args = ["--exp_dir", str(folder), "--ref_path", str(workspace / "ref.npz"), "--num_samples", "4", "--batch_size", "4"]
    env = {**os.environ}
    walks = [subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "fid_evaluation.py"), *args, "--checkpoints",
                               names], cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for names in ("ema_0.9_000001.pt,ema_0.9_000002.pt", "model000001.pt,model000002.pt")]
    assert [walk.wait(120) for walk in walks] == [0, 0]
    assert sorted(r["model_name"] for r in fid_rows(folder / "fid_results_42.csv")) == [
        "ema_0.9_000001", "ema_0.9_000002", "model000001", "model000002"]


def test_fid_figure_draws_a_line_per_question_and_says_what_they_share(tmp_path):
    from pid_diffusion.evaluation.results import question_labels
    from pid_diffusion.plots import plot_fid_vs_step

    def row(name, step, fid, label):
        sampling = f"class_label={label};sampler=oneshot;steps=1;use_fp16=False"
        return dict(model_name=name, step=str(step), FID=str(fid), num_samples="8", seed="42", sampling=sampling,
                    detector="pixels", detector_sha256="d", feed="float", reference="ref.npz", reference_sha256="r",
                    weights_sha256=f"w{name}")

    rows = [row(f"ema_0.9_00000{s}", s, fid, label) for s, fid, label in
            ((1, 30.0, -1), (2, 20.0, -1), (1, 90.0, 3), (2, 80.0, 3))]
    labels, shared = question_labels(rows)
    assert labels == ["class_label=-1", "class_label=-1", "class_label=3", "class_label=3"]  # weights never split lines
    assert shared["detector"] == "pixels" and shared["num_samples"] == "8" and shared["seed"] == "42"
    drawn = plot_fid_vs_step(rows, tmp_path / "fid.png", labels=labels)
    assert drawn == {"ema_0.9, class_label=-1": [(1, 30.0), (2, 20.0)], "ema_0.9, class_label=3": [(1, 90.0), (2, 80.0)]}
    one_question = rows[:2]
    assert question_labels(one_question)[0] == ["", ""]
    assert plot_fid_vs_step(one_question, tmp_path / "one.png", labels=["", ""]) == {"ema_0.9": [(1, 30.0), (2, 20.0)]}


def test_a_folder_of_ema_files_only_says_why_nothing_is_evaluated(workspace, tmp_path):
    folder = tmp_path / "ema_only"
    folder.mkdir()
    for name in ("ema_0.9_000002.pt", "run_config.json"):  # its model file's save never came
        shutil.copy(workspace / "run" / name, folder)
    refused = run("fid_evaluation.py", ["--exp_dir", str(folder), "--ref_path", str(workspace / "ref.npz")], workspace)
    assert refused.returncode == 1 and "have no model file of their step" in refused.stderr
    assert "ema_0.9_000002.pt" in refused.stderr and "--checkpoints" in refused.stderr
    named = run("fid_evaluation.py", ["--exp_dir", str(folder), "--ref_path", str(workspace / "ref.npz"),
                                      "--checkpoints", "ema_0.9_000002.pt", "--num_samples", "4", "--batch_size", "4"],
                workspace)
    assert named.returncode == 0 and "ema_0.9_000002: FID" in named.stdout


def test_reference_statistics_that_are_not_a_covariance_are_refused(tmp_path):
    from pid_diffusion.evaluation.statistics import load_reference_stats

    mu = np.zeros(3)
    cases = {"negative": np.diag([1.0, 0.5, -0.2]), "asymmetric": np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]])}
    for name, sigma in cases.items():
        np.savez(tmp_path / f"{name}.npz", mu=mu, sigma=sigma)
        with pytest.raises(ValueError, match="not a covariance matrix"):
            load_reference_stats(str(tmp_path / f"{name}.npz"))
    rounded = np.diag([1.0, 0.5, -1e-9])  # a computed covariance's rounding below zero is accepted
    np.savez(tmp_path / "rounded.npz", mu=mu, sigma=rounded)
    assert np.array_equal(load_reference_stats(str(tmp_path / "rounded.npz"))[1], rounded)
