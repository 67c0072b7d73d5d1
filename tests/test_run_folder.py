"""A run folder that cannot be corrupted: one run per folder, changed settings refused or recorded,
debris of interrupted saves removed, damaged checkpoints skipped, the same command gives the same run."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import small_run_config as make_config
from pid_diffusion.run_folder import ChangedSettingsError
from pid_diffusion.loop import RunFolderError, TrainingDivergedError, TrainingInterrupted
from pid_diffusion.trainer import PIDTrainer, TrainConfig, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO, "scripts", "cm_train.py")
MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder)) if name != ".lock"}


def test_a_second_run_on_a_folder_in_use_stops_and_a_stale_lock_is_taken_over(teacher_path, tmp_path):
    first = PIDTrainer(make_config(teacher_path, tmp_path))
    with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
        PIDTrainer(make_config(teacher_path, tmp_path))
    first.close()
    second = PIDTrainer(make_config(teacher_path, tmp_path))  # released: usable again
    second.close()
    (tmp_path / ".lock").write_text("process 4242 on elsewhere, started 2026-01-01 00:00:00\n")  # a crashed run's
    third = PIDTrainer(make_config(teacher_path, tmp_path))
    third.close()
    assert "took over the lock of a run that ended without releasing it (process 4242" in (tmp_path / "log.txt").read_text()


def test_changed_settings_are_refused_or_recorded_never_restarted(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path))
    before = snapshot(tmp_path)
    for change in (dict(lr=2e-3), dict(ema_rate="0.9,0.99"), dict(seed=1)):
        with pytest.raises(ChangedSettingsError, match="--allow_changed_settings True") as refused:
            train(make_config(teacher_path, tmp_path, total_training_steps=4, **change))
        assert list(change)[0] in str(refused.value)
        assert snapshot(tmp_path) == before  # nothing written, nothing overwritten
    resumed = train(make_config(teacher_path, tmp_path, total_training_steps=4, ema_rate="0.9,0.99",
                                allow_changed_settings=True))
    assert resumed.step == 4 and "at step 2" in (tmp_path / "log.txt").read_text()  # not restarted at 0
    recorded = json.loads((tmp_path / "run_config.json").read_text())
    assert recorded["ema_rate"] == "0.9,0.99"
    assert recorded["changes"] == [{"step": 2, "setting": "ema_rate", "from": "0.9", "to": "0.9,0.99"}]
    assert (tmp_path / "ema_0.99_000004.pt").exists() and (tmp_path / "model000002.pt").read_bytes() == before["model000002.pt"]


def test_debris_of_interrupted_saves_is_removed_and_a_damaged_checkpoint_skipped(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path, total_training_steps=4))
    (tmp_path / "model000006.pt.x1y2z3ab.tmp.pt").write_bytes(b"partial")
    (tmp_path / "model000004.pt").write_bytes((tmp_path / "model000004.pt").read_bytes()[:1000])  # truncated
    resumed = PIDTrainer(make_config(teacher_path, tmp_path, total_training_steps=6))
    log = (tmp_path / "log.txt").read_text()
    assert "removed 1 temporary file(s) of an interrupted save: model000006.pt.x1y2z3ab.tmp.pt" in log
    assert "checkpoint 000004 is damaged and skipped" in log and resumed.step == 2
    assert not (tmp_path / "model000006.pt.x1y2z3ab.tmp.pt").exists()
    resumed.close()


def test_checkpoints_but_none_readable_stops_without_overwriting(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path))
    (tmp_path / "model000002.pt").write_bytes(b"garbage")
    before = snapshot(tmp_path)
    with pytest.raises(RunFolderError, match="none is complete and readable; nothing was overwritten"):
        PIDTrainer(make_config(teacher_path, tmp_path, total_training_steps=4))
    after = snapshot(tmp_path)
    assert after.pop("log.txt").startswith(before.pop("log.txt"))  # the log only gained the reason
    assert after == before


def test_the_same_command_twice_gives_identical_checkpoints(tmp_path):
    # builtin:gmm: the student starts from random weights; dropout draws masks every step
    for name in ("a", "b"):
        train(TrainConfig(teacher_model_path="builtin:gmm", log_dir=str(tmp_path / name), global_batch_size=4,
                          loss_norm="l2", ema_rate="0.9", dropout=0.1, total_training_steps=3, save_interval=3,
                          log_interval=1, lr=1e-3, seed=7))
    for file in ("model000003.pt", "ema_0.9_000003.pt"):
        a, b = (torch.load(tmp_path / name / file, weights_only=True) for name in ("a", "b"))
        assert all(torch.equal(a[k], b[k]) for k in a), file
    train(TrainConfig(teacher_model_path="builtin:gmm", log_dir=str(tmp_path / "c"), global_batch_size=4, loss_norm="l2",
                      ema_rate="0.9", dropout=0.1, total_training_steps=3, save_interval=3, log_interval=1, lr=1e-3, seed=8))
    a, c = (torch.load(tmp_path / name / "model000003.pt", weights_only=True) for name in ("a", "c"))
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the same training with another seed is another run


@pytest.mark.parametrize("flag,value", [("batch_size", -7), ("microbatch", -3), ("microbatch", 0),
                                        ("lr", float("inf")), ("lr", 1e38)])
def test_impossible_numbers_are_refused(teacher_path, tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"--{flag} must be"):
        make_config(teacher_path, tmp_path, **{flag: value}).validate()


def test_diverged_weights_are_never_saved_and_the_advice_resumes(teacher_path, tmp_path, monkeypatch):
    trainer = PIDTrainer(make_config(teacher_path, tmp_path, total_training_steps=8, save_interval=1))
    real_rate = trainer.learning_rate

    def explode_after_two(step):  # from the third update on, lr 1e6: huge weights, still finite
        return 1e6 if step >= 2 else real_rate(step)

    monkeypatch.setattr(trainer, "learning_rate", explode_after_two)
    with pytest.raises(TrainingDivergedError, match=r"after step 3 give a loss of .* on the next batch") as stopped:
        trainer.run()
    trainer.close()
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("model")) == ["model000001.pt", "model000002.pt"]
    assert "Last good checkpoint: model000002.pt" in str(stopped.value)
    assert "--lr <lower> --allow_changed_settings True" in str(stopped.value)
    # the advice works: the run continues from the good checkpoint
    resumed = train(make_config(teacher_path, tmp_path, total_training_steps=4, save_interval=1, lr=1e-4,
                                allow_changed_settings=True))
    assert resumed.step == 4 and "at step 2" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("growth", [15.0, 1.0])
def test_a_loss_rising_slowly_stops_the_run_before_its_weights_are_saved(teacher_path, tmp_path, monkeypatch, growth):
    # each step's loss `growth` times the last: the check on the next batch (10^4 times the largest step loss so
    # far) never fires, the logged mean 10^4 times its lowest does; an unchanged loss trains to the end
    trainer = PIDTrainer(make_config(teacher_path, tmp_path, total_training_steps=8, save_interval=2, log_interval=2))
    real_losses = trainer.batch_losses
    monkeypatch.setattr(trainer, "batch_losses", lambda *args, **kwargs: real_losses(*args, **kwargs) * growth ** trainer.step)
    try:
        if growth == 1.0:
            trainer.run()
        else:
            with pytest.raises(TrainingDivergedError, match=r"mean loss rose to .* by step 6, .* times its lowest logged "
                               r"level .*Last good checkpoint: model000004.pt") as stopped:
                trainer.run()
            assert "--lr <lower> --allow_changed_settings True" in str(stopped.value)
    finally:
        trainer.close()
    saved = sorted(n for n in os.listdir(tmp_path) if n.startswith("model"))
    assert saved == (["model000002.pt", "model000004.pt"] if growth > 1 else
                     ["model000002.pt", "model000004.pt", "model000006.pt", "model000008.pt"])


def test_diverging_from_the_start_saves_nothing(teacher_path, tmp_path):
    with pytest.raises(TrainingDivergedError, match="no checkpoint was written"):
        train(make_config(teacher_path, tmp_path, total_training_steps=4, save_interval=1, lr=1e6))
    assert not any(n.startswith("model") for n in os.listdir(tmp_path))


def test_a_failed_write_is_one_line_naming_the_file_and_files_follow_the_umask(tmp_path, monkeypatch):
    from pid_diffusion.files import atomic_torch_save

    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "kept.pt")
    mask = os.umask(0o022)
    os.umask(mask)
    assert os.stat(tmp_path / "kept.pt").st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # what torch raises when the disk fills: the OSError is the cause
        f.write(b"partial")
        try:
            raise OSError(28, "No space left on device")
        except OSError as cause:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed") from cause

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as failed:
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "kept.pt")
    monkeypatch.setattr(torch, "save", real_save)
    assert str(failed.value) == f"[Errno 28] cannot write {tmp_path / 'kept.pt'}: No space left on device"
    assert sorted(os.listdir(tmp_path)) == ["kept.pt"]  # no temporary file left
    assert torch.equal(torch.load(tmp_path / "kept.pt", weights_only=True)["w"], torch.ones(2))  # the old file intact


@pytest.mark.parametrize("launcher,signal_number", [("mpirun", signal.SIGTERM), (None, signal.SIGINT)])
def test_a_signal_ends_the_step_writes_a_checkpoint_and_exits_with_one_line(teacher_path, tmp_path, launcher,
                                                                          signal_number):
    if launcher and MPIRUN is None:
        pytest.skip("no mpirun: install the mpich extra (pip install -e '.[mpich]')")
    command = [sys.executable, TRAIN_SCRIPT, "--teacher_model_path", teacher_path, "--global_batch_size", "8",
               "--loss_norm", "l2", "--ema_rate", "0.9", "--log_interval", "5", "--save_interval", "100000",
               "--total_training_steps", "100000"]
    if launcher:
        command = [MPIRUN, "-np", "2", *command]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OPENAI_LOGDIR": str(tmp_path)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = tmp_path / "log.txt", time.time() + 120
    while time.time() < deadline and not (log.exists() and "step      10" in log.read_text()):
        time.sleep(0.1)
    process.send_signal(signal_number)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal_number, err[-2000:]
    name = signal.Signals(signal_number).name
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"stopped by {name} at step") and "Traceback" not in err
    step = int(lines[0].split("at step ")[1].split(";")[0])
    assert step >= 10 and (tmp_path / f"model{step:06d}.pt").exists() and (tmp_path / f"ema_0.9_{step:06d}.pt").exists()
    resumed = subprocess.run(command[command.index(sys.executable):-1] + [str(step + 2)], cwd=REPO, timeout=120,
                             env={**os.environ, "OPENAI_LOGDIR": str(tmp_path)}, capture_output=True, text=True)
    assert resumed.returncode == 0 and f"at step {step}" in resumed.stdout  # the same command continues


@pytest.mark.parametrize("at_step,lost", [(3, "the 1 step(s) since model000002.pt are lost; the same command continues"),
                                          (1, "before any checkpoint was written: the 1 step(s) trained are lost")])
def test_a_second_signal_before_the_save_stops_at_once_and_says_which_steps_are_lost(teacher_path, tmp_path, monkeypatch,
                                                                                     at_step, lost):
    trainer = PIDTrainer(make_config(teacher_path, tmp_path, total_training_steps=6))
    real_losses = trainer.batch_losses

    def two_interrupts_in_one_step(*args, **kwargs):  # Ctrl-C pressed twice while a step computes
        if trainer.step == at_step and kwargs.get("eager") is not True:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real_losses(*args, **kwargs)

    monkeypatch.setattr(trainer, "batch_losses", two_interrupts_in_one_step)
    try:
        with pytest.raises(TrainingInterrupted, match=f"stopped by a second SIGINT at step {at_step}, .*{re.escape(lost)}") as stopped:
            trainer.run()
    finally:
        trainer.close()
    assert stopped.value.exit_code == 130
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("model")) == (["model000002.pt"] if at_step > 2 else [])


def test_damaged_files_are_named_not_loaded(teacher_path, tmp_path):
    from pid_diffusion.checkpoint import StudentLoadError, TeacherLoadError, load_student, load_teacher

    flipped = bytearray(open(teacher_path, "rb").read())
    flipped[len(flipped) // 2] ^= 0x10  # one bit inside a tensor's bytes
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(TeacherLoadError, match="checksum of its record .* does not match"):
        load_teacher(tmp_path / "flipped.pt")
    train(make_config(teacher_path, tmp_path / "run"))
    config_path = tmp_path / "run" / "run_config.json"
    text = config_path.read_text()
    config_path.write_text(text[:len(text) // 2])  # truncated
    with pytest.raises(StudentLoadError, match="run_config.json cannot be read") as unreadable:
        load_student(tmp_path / "run" / "model000002.pt")
    assert not isinstance(unreadable.value, TeacherLoadError)  # a student's file is not called a teacher's
    config_path.write_text(json.dumps({"sigma_max": 80.0}))
    with pytest.raises(StudentLoadError, match="has no network_config"):
        load_student(tmp_path / "run" / "model000002.pt")


def the_originals_files(folder, steps):
    """Reduce one of our run folders to what the original writes: model, EMA and optimizer files of
    `steps`, no trainer state, no run_config.json, no logs."""
    for name in os.listdir(folder):
        ours = name.startswith("trainer_state") or not name.endswith(".pt")
        other_step = name.endswith(".pt") and int(name[-9:-3]) not in steps
        if ours or other_step:
            os.remove(folder / name)


def test_a_folder_the_original_wrote_resumes_from_its_newest_complete_step(teacher_path, tmp_path):
    straight = train(make_config(teacher_path, tmp_path / "straight", total_training_steps=4))
    original = tmp_path / "original"
    train(make_config(teacher_path, original, total_training_steps=2))
    the_originals_files(original, {2})
    written = snapshot(original)
    resumed = train(make_config(teacher_path, original, total_training_steps=4))
    assert resumed.step == 4 and "at step 2" in (original / "log.txt").read_text()
    assert "no trainer state, as in a folder the original wrote" in (original / "log.txt").read_text()
    assert all(snapshot(original)[name] == data for name, data in written.items())  # nothing overwritten
    for name in ("model000004.pt", "ema_0.9_000004.pt"):  # the step inputs derive from --seed and the step alone
        assert all(torch.equal(a, b) for a, b in zip(torch.load(original / name).values(),
                                                     torch.load(tmp_path / "straight" / name).values()))
    assert straight.step == 4

    # the original's EMA rates differ from the ones asked for: refused with the reason, nothing touched
    the_originals_files(original, {2, 4})
    written = snapshot(original)
    with pytest.raises(RunFolderError, match="checkpoint 000004 lacks ema_0.99_000004.pt; --ema_rate must list .*nothing was overwritten"):
        train(make_config(teacher_path, original, total_training_steps=6, ema_rate="0.99"))
    assert snapshot(original) == written


def test_a_folder_with_the_originals_files_and_ours_resumes_from_the_newest(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path, total_training_steps=4))  # ours at 2 and 4
    os.remove(tmp_path / "trainer_state000004.pt")  # step 4 now looks as the original writes it
    resumed = train(make_config(teacher_path, tmp_path, total_training_steps=6))
    assert resumed.step == 6 and "at step 4" in (tmp_path / "log.txt").read_text()


def test_run_config_is_written_and_read_by_the_run_folder_with_a_format_version(teacher_path, tmp_path):
    from pid_diffusion.run_folder import RUN_CONFIG_VERSION, read_run_config

    train(make_config(teacher_path, tmp_path))
    recorded = read_run_config(tmp_path)
    assert recorded["format_version"] == RUN_CONFIG_VERSION and recorded["network_config"]
    newer = {**recorded, "format_version": RUN_CONFIG_VERSION + 1}
    (tmp_path / "run_config.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="format version 2, newer than this pid_diffusion reads"):
        read_run_config(tmp_path)
    del newer["format_version"]  # a folder of the first format, before the field existed
    (tmp_path / "run_config.json").write_text(json.dumps(newer))
    assert train(make_config(teacher_path, tmp_path, total_training_steps=4)).step == 4


def resumed_weights(teacher_path, source, folder, **settings):
    """The weights at step 4 of the run in `source` (saved at step 2) continued in a copy with `settings`."""
    shutil.copytree(source, folder)
    trainer = train(make_config(teacher_path, folder, total_training_steps=4, **settings))
    return {k: v.clone() for k, v in trainer.student.net.state_dict().items()}


# RAdam's first steps take no square root (no ε): Adam shows ε at once
@pytest.mark.parametrize("change,base", [(dict(lr=0.0), {}), (dict(weight_decay=0.5), {}),
                                         (dict(opt_eps=0.1), dict(optimizer="adam"))])
def test_optimizer_settings_changed_on_resume_are_checked_recorded_and_applied(teacher_path, tmp_path, change, base):
    train(make_config(teacher_path, tmp_path / "run", **base))  # two steps, saved at 2
    name, value = next(iter(change.items()))
    with pytest.raises(ChangedSettingsError, match=f"{name}: .* → {value!r}"):
        train(make_config(teacher_path, tmp_path / "run", total_training_steps=4, **base, **change))
    same = resumed_weights(teacher_path, tmp_path / "run", tmp_path / "same", **base)
    again = resumed_weights(teacher_path, tmp_path / "run", tmp_path / "again", **base)
    changed = resumed_weights(teacher_path, tmp_path / "run", tmp_path / "changed", allow_changed_settings=True,
                              **base, **change)
    assert all(torch.equal(same[k], again[k]) for k in same)  # the same command: the same weights
    assert any(not torch.equal(same[k], changed[k]) for k in same)  # the new setting took effect
    recorded = json.loads((tmp_path / "changed" / "run_config.json").read_text())
    assert recorded[name] == value and recorded["changes"][-1]["setting"] == name
    if name == "lr":  # nothing moves at lr 0: the saved weights of step 2 stay
        saved = torch.load(tmp_path / "run" / "model000002.pt", weights_only=True)
        assert all(torch.equal(saved[k], changed[k]) for k in saved)


def test_resume_checkpoint_checks_the_settings_it_was_trained_with(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path / "run"))
    checkpoint = str(tmp_path / "run" / "model000002.pt")
    for folder in (tmp_path / "run", tmp_path / "elsewhere"):  # in its own folder, or continued in a new one
        with pytest.raises(ChangedSettingsError, match="seed: 0 → 7"):
            train(make_config(teacher_path, folder, total_training_steps=4, seed=7, resume_checkpoint=checkpoint))
    resumed = train(make_config(teacher_path, tmp_path / "elsewhere", total_training_steps=4, seed=7,
                                resume_checkpoint=checkpoint, allow_changed_settings=True))
    assert resumed.step == 4
    recorded = json.loads((tmp_path / "elsewhere" / "run_config.json").read_text())
    assert recorded["changes"] == [{"step": 2, "setting": "seed", "from": 0, "to": 7}]
    same = train(make_config(teacher_path, tmp_path / "third", total_training_steps=4, resume_checkpoint=checkpoint))
    assert same.step == 4 and json.loads((tmp_path / "third" / "run_config.json").read_text())["changes"] == []


@pytest.mark.parametrize("replaced", ["teacher", "guide"])
def test_a_teacher_or_guide_replaced_at_the_same_path_is_a_changed_run(tmp_path, replaced):
    from conftest import save_random_teacher, tiny_song_config

    files = {name: tmp_path / f"{name}.pt" for name in ("teacher", "guide")}
    for seed, file in enumerate(files.values()):
        torch.manual_seed(seed)
        save_random_teacher(file, tiny_song_config(label_dim=3))
    config = dict(guide_model_path=str(files["guide"]), guidance=1.5)
    train(make_config(str(files["teacher"]), tmp_path / "run", **config))
    shutil.copy(files[replaced], tmp_path / "copy.pt")
    os.replace(tmp_path / "copy.pt", files[replaced])  # the same weights written anew: the same run
    assert train(make_config(str(files["teacher"]), tmp_path / "run", total_training_steps=4, **config)).step == 4
    torch.manual_seed(9)
    save_random_teacher(files[replaced], tiny_song_config(label_dim=3))  # other weights at the same path
    before = snapshot(tmp_path / "run")
    with pytest.raises(ChangedSettingsError, match="teacher_weights_sha256: '[0-9a-f]{16}' → '[0-9a-f]{16}'"):
        train(make_config(str(files["teacher"]), tmp_path / "run", total_training_steps=6, **config))
    assert snapshot(tmp_path / "run") == before
    train(make_config(str(files["teacher"]), tmp_path / "run", total_training_steps=6, allow_changed_settings=True,
                      **config))
    recorded = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert [change["setting"] for change in recorded["changes"]] == ["teacher_weights_sha256"]
    assert recorded["changes"][0]["step"] == 4 and recorded["teacher_weights_sha256"] == recorded["changes"][0]["to"]


def test_resuming_an_earlier_step_in_its_folder_never_replaces_the_later_checkpoints(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path / "run", total_training_steps=4))  # checkpoints 2 and 4
    before = snapshot(tmp_path / "run")
    earlier = str(tmp_path / "run" / "model000002.pt")
    with pytest.raises(RunFolderError, match=r"is step 2, but .* holds later checkpoints, which this run would replace "
                                             r"\(model000004.pt, .*ema_0.9_000004.pt.*nothing was changed.*OPENAI_LOGDIR"):
        train(make_config(teacher_path, tmp_path / "run", total_training_steps=4, resume_checkpoint=earlier))
    assert snapshot(tmp_path / "run") == before
    latest = train(make_config(teacher_path, tmp_path / "run", total_training_steps=6,
                               resume_checkpoint=str(tmp_path / "run" / "model000004.pt")))  # the newest: goes on
    assert latest.step == 6
    elsewhere = train(make_config(teacher_path, tmp_path / "new", total_training_steps=4, resume_checkpoint=earlier))
    assert elsewhere.step == 4 and (tmp_path / "new" / "model000004.pt").exists()


def test_each_checkpoint_samples_at_the_noise_levels_it_was_trained_with(teacher_path, tmp_path):
    from pid_diffusion.checkpoint import load_student
    from pid_diffusion.evaluation.sampling import student_options

    train(make_config(teacher_path, tmp_path))  # σ_max 80 up to step 2
    train(make_config(teacher_path, tmp_path, total_training_steps=4, sigma_max=40.0, allow_changed_settings=True))
    levels = {name: load_student(tmp_path / name).noise_levels["sigma_max"]
              for name in ("model000002.pt", "ema_0.9_000002.pt", "model000004.pt", "ema_0.9_000004.pt")}
    assert levels == {"model000002.pt": 80.0, "ema_0.9_000002.pt": 80.0, "model000004.pt": 40.0,
                      "ema_0.9_000004.pt": 40.0}
    earlier = load_student(tmp_path / "model000002.pt")
    assert student_options(earlier, dict(sigma_min=0.002, sigma_max=80.0), {"sigma_max"}, "step 2")["sigma_max"] == 80
    with pytest.raises(ValueError, match="trained with --sigma_max 80"):
        student_options(earlier, dict(sigma_min=0.002, sigma_max=40.0), {"sigma_max"}, "step 2")


def test_run_config_keeps_the_first_command_and_every_invocation_with_its_speed(teacher_path, tmp_path):
    base = [sys.executable, TRAIN_SCRIPT, "--teacher_model_path", teacher_path, "--global_batch_size", "4",
            "--loss_norm", "l2", "--ema_rate", "0.9", "--save_interval", "2", "--log_interval", "2"]
    env = {**os.environ, "OPENAI_LOGDIR": str(tmp_path)}
    for steps, extra in (("2", []), ("4", ["--speed", "reference"])):
        done = subprocess.run([*base, "--total_training_steps", steps, *extra], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        if steps == "2":  # a key this version does not write survives the resume
            recorded = json.loads((tmp_path / "run_config.json").read_text())
            (tmp_path / "run_config.json").write_text(json.dumps({**recorded, "note": "the lr sweep's second run"}))
    recorded = json.loads((tmp_path / "run_config.json").read_text())
    first, second = recorded["invocations"]
    assert recorded["command"] == first["command"] and "--speed" not in first["command"]
    assert "--speed reference" in second["command"] and (first["step"], second["step"]) == (0, 2)
    assert (first["speed_preset"], second["speed_preset"]) == ("eager", "reference")
    assert (first["attention"], second["attention"]) == ("sdpa", "reference")  # what each ran with
    assert recorded["speed_preset"] == "reference" and recorded["attention"] == "reference"  # the settings now
    assert recorded["note"] == "the lr sweep's second run"


def test_a_resume_without_run_config_says_its_settings_cannot_be_checked(teacher_path, tmp_path):
    train(make_config(teacher_path, tmp_path))
    (tmp_path / "run_config.json").unlink()
    resumed = train(make_config(teacher_path, tmp_path, total_training_steps=4, seed=5))
    assert resumed.step == 4
    assert "no run_config.json beside the checkpoint resumed" in (tmp_path / "log.txt").read_text()
    assert json.loads((tmp_path / "run_config.json").read_text())["seed"] == 5  # recorded anew
