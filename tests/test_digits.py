"""The real-data case: digits data, the EDM teacher objective and trainer, the digits detector and its
FID / conditional accuracy, and the demo metrics' handling of bad input."""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import numpy as np
import torch

from conftest import tiny_song_config
from pid_diffusion import cli, digits
from pid_diffusion.families import edm
from pid_diffusion.checkpoint import load_teacher, save_teacher, student_from_teacher
from pid_diffusion.evaluation.demo import check_digits_teacher, DigitsMetrics
from pid_diffusion.evaluation.detectors import load_detector
from pid_diffusion.evaluation.statistics import DetectorTally, digits_reference_stats
from pid_diffusion.generate import seeded_inputs
from pid_diffusion.losses import edm_denoising_loss, edm_loss_weight, edm_training_sigmas
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.teacher_trainer import TeacherTrainConfig, TeacherTrainer
from tolerances import rounding_bound

MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CLASSIFIER = os.path.join(REPO, "model_zoo", "digits-classifier.pt")
SHIPPED_TEACHER = os.path.join(REPO, "model_zoo", "digits-ddpmpp.pt")


def test_digits_split_is_fixed_disjoint_and_scaled():
    train_images, train_labels = digits.load_digits("train")
    held_images, held_labels = digits.load_digits("held_out")
    all_images, _ = digits.load_digits("all")
    assert len(train_labels) + len(held_labels) == len(all_images) == 1797 and len(held_labels) == digits.HELD_OUT
    assert train_images.shape[1:] == (1, 8, 8) and train_images.min() == -1 and train_images.max() == 1
    # 17 grey levels 0..16 map to k/8 − 1
    assert torch.equal((train_images + 1) * 8, ((train_images + 1) * 8).round())
    again, _ = digits.load_digits("train")
    assert torch.equal(again, train_images)
    assert set(held_labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="valid: train, held_out, all"):
        digits.load_digits("test")


def test_missing_scikit_learn_names_the_install_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if not installed
    with pytest.raises(digits.DigitsUnavailableError, match=r"pip install -e '\.\[digits\]'"):
        digits.load_digits()


def test_edm_loss_against_a_hand_computation():
    # Denoiser D(x; σ, labels) = a·x with a = 0.5; two pixels per image: the loss is their mean, not their sum.
    images = torch.tensor([[0.5, 0.25], [-1.0, 0.75]]).reshape(2, 1, 1, 2)
    sigma = torch.tensor([0.1, 2.0])
    noise = torch.tensor([[1.0, -2.0], [-0.5, 0.5]]).reshape(2, 1, 1, 2)
    got = edm_denoising_loss(lambda x, s, labels: 0.5 * x, images, sigma, noise)
    expected = []
    for ys, s, ns in (((0.5, 0.25), 0.1, (1.0, -2.0)), ((-1.0, 0.75), 2.0, (-0.5, 0.5))):
        weight = (s * s + 0.25) / (s * 0.5) ** 2
        expected.append(weight * sum((0.5 * (y + s * n) - y) ** 2 for y, n in zip(ys, ns)) / 2)
    # about ten float32 operations per sample against Python's float64
    assert got.tolist() == pytest.approx(expected, rel=rounding_bound(10), abs=0)
    assert edm_loss_weight(torch.tensor(0.5)).item() == 8.0  # (0.25 + 0.25)/(0.25·0.25), exact in binary
    assert edm_training_sigmas(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([math.exp(-1.2), 1.0],
                                                                                  rel=rounding_bound(3), abs=0)


def tiny_teacher_config(tmp_path, **overrides):
    network = {**digits.DIGITS_NETWORK_CONFIG, "model_channels": 8, "num_blocks": 1}
    values = dict(log_dir=str(tmp_path), network_config=network, global_batch_size=8, total_training_steps=3,
                  save_interval=3, log_interval=1, ema_rate="0.5", lr=1e-3, optimizer="adam")
    values.update(overrides)
    return TeacherTrainConfig(**values)


def test_teacher_trainer_draws_real_digits_and_exports_a_loadable_teacher(tmp_path):
    trainer = TeacherTrainer(tiny_teacher_config(tmp_path / "run"))
    images, labels, sigma, noise = trainer.step_inputs(0)
    pool = {}
    for image, label in zip(trainer.images, trainer.labels):
        pool.setdefault(tuple(image.flatten().tolist()), set()).add(int(label))
    # training digits with their own labels, not noise
    assert all(int(label) in pool[tuple(image.flatten().tolist())] for image, label in zip(images, labels.argmax(1)))
    assert labels.shape == (8, 10) and torch.equal(labels.sum(1), torch.ones(8))
    assert sigma.shape == (8,) and noise.shape == images.shape
    again = trainer.step_inputs(0)
    assert all(torch.equal(a, b) for a, b in zip(again, (images, labels, sigma, noise)))  # (seed, step) only
    start = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.run()
    assert trainer.step == 3 and (tmp_path / "run" / "model000003.pt").exists()
    assert any(not torch.equal(v, start[k]) for k, v in trainer.network.state_dict().items())
    trainer.export(0.5, tmp_path / "teacher.pt")
    teacher = load_teacher(tmp_path / "teacher.pt")
    ema = trainer.ema.state_dict(0.5)
    assert all(torch.equal(v, ema[k]) for k, v in teacher.model.state_dict().items())
    assert (teacher.img_channels, teacher.img_resolution, teacher.label_dim) == (1, 8, 10)
    trainer.close()
    # the same seed gives the same initial weights and the same steps
    other = TeacherTrainer(tiny_teacher_config(tmp_path / "other"))
    assert all(torch.equal(v, start[k]) for k, v in other.network.state_dict().items())


def test_the_digits_at_another_size_and_in_rgb_keep_their_class():
    """The CIFAR-10 testbed's data: the digits upsampled to 32×32 in three channels; the detector averages
    them back to grey 8×8, so the shipped classifier judges them as it judges the digits."""
    images, labels = digits.load_digits("held_out")
    large = digits.at_size(images, 32, 3)
    assert large.shape == (len(images), 3, 32, 32) and large.min() >= -1 and large.max() <= 1
    assert torch.equal(large[:, 0], large[:, 2]) and torch.equal(digits.at_size(images, 8, 1), images)
    detector = load_detector("digits", SHIPPED_CLASSIFIER)
    for shape, data in (((1, 8, 8), images), ((3, 32, 32), large), ((3, 16, 16), digits.at_size(images, 16, 3))):
        tally = DetectorTally(detector, shape)
        tally.update(data, labels)
        assert tally.class_accuracy() >= 0.97, shape  # 98.9% at 8×8
    back = torch.nn.functional.avg_pool2d(large[:, :1], 4)
    assert (back - images).abs().mean() < 0.3 * (images + 1).abs().mean()  # the digit, slightly blurred


def test_teacher_trainer_at_another_resolution_makes_the_network_and_data_it_names(tmp_path):
    args = cli.parse_teacher_training(["--image_size", "16", "--image_channels", "3", "--num_channels", "8",
                                       "--num_res_blocks", "1", "--channel_mult", "1,1,2", "--attention_resolutions",
                                       "4", "--global_batch_size", "4"])
    config = cli.teacher_training_config(args, str(tmp_path / "run"))
    network = config.network_config
    assert (network["img_resolution"], network["img_channels"], network["channel_mult"],
            network["attn_resolutions"]) == (16, 3, [1, 1, 2], [4])
    trainer = TeacherTrainer(config)
    images, labels, sigma, noise = trainer.step_inputs(0)
    assert images.shape == noise.shape == (4, 3, 16, 16) and labels.shape == (4, 10)
    assert (trainer.precond.img_resolution, trainer.precond.img_channels) == (16, 3)
    attention = {name.split(".")[1].split("_")[0] for name, m in trainer.network.named_modules() if hasattr(m, "qkv")}
    assert attention == {"4x4"}  # image_size // 4
    loss, applied = trainer.train_step()
    assert applied and torch.isfinite(loss)
    trainer.close()
    # the CIFAR-10 DDPM++ flags give the official CIFAR-10 network, class-conditional, on 3×32×32 digits
    cifar = cli.teacher_network_config(cli.parse_teacher_training(
        ["--image_size", "32", "--image_channels", "3", "--num_channels", "128", "--num_res_blocks", "4",
         "--channel_mult", "2,2,2", "--dropout", "0.13"]))
    official = edm.config_from_flags(image_size=32, num_channels=128, num_res_blocks=4, attention_resolutions="2",
                                     class_cond=True)
    assert {k: cifar[k] for k in official if k not in ("use_fp16", "dropout", "augment_dim")} == \
        {k: v for k, v in official.items() if k not in ("use_fp16", "dropout", "augment_dim")}


@pytest.mark.parametrize("flags,message", [
    (["--image_size", "4"], "--image_size 4: the digits are 8×8"),
    (["--image_channels", "2"], "--image_channels 2: give 1 .grey. or 3"),
    (["--image_size", "12", "--channel_mult", "1,2,2,2"], "--image_size 12 cannot be halved 3 times"),
    (["--attention_resolutions", "3"], "--attention_resolutions '3': factor 3 gives no resolution of the network "
                                       "\\(8, 4\\); give factors among 1, 2"),
    (["--channel_mult", "1,x"], "--channel_mult must be a comma-separated list of integers"),
    (["--channel_mult", "0,2"], "--channel_mult '0,2': give positive multipliers"),
])
def test_teacher_image_and_network_flags_refuse_what_builds_no_network(flags, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_teacher_training(flags)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(message, error), error


def test_train_teacher_script_refuses_to_replace_an_export(tmp_path):
    existing = tmp_path / "teacher.pt"
    existing.write_bytes(b"keep me")
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train_teacher.py"), "--export",
                           str(existing)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENAI_LOGDIR": str(tmp_path / "run")})
    assert done.returncode == 2 and "exists" in done.stderr and existing.read_bytes() == b"keep me"
    assert not (tmp_path / "run").exists()


def test_shipped_classifier_held_out_accuracy():
    model = digits.load_classifier(SHIPPED_CLASSIFIER)
    images, labels = digits.load_digits("held_out")
    assert digits.accuracy(model, images, labels) >= 0.97  # the stated figure: 98.9%
    assert os.path.getsize(SHIPPED_CLASSIFIER) <= 1_000_000


def test_digits_detector_fid_and_class_accuracy_on_real_digits():
    detector = load_detector("digits", SHIPPED_CLASSIFIER)
    reference = digits_reference_stats(detector)
    images, labels = digits.load_digits("held_out")
    tally = DetectorTally(detector, (1, 8, 8))
    tally.update(images, labels)
    assert tally.class_accuracy() >= 0.97
    real_fid = tally.fid(reference)
    shuffled = DetectorTally(detector, (1, 8, 8))
    shuffled.update(images, labels.roll(1))  # right images, wrong labels: accuracy collapses, FID does not move
    assert shuffled.class_accuracy() < 0.2 and shuffled.fid(reference) == real_fid
    noise = DetectorTally(detector, (1, 8, 8))
    noise.update(torch.rand(360, 1, 8, 8) * 2 - 1, labels)
    assert noise.fid(reference) > 5 * real_fid and noise.class_accuracy() < 0.5
    unlabelled = DetectorTally(detector, (1, 8, 8))
    unlabelled.update(images)
    assert math.isnan(unlabelled.class_accuracy())


def test_digits_detector_explains_images_of_another_kind():
    detector = load_detector("digits", SHIPPED_CLASSIFIER)
    for shape in ((3, 20, 20), (2, 32, 32), (1, 16, 8)):
        with pytest.raises(ValueError, match="square 1- or 3-channel images whose side is a multiple of 8.*got images "
                                             f"of shape \\{shape}".replace(")", "\\)").replace(" \\(", " \\(")):
            DetectorTally(detector, shape)
    with pytest.raises(ValueError, match="needs --detector digits"):
        digits_reference_stats(load_detector("pixels"))
    assert DetectorTally(detector, (1, 8, 8)).note == ""  # the digits as they are: nothing to say
    for shape in ((3, 8, 8), (1, 16, 16), (3, 32, 32)):  # accepted by design: the testbeds' digits, and said so
        assert DetectorTally(detector, shape).note.startswith(
            f"the digits detector judges these {'×'.join(map(str, shape))} images as the grey 8×8 digits they upsample")
    assert DetectorTally(load_detector("pixels"), (3, 32, 32)).note == ""


def test_real_digits_calibrate_the_demo_metrics_and_noise_scores_worse_on_each():
    from pid_diffusion.evaluation.demo import real_digits_calibration
    from pid_diffusion.evaluation.statistics import digits_features
    from pid_diffusion.evaluation.metrics import inception_score, kernel_inception_distance, precision_recall

    detector = load_detector("digits", SHIPPED_CLASSIFIER)
    real = real_digits_calibration(detector)
    assert (real["samples"], real["kid_subset_size"]) == (360, 360)
    assert 8 < real["digit_is"] <= 10 and real["precision"] > 0.8 and real["recall"] > 0.8
    assert abs(real["kid"]) < real["kid_std"]  # real against real: zero within its spread (features of size ~4)
    noise = torch.rand(360, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # a generator of noise
    tally = DetectorTally(detector, (1, 8, 8), keep_samples=True)
    tally.update(noise)
    features, logits = tally.samples()
    train = digits_features(detector, split="train")
    precision, recall = precision_recall(train, features)
    assert inception_score(logits)[0] < real["digit_is"] - 3
    assert precision < real["precision"] - 0.5 and recall < real["recall"] - 0.5
    assert kernel_inception_distance(train, features)[0] > 10 * max(real["kid"], 1e-3)
    with pytest.raises(RuntimeError, match="keep_samples=True"):
        DetectorTally(detector, (1, 8, 8)).samples()


def test_class_label_outside_the_classes_names_the_range():
    noise, labels = seeded_inputs(0, range(4), (1, 8, 8), label_dim=10, class_label=7)
    assert labels.tolist() == [7, 7, 7, 7]
    assert torch.equal(noise, seeded_inputs(0, range(4), (1, 8, 8), label_dim=10)[0])  # same noise
    with pytest.raises(ValueError, match="valid labels are 0 to 9"):
        seeded_inputs(0, range(4), (1, 8, 8), label_dim=10, class_label=10)
    with pytest.raises(ValueError, match="unconditional"):
        seeded_inputs(0, range(4), (1, 8, 8), label_dim=0, class_label=3)


def test_larger_digits_are_judged_as_the_real_digits_they_were_made_from():
    """The detector undoes `at_size` exactly, so the real digits upsampled to a testbed's shape score as the
    real 8×8 digits do (averaging blocks would blur them: digit FID 141 at 32×32 instead of 0.5); other
    images are not mapped to the same features."""
    detector = load_detector("digits")
    reference = digits_reference_stats(detector)
    images, labels = digits.load_digits("train")

    def scored(batch, shape):
        tally = DetectorTally(detector, shape)
        tally.update(batch, labels)
        return tally.fid(reference), tally.class_accuracy()

    native_fid, native_accuracy = scored(images, (1, 8, 8))
    for shape in ((3, 32, 32), (1, 16, 16), (3, 24, 24)):
        larger = digits.at_size(images, shape[-1], shape[0])
        assert larger.shape[1:] == shape
        assert torch.allclose(digits.from_size(larger), images, atol=1e-5)
        fid, accuracy = scored(larger, shape)
        assert abs(fid - native_fid) < 1e-3 and accuracy == native_accuracy
    shifted = digits.at_size(images.roll(1, dims=-1), 32, 3)
    assert scored(shifted, (3, 32, 32))[0] > native_fid + 1


def test_demo_metrics_judge_a_larger_rgb_digits_teacher():
    """The testbed's teachers (digits at 3×16×16 here, 3×32×32 for CIFAR-10's network) are scored like the
    8×8 one: samples of their shape, the same seed the same samples, another seed others."""
    torch.manual_seed(0)
    teacher = EDMPrecond(**tiny_song_config(img_resolution=16, label_dim=10)).eval()
    detector = load_detector("digits")
    metrics = DigitsMetrics(teacher, detector, num_samples=20, batch_size=10)
    assert metrics.image_shape == (3, 16, 16) and metrics.teacher_images.shape == (20, 3, 16, 16)
    assert 0 <= metrics.teacher_row["class_accuracy"] <= 1 and math.isfinite(metrics.teacher_row["fid"])
    again = DigitsMetrics(teacher, detector, num_samples=20, batch_size=10)
    other_seed = DigitsMetrics(teacher, detector, num_samples=20, seed=1, batch_size=10)
    assert torch.equal(again.teacher_images, metrics.teacher_images)
    assert not torch.allclose(other_seed.teacher_images, metrics.teacher_images)
    student = student_from_teacher(tiny_song_config(img_resolution=16, label_dim=10), teacher.state_dict()).eval()
    assert metrics.student("untrained", student)["rmse_vs_teacher"] > 0
    rows = metrics.comparison_rows(student, per_digit=1)
    assert [label.split("\n")[0] for label, _ in rows] == ["teacher", "PID student"]
    assert rows[0][1].shape == (10, 16, 16, 3) and rows[0][1].dtype == torch.uint8
    for config in (tiny_song_config(img_resolution=12, label_dim=10), tiny_song_config(img_resolution=16)):
        with pytest.raises(ValueError, match="is not a digits teacher"):
            check_digits_teacher(EDMPrecond(**config), "that file")


def test_demo_metrics_script_explains_bad_run_folders(tmp_path):
    script = os.path.join(REPO, "scripts", "demo_metrics.py")

    def run(folder, *flags):
        return subprocess.run([sys.executable, script, "--run_dir", str(folder), "--num_samples", "16", *flags],
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    bad_device = run(tmp_path / "nothing", "--device", "gpu")
    assert bad_device.returncode == 2 and "--device 'gpu' is not a device" in bad_device.stderr
    assert "Traceback" not in bad_device.stderr
    if not torch.cuda.is_available():
        no_gpu = run(tmp_path / "nothing", "--device", "cuda")
        assert no_gpu.returncode == 2 and "none is visible; use --device cpu" in no_gpu.stderr
    missing = run(tmp_path / "nothing")
    assert missing.returncode == 1 and "run_config.json" in missing.stderr and "Traceback" not in missing.stderr
    config = tiny_song_config(img_resolution=16)
    save_teacher(EDMPrecond(**config), tmp_path / "teacher16.pt", config)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run_config.json").write_text(json.dumps({"teacher_model_path": str(tmp_path / "teacher16.pt"),
                                                        "network_config": config, "sigma_max": 80.0}))
    foreign = run(folder)
    assert foreign.returncode == 1 and "is not a digits teacher" in foreign.stderr
    assert "Traceback" not in foreign.stderr
    assert sorted(os.listdir(folder)) == ["run_config.json"]  # nothing written
    (folder / "run_config.json").write_text(json.dumps({"teacher_model_path": "x"}))
    teacher_run = run(folder)
    assert teacher_run.returncode == 1 and "not a PID run folder" in teacher_run.stderr


def test_image_sample_refuses_a_label_outside_the_teacher_classes(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "image_sample.py"), "--training_mode",
                           "one_shot_pinn_edm_edm_teacher", "--model_path", SHIPPED_TEACHER, "--class_label", "12"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "OPENAI_LOGDIR": str(tmp_path / "out")})
    assert done.returncode == 1 and "valid labels are 0 to 9" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_digits_reference_is_identified_by_its_data_and_detector_whatever_the_threads():
    """A second walk with another process count (1 thread under mpirun, 2 alone) asks the same question."""
    from pid_diffusion.evaluation.detectors import load_detector
    from pid_diffusion.evaluation.statistics import reference_digest, reference_stats

    detector = load_detector("digits")
    threads = torch.get_num_threads()
    digests = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            digests.append(reference_digest("digits", "", reference_stats("digits", "", detector), detector))
    finally:
        torch.set_num_threads(threads)
    assert digests[0] == digests[1]
    with torch.no_grad():
        next(detector.parameters()).add_(1e-3)  # another classifier: another reference
    assert reference_digest("digits", "", reference_stats("digits", "", detector), detector) != digests[0]
    statistics = (np.zeros(4), np.eye(4))  # a statistics file is identified by its arrays
    assert reference_digest("cifar10", "ref.npz", statistics, detector) != \
        reference_digest("cifar10", "ref.npz", (np.ones(4), np.eye(4)), detector)


def test_the_digits_detector_without_the_digits_reference_says_what_to_add():
    from pid_diffusion.evaluation.detectors import load_detector
    from pid_diffusion.evaluation.statistics import reference_stats

    detector = load_detector("digits")
    with pytest.raises(ValueError, match="--detector digits measures digits, not --fid_dataset cifar10: add "
                                         "--fid_dataset digits"):
        reference_stats("cifar10", "", detector)
    assert reference_stats("digits", "", detector)[0].shape[0] == reference_stats("digits", "", detector)[1].shape[0]


def test_the_walk_measures_is_pr_and_kid_beside_fid_in_a_long_table_whatever_the_process_count(tmp_path):
    """fid_evaluation.py --metrics on the digits: a row per (checkpoint, metric) with its parameters; two processes
    (each sampling its share) give one process's values; a row answers only its own question."""
    teacher = os.path.join(REPO, "model_zoo", "digits-ddpmpp.pt")
    base = [os.path.join(REPO, "scripts", "fid_evaluation.py"), "--training_mode", "one_shot_pinn_edm_edm_teacher",
            "--checkpoints", teacher, "--detector", "digits", "--fid_dataset", "digits", "--sampler", "euler",
            "--steps", "2", "--num_samples", "40", "--batch_size", "10", "--save_samples", "False",
            "--metrics", "fid,is,pr,kid", "--kid_subset_size", "20", "--kid_subsets", "5"]

    def walk(folder, processes=1, extra=()):
        folder.mkdir(exist_ok=True)
        launcher = [MPIRUN, "-np", str(processes)] if processes > 1 else []
        done = subprocess.run([*launcher, sys.executable, *base, "--exp_dir", str(folder), *extra], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        with open(folder / "metrics_42.csv", newline="") as f:
            return {row["metric"]: row for row in csv.DictReader(f)}, done.stdout

    alone, said = walk(tmp_path / "one")
    assert set(alone) == {"inception_score", "precision", "recall", "kid"}
    assert (alone["kid"]["subset_size"], alone["kid"]["subsets"], alone["kid"]["subset_seed"]) == ("20", "5", "42")
    assert alone["precision"]["k"] == "3" and alone["inception_score"]["splits"] == "10"
    assert all(row["model_name"] == "digits-ddpmpp" and row["num_samples"] == "40" for row in alone.values())
    assert 1 <= float(alone["inception_score"]["value"]) <= 10 and float(alone["inception_score"]["std"]) >= 0
    assert "inception_score" in said and "kid" in said
    again, said = walk(tmp_path / "one")
    assert "already evaluated" in said and again == alone  # answered, nothing measured
    changed, said = walk(tmp_path / "one", extra=["--kid_subsets", "6"])
    assert "measured again for kid" in said and changed["kid"]["subsets"] == "6"
    if MPIRUN:  # each process samples its share: the outputs are put back in sample order before any metric
        shared, _ = walk(tmp_path / "two", processes=2)
        for metric in alone:
            assert float(shared[metric]["value"]) == pytest.approx(float(alone[metric]["value"]), rel=1e-9, abs=1e-12)
    # another real set: the precision/recall and KID rows name it and its digest, and answer their own question
    from PIL import Image

    real = tmp_path / "real"
    real.mkdir()
    for i, image in enumerate(digits.load_digits("held_out")[0][:50]):
        Image.fromarray(((image[0] + 1) * 127.5).round().to(torch.uint8).numpy()).save(real / f"{i:02d}.png")
    held_out, said = walk(tmp_path / "one", extra=["--real_images", str(real)])
    assert "measured again for precision, recall, kid" in said
    assert held_out["kid"]["real_images"] == str(real) and held_out["kid"]["subset_size"] == "20"
    assert held_out["kid"]["real_sha256"] != alone["kid"]["real_sha256"] and held_out["kid"]["value"] != alone["kid"]["value"]
    assert held_out["inception_score"] == alone["inception_score"]  # no real images in its question
    refused = subprocess.run([sys.executable, *base[:-4], "--detector", "pixels", "--fid_dataset", "cifar10",
                              "--metrics", "fid,is", "--exp_dir", str(tmp_path)], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 1 and "--metrics is needs the detector's class logits" in refused.stderr


def test_fd_dinov2_is_a_second_detector_on_the_same_samples_and_equals_dinov2_s_own_fid(tmp_path):
    """--metrics fd_dinov2 runs DINOv2 beside the walk's detector on the same images: its row equals the FID of a walk
    with --detector dinov2 on them (one number, two routes), records DINOv2 and its reference (not the FID
    detector's), and another reference is another question, measured again."""
    from test_metrics import tiny_hub

    tiny_hub(tmp_path / "hub", 1024)
    dinov2 = ["--dinov2_repo", str(tmp_path / "hub"), "--dinov2_path", str(tmp_path / "hub" / "weights.pth")]
    held_out, training = (((digits.load_digits(split)[0] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
                          for split in ("held_out", "train"))
    np.savez(tmp_path / "samples_360x8x8x1.npz", held_out.numpy())
    np.savez(tmp_path / "training.npz", training.numpy())
    script = [sys.executable, os.path.join(REPO, "scripts", "fid_evaluation.py")]

    def run(*flags):
        done = subprocess.run([*script, *flags], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    for name, images in (("train", "training.npz"), ("held", "samples_360x8x8x1.npz")):
        run("--samples", str(tmp_path / images), "--detector", "dinov2", *dinov2, "--write_reference",
            str(tmp_path / f"dinov2-{name}.npz"))
    measured = ["--samples", str(tmp_path / "samples_360x8x8x1.npz"), "--results_dir", str(tmp_path / "results"),
                "--batch_size", "100"]
    run(*measured, "--detector", "digits", "--fid_dataset", "digits", "--metrics", "fid,fd_dinov2", *dinov2,
        "--dinov2_ref_path", str(tmp_path / "dinov2-train.npz"))
    alone = run(*measured, "--detector", "dinov2", *dinov2, "--ref_path", str(tmp_path / "dinov2-train.npz"),
                "--results_dir", str(tmp_path / "alone"))
    with open(tmp_path / "results" / "metrics_samples.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    fd_alone = float(re.search(r"samples_360x8x8x1: FID (-?[0-9.]+)", alone.stdout).group(1))
    assert row["metric"] == "fd_dinov2" and float(row["value"]) == pytest.approx(fd_alone, rel=1e-4) and fd_alone > 1e-3
    assert row["detector"].startswith("dinov2") and row["reference"].endswith("dinov2-train.npz")
    assert row["resize"] == "torch"
    run(*measured, "--detector", "digits", "--fid_dataset", "digits", "--metrics", "fid,fd_dinov2", *dinov2,
        "--dinov2_ref_path", str(tmp_path / "dinov2-held.npz"))
    with open(tmp_path / "results" / "metrics_samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and abs(float(rows[1]["value"])) < 1e-3  # the images against their own statistics
    # a walk over checkpoints feeds DINOv2 from its sampling pass: the same number as a --detector dinov2 walk
    walk = ["--exp_dir", str(tmp_path), "--checkpoints", SHIPPED_TEACHER, "--training_mode",
            "one_shot_pinn_edm_edm_teacher", "--sampler", "euler", "--steps", "2", "--num_samples", "30", "--batch_size",
            "10", "--save_samples", "False"]
    run(*walk, "--detector", "digits", "--fid_dataset", "digits", "--metrics", "fid,fd_dinov2", *dinov2,
        "--dinov2_ref_path", str(tmp_path / "dinov2-train.npz"), "--results_dir", str(tmp_path / "walk"))
    run(*walk, "--detector", "dinov2", *dinov2, "--ref_path", str(tmp_path / "dinov2-train.npz"), "--results_dir",
        str(tmp_path / "walk-alone"))
    with open(tmp_path / "walk" / "metrics_42.csv", newline="") as f:
        (walked,) = list(csv.DictReader(f))
    with open(tmp_path / "walk-alone" / "fid_results_42.csv", newline="") as f:
        (walked_alone,) = list(csv.DictReader(f))
    assert walked["metric"] == "fd_dinov2" and float(walked["value"]) == pytest.approx(float(walked_alone["FID"]), rel=1e-4)
    refused = subprocess.run([*script, *measured, "--detector", "digits", "--fid_dataset", "digits", "--metrics",
                              "fid,fd_dinov2", "--dinov2_repo", str(tmp_path / "hub")], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 1 and "needs both --dinov2_repo" in refused.stderr and "Traceback" not in refused.stderr


def test_samples_made_by_any_code_are_measured_as_checkpoints_are(tmp_path):
    """fid_evaluation.py --samples: the held-out real digits as a samples file of the original's format; their
    FID is the one computed from their features directly, their rows name them by a digest of their pixels."""
    from pid_diffusion.evaluation.detectors import detector_input
    from pid_diffusion.evaluation.statistics import feature_stats, frechet_distance

    images = ((digits.load_digits("held_out")[0] + 1) * 127.5).round().to(torch.uint8)  # N × 1 × 8 × 8
    np.savez(tmp_path / "samples_360x8x8x1.npz", images.permute(0, 2, 3, 1).numpy())
    command = [sys.executable, os.path.join(REPO, "scripts", "fid_evaluation.py"), "--samples",
               str(tmp_path / "samples_360x8x8x1.npz"), "--results_dir", str(tmp_path / "results"), "--detector",
               "digits", "--fid_dataset", "digits", "--metrics", "fid,is,pr", "--batch_size", "100"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "results" / "fid_results_samples.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    detector = load_detector("digits", SHIPPED_CLASSIFIER)
    with torch.no_grad():
        features = detector(detector_input(images)).to(torch.float64)
    direct = frechet_distance(*feature_stats(features), *digits_reference_stats(detector))
    assert row["model_name"] == "samples_360x8x8x1" and float(row["FID"]) == pytest.approx(direct, rel=1e-6)
    assert row["num_samples"] == "360" and len(row["weights_sha256"]) == 16
    with open(tmp_path / "results" / "metrics_samples.csv", newline="") as f:
        assert {r["metric"] for r in csv.DictReader(f)} == {"inception_score", "precision", "recall"}
    refused = subprocess.run([*command, "--exp_dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "drop --exp_dir" in refused.stderr
    # the images' own statistics as a reference: the same images then score FID 0 against them
    statistics = tmp_path / "held-out-stats.npz"
    wrote = subprocess.run([*command[:4], "--detector", "digits", "--write_reference", str(statistics)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert wrote.returncode == 0 and "statistics of 360 images in the digits detector's 64-d features" in wrote.stdout
    with np.load(statistics) as written:
        assert np.allclose(written["mu"], features.mean(0).numpy()) and written["sigma"].shape == (64, 64)
    again = subprocess.run([*command[:4], "--detector", "digits", "--write_reference", str(statistics)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "exists; nothing was replaced" in again.stderr
    own = subprocess.run([*command[:6], "--detector", "digits", "--ref_path", str(statistics)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert own.returncode == 0, own.stderr
    assert abs(float(re.search(r"samples_360x8x8x1: FID (-?[0-9.]+)", own.stdout).group(1))) < 1e-4  # 0 up to rounding


def test_training_adds_the_asked_metrics_to_its_fid_and_the_walk_finds_them(tmp_path):
    from pid_diffusion.trainer import PIDTrainer, TrainConfig, train

    config = dict(teacher_model_path=SHIPPED_TEACHER, global_batch_size=4, loss_norm="l2", ema_rate="0.9",
                  total_training_steps=2, save_interval=2, log_interval=1, lr=1e-3, eval_interval=2, eval_samples=40,
                  detector="digits", fid_dataset="digits", eval_metrics="fid,is,pr,kid")
    train(TrainConfig(log_dir=str(tmp_path / "run"), **config))
    with open(tmp_path / "run" / "fid_during_training.csv", newline="") as f:
        during = list(csv.DictReader(f))
    assert len(during) == 2 and all(float(r["inception_score"]) >= 1 and 0 <= float(r["recall"]) <= 1 for r in during)
    with open(tmp_path / "run" / "metrics_0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["model_name"], r["metric"]) for r in rows} == {
        (name, metric) for name in ("ema_0.9_000002", "model000002")
        for metric in ("inception_score", "precision", "recall", "kid")}
    assert {r["subset_size"] for r in rows if r["metric"] == "kid"} == {"40"}
    walk = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "fid_evaluation.py"), "--exp_dir",
                           str(tmp_path / "run"), "--checkpoints", "ema_0.9_000002.pt,model000002.pt", "--seed", "0",
                           "--num_samples", "40", "--batch_size", "10", "--detector", "digits", "--fid_dataset",
                           "digits", "--metrics", "fid,is,pr,kid", "--save_samples", "False"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert walk.returncode == 0 and walk.stdout.count("already evaluated") == 2, walk.stdout + walk.stderr[-2000:]
    with pytest.raises(ValueError, match="--eval_metrics fid,kid adds to FID during training, which --eval_interval 0"):
        PIDTrainer(TrainConfig(log_dir=str(tmp_path / "off"), **{**config, "eval_interval": 0,
                                                                 "eval_metrics": "fid,kid"}))
    with pytest.raises(ValueError, match="unknown metric 'fd'"):
        PIDTrainer(TrainConfig(log_dir=str(tmp_path / "bad"), **{**config, "eval_metrics": "fid,fd"}))
    with pytest.raises(ValueError, match="--eval_metrics fd_dinov2 would run DINOv2 ViT-L/14 .* --metrics fd_dinov2"):
        PIDTrainer(TrainConfig(log_dir=str(tmp_path / "dino"), **{**config, "eval_metrics": "fid,fd_dinov2"}))
    assert not any((tmp_path / name).exists() for name in ("off", "bad", "dino"))
