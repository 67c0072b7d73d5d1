"""The run folder of a training run, owned here: checkpoint file names, writing and reading a
checkpoint, the complete ones, the lock that keeps one run per folder, the debris of interrupted
saves, and run_config.json (written and read here, with a format version) with the settings a
resumed run must share with it.

Files (rank 0 writes, each through a temporary name and a rename):
  model%06d.pt            the trained network's state dict (bare keys, as the original); written last,
                          so its presence marks the checkpoint complete
  ema_{rate}_%06d.pt      one per EMA rate, same keys
  opt%06d.pt              the optimizer state
  trainer_state%06d.pt    step, every process's RNG states, fp16 loss scale
  run_config.json         the resolved configuration, its changes, the git revision
  .lock                   held (flock) while a run uses the folder; names the process
"""

import json
import os
import re
import subprocess
import sys
import time

from .files import FileLock, LockHeld, atomic_torch_save, read_torch_file, write_json_atomic

MODEL_FILE = re.compile(r"^model(\d{6})\.pt$")
STEP_FILE = re.compile(r"^(?:model|opt|trainer_state|ema_[0-9.]+_)(\d{6})\.pt$")
"""Every file of a checkpoint: the network files, the optimizer and the trainer state."""
CHECKPOINT_NAME = re.compile(r"^(model|ema_[0-9.]+_)(\d{6})\.pt$")
"""The network files of a checkpoint: model{step}.pt and ema_{rate}_{step}.pt."""
NOT_A_MODEL = re.compile(r"^(opt|trainer_state)\d*\.pt$")
"""Optimizer and trainer-state files (ours and the original's)."""
TEMPORARY_FILE = re.compile(r"^.+\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")
"""files.atomic_output's temporary names: <name>.<random>.tmp<extension>."""
LOCK_FILE = ".lock"
RUN_CONFIG_FILE = "run_config.json"
RUN_CONFIG_VERSION = 1
"""run_config.json's format_version (a file without one is of version 1, the first format)."""
PID_RUN, TEACHER_RUN = "pid", "edm_teacher"
RUN_KINDS = {PID_RUN: "PID distillation (scripts/cm_train.py)", TEACHER_RUN: "teacher training (scripts/train_teacher.py)"}
"""`run_kind` in run_config.json: a folder of PID students, or of EDM teachers."""


class RunFolderInUse(RuntimeError):
    pass


class OtherRunKindError(RuntimeError):
    """The run folder holds a run of another kind (teacher training vs PID distillation)."""


class ChangedSettingsError(ValueError):
    pass


def checkpoint_files(log_dir, step, rates):
    names = dict(model=f"model{step:06d}.pt", opt=f"opt{step:06d}.pt", state=f"trainer_state{step:06d}.pt")
    names.update({f"ema_{rate}": f"ema_{rate}_{step:06d}.pt" for rate in rates})
    return {key: os.path.join(log_dir, name) for key, name in names.items()}


def checkpoint_steps(log_dir):
    """Steps of the folder's model files, newest first (a model file is written last: complete)."""
    if not os.path.isdir(log_dir):
        return []
    return sorted((int(m.group(1)) for m in (MODEL_FILE.match(n) for n in os.listdir(log_dir)) if m), reverse=True)


def write_checkpoint(log_dir, step, model_state, ema_states, optimizer_state, trainer_state):
    """Write one checkpoint (rank 0): each EMA file, the optimizer, the trainer state, and the model
    file last, each through a temporary file; the model file's presence marks the checkpoint complete."""
    files = checkpoint_files(log_dir, step, ema_states)
    for rate, state in ema_states.items():
        atomic_torch_save(state, files[f"ema_{rate}"])
    atomic_torch_save(optimizer_state, files["opt"])
    atomic_torch_save(trainer_state, files["state"])
    atomic_torch_save(model_state, files["model"])


def missing_checkpoint_files(log_dir, step, rates):
    """The files a checkpoint lacks to be complete: the model, the optimizer and every EMA file (the
    trainer state is ours alone: a checkpoint the original wrote has none)."""
    return _missing(checkpoint_files(log_dir, step, rates))


def _missing(files):
    return [os.path.basename(p) for key, p in files.items() if key != "state" and not os.path.isfile(p)]


def read_checkpoint(model_path, step, rates):
    """The states of the checkpoint a model file belongs to (the files of its step in its folder):
    {model, ema: {rate: state or None}, opt, state (None when absent, as in the original's folders),
    missing: [the EMA and optimizer files not found]}. An unreadable file raises files.UnreadableFileError."""
    files = checkpoint_files(os.path.dirname(os.path.abspath(model_path)), step, rates)
    files["model"] = model_path

    def read(key):
        return read_torch_file(files[key]) if os.path.isfile(files[key]) else None

    return dict(model=read_torch_file(model_path), ema={rate: read(f"ema_{rate}") for rate in rates}, opt=read("opt"),
                state=read("state"), missing=_missing(files))


def step_from_checkpoint_name(path):
    """The original's rule: the integer after the last 'model' in the file name (0 if none)."""
    match = re.search(r"model(\d+)\.[^.]*$", os.path.basename(path))
    return int(match.group(1)) if match else 0


def resume_step(path):
    """The step of a --resume_checkpoint file (the original's rule); an EMA, optimizer or trainer-state file
    is refused: a checkpoint is resumed from its model file, the others are found beside it."""
    name = os.path.basename(path)
    if (CHECKPOINT_NAME.match(name) and not MODEL_FILE.match(name)) or NOT_A_MODEL.match(name):
        raise ValueError(f"--resume_checkpoint {path}: give the model file of a checkpoint, model%06d.pt (its EMA, "
                         "optimizer and trainer-state files are found beside it)")
    return step_from_checkpoint_name(path)


def checkpoint_step(file_name):
    """A checkpoint's step: from model{step}.pt / ema_{rate}_{step}.pt, else the original's rule (the
    integer after the last 'model' in the name; 0 when there is none, e.g. the released pid_cifar.pt)."""
    match = CHECKPOINT_NAME.match(os.path.basename(file_name))
    return int(match.group(2)) if match else step_from_checkpoint_name(file_name)


def settings_at_step(run_config, step):
    """The run's settings as they were while the checkpoint of `step` was trained: the recorded ones, with each
    change made at that step or later (run_config.json's `changes`, newest first) undone."""
    settings = dict(run_config)
    for change in reversed(run_config.get("changes", [])):
        if change.get("step", -1) >= step and change.get("setting") in settings:
            settings[change["setting"]] = change["from"]
    return settings


def model_file_names(folder):
    """The folder's files that may hold a network, as the original selects them: every *.pt but
    optimizer and trainer-state files (and temporary files and incomplete checkpoints of interrupted saves)."""
    incomplete = set(incomplete_step_files(folder))
    return [n for n in os.listdir(folder) if n.endswith(".pt") and not NOT_A_MODEL.match(n)
            and not TEMPORARY_FILE.match(n) and n not in incomplete]


def remove_temporary_files(log_dir):
    """Delete the temporary files of saves that a crash interrupted; returns their names."""
    removed = sorted(n for n in os.listdir(log_dir) if TEMPORARY_FILE.match(n))
    for name in removed:
        os.remove(os.path.join(log_dir, name))
    return removed


def incomplete_step_files(log_dir):
    """The files of checkpoints whose save was interrupted before its model file (written last) came:
    EMA, optimizer and trainer-state files of a step that has no model{step}.pt."""
    names = os.listdir(log_dir)
    complete = {m.group(1) for m in map(MODEL_FILE.match, names) if m}
    return sorted(n for n in names if (m := STEP_FILE.match(n)) and m.group(1) not in complete)


def remove_incomplete_steps(log_dir):
    """Delete the files of interrupted saves (incomplete_step_files); returns their names."""
    removed = incomplete_step_files(log_dir)
    for name in removed:
        os.remove(os.path.join(log_dir, name))
    return removed


class RunFolderLock(FileLock):
    """The lock of a run folder (<folder>/.lock), taken without waiting: a second run on the folder stops
    with the holder's name."""

    def __init__(self, log_dir):
        super().__init__(os.path.join(log_dir, LOCK_FILE))

    def acquire(self):
        try:
            return super().acquire(wait=False)
        except LockHeld as held:
            raise RunFolderInUse(f"the run folder {os.path.dirname(self.path)} is in use by {held.holder}; wait for that "
                                 "run to end, or give this one another folder (OPENAI_LOGDIR)") from None


def git_revision():
    """The commit of the package's source tree (with '+dirty' for uncommitted changes), or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def write_run_config(log_dir, config, previous=None, invocation=None):
    """Write run_config.json (rank 0): the configuration, the format version, the git revision, the first
    command line, and every invocation of the run so far (`previous`'s, then this one: its command, the step
    it started from, and `invocation`'s fields, e.g. the speed settings it ran with)."""
    previous = previous or {}
    command = " ".join(sys.argv)
    earlier = previous.get("invocations") or ([{"command": previous["command"]}] if "command" in previous else [])
    started = {"command": command, "git_revision": git_revision(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
               **(invocation or {})}
    # keys this version does not write (a user's notes, a newer field) are kept
    record = {**previous, **config, "format_version": RUN_CONFIG_VERSION, "git_revision": started["git_revision"],
              "command": previous.get("command", command), "invocations": [*earlier, started]}
    write_json_atomic(os.path.join(log_dir, RUN_CONFIG_FILE), record)


def read_run_config(log_dir):
    """The folder's run_config.json, or None when there is none."""
    path = os.path.join(log_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({e}); restore it, or start the run in a new folder") from None
    version = config.get("format_version", 1) if isinstance(config, dict) else None
    if version is not None and version > RUN_CONFIG_VERSION:
        raise ValueError(f"{path} has format version {version}, newer than this pid_diffusion reads "
                         f"({RUN_CONFIG_VERSION}); update pid_diffusion")
    return config


def check_run_kind(log_dir, recorded, kind):
    """Refuse a folder whose run_config.json records a run of another kind, whatever
    --allow_changed_settings says: a teacher's weights and optimizer are no start for a PID student."""
    found = recorded.get("run_kind", PID_RUN) if recorded else kind
    if found != kind:
        described = RUN_KINDS.get(found, f"{found!r}")
        raise OtherRunKindError(f"{log_dir} holds a {described} run (run_kind {found!r} in {RUN_CONFIG_FILE}), not a "
                                f"{RUN_KINDS[kind]} run: a run folder holds one kind of run, whatever "
                                "--allow_changed_settings says. Give this run another folder (OPENAI_LOGDIR)")


def changed_settings(recorded, current, defining):
    """[(name, recorded value, new value)] of the settings named in `defining` (those that define what a
    run learns) that differ."""
    return [(name, recorded[name], current[name]) for name in defining
            if name in recorded and name in current and _comparable(recorded[name], name) != _comparable(current[name], name)]


def _comparable(value, name=None):
    if name == "ema_rate":  # "0.990,0.999" and "0.99,0.999" are the same rates
        return [float(v) for v in str(value).split(",") if v.strip()]
    return json.loads(json.dumps(value, default=str))  # what run_config.json holds


def check_resumed_settings(log_dir, recorded, current, defining, allow_changes, step):
    """Refuse a resumed run whose run-defining settings (`defining`) differ from the folder's, or, when
    changes are allowed, return the changes to record: [{step, setting, from, to}]."""
    changes = changed_settings(recorded, current, defining)
    if not changes:
        return []
    listed = "; ".join(f"{name}: {old!r} → {new!r}" for name, old, new in changes)
    if not allow_changes:
        raise ChangedSettingsError(
            f"{log_dir} holds a run with other settings ({listed}). Start a new run in another folder "
            "(OPENAI_LOGDIR), or continue this one with the new settings by adding --allow_changed_settings True "
            "(the change is recorded in run_config.json)")
    return [{"step": step, "setting": name, "from": old, "to": new} for name, old, new in changes]
