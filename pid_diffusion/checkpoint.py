"""Teacher files in, our files out.

`load_teacher` reads three formats and returns a frozen `EDMPrecond`:
  * an EDM network snapshot `.pkl` (read by `edm_pickle`, nothing in it runs; the architecture
    comes from the recorded constructor keywords);
  * our own `{state_dict, config}` file (what `scripts/convert_edm_pkl.py` writes);
  * a state dict extracted from EDM (the original PID README's `.ckpt`: keys `model.*`, perhaps
    `map_augment.*`), whose architecture comes from the official network flags.
Every file we write goes to a temporary name in the same folder and is renamed into place.
"""

import os

import torch

from . import arch
from .download import local_file
from .edm_pickle import EDMPickleError, is_pickle_file, load_edm_snapshot
from .files import UnreadableFileError, atomic_torch_save, is_zip_archive, read_torch_file
from .networks import EDMPrecond, network_from_config
from .run_folder import RUN_CONFIG_FILE, TEACHER_RUN, read_run_config
from .precond import PIDStudent
from .schedules import SIGMA_MAX, SIGMA_MIN
from .teachers import BUILTIN_PREFIX, builtin_teacher

EDM_TEACHER_HELP = (
    "EDM teachers are NVIDIA's released snapshots, e.g. "
    "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl and "
    "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl; "
    "put them in model_zoo/ (see model_zoo/README.md)")
MAX_LISTED = 5


class TeacherLoadError(UnreadableFileError):
    """A teacher (or student) file that cannot be turned into the network asked for."""


class TeacherNotFoundError(TeacherLoadError, FileNotFoundError):
    pass


def _read_model_file(path):
    """files.read_torch_file, its failure reported as a TeacherLoadError (a model file that cannot be read)."""
    try:
        return read_torch_file(path)
    except UnreadableFileError as e:
        raise TeacherLoadError(str(e)) from None


def network_state_dict(state_dict):
    """EDM `EDMPrecond` keys → raw network keys: strip the leading `model.`, drop `map_augment`
    (PID never conditions on augmentation). Keys already without the prefix pass unchanged."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("model."):] if key.startswith("model.") else key
        if not key.startswith("map_augment."):
            out[key] = value
    return out


def _describe_mismatch(expected, found):
    """The first missing, unexpected and wrongly shaped keys between two state dicts."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k}: file {tuple(found[k].shape)} vs network {tuple(expected[k].shape)}"
              for k in expected if k in found and found[k].shape != expected[k].shape]
    lines = []
    for title, items in (("missing from the file", missing), ("not in the network", unexpected),
                         ("shape differs", shapes)):
        if items:
            more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            lines.append(f"  {title}: {', '.join(items[:MAX_LISTED])}{more}")
    return "\n".join(lines)


def load_strictly(module, state_dict, source, what, hint=None):
    """module.load_state_dict(strict=True), or a TeacherLoadError that lists the first missing,
    unexpected and wrongly shaped keys (instead of torch's full dump), followed by hint() if given."""
    problems = _describe_mismatch(module.state_dict(), state_dict)
    if problems:
        raise TeacherLoadError(f"{source}: the weights do not fit {what}:\n{problems}{hint() if hint else ''}")
    module.load_state_dict(state_dict, strict=True)


def build_teacher(config, state_dict, source, attention_implementation="sdpa"):
    """An EDMPrecond from a config and an EDMPrecond state dict (`model.*` keys; `map_augment`
    weights dropped when the config has no augmentation input), frozen in eval mode."""
    try:
        teacher = EDMPrecond(**config, attention_implementation=attention_implementation)
    except (TypeError, ValueError) as e:
        raise TeacherLoadError(f"{source}: cannot build the recorded network ({e})") from e
    found = {("model." + k if not k.startswith("model.") else k): v for k, v in state_dict.items()}
    if not config.get("augment_dim"):
        found = {k: v for k, v in found.items() if not k.startswith("model.map_augment.")}

    def fitting_flags():
        fitting = arch.infer_flags(network_state_dict(found))
        if not fitting:
            return "\nthe file's keys are not those of an EDM SongUNet/DhariwalUNet"
        if not arch.flags_can_describe(fitting, network_state_dict(found)):
            return (f"\nits weights are of a {fitting['image_size']}×{fitting['image_size']} network that the official "
                    "flags cannot describe (they build 3-channel 32×32 DDPM++ and 64×64 ADM networks): use a file that "
                    f"records its architecture, a {{state_dict, config}} teacher file or a checkpoint with the "
                    f"{RUN_CONFIG_FILE} of its run folder beside it")
        return f"\nflags that fit this file: {arch.format_flags(fitting)}"

    load_strictly(teacher, found, source,
                  f"the network asked for ({arch.format_flags(arch.flags_from_config(config))})", fitting_flags)
    return teacher.eval().requires_grad_(False)


def _check_given_flags(path, config, network_flags):
    recorded = arch.flags_from_config(config)
    wrong = arch.mismatched_flags(network_flags, recorded)
    if wrong:
        listed = ", ".join(f"--{n} {g!r} (file: {r!r})" for n, g, r in wrong)
        raise TeacherLoadError(f"{path} records its architecture and it differs from the flags given: {listed}. "
                               f"Drop these flags or use: {arch.format_flags(recorded)}")


def _config_from_flags(network_flags, why):
    """The network the official flags describe, for a file that does not record its own (`why` says so)."""
    try:
        return arch.config_from_flags(**network_flags)
    except arch.ArchitectureError as e:
        raise TeacherLoadError(f"{why}, so the network flags describe it: {e}") from e


def read_teacher_file(path, **network_flags):
    """(config, EDMPrecond state dict) from any teacher file format (a path or an http(s) URL, fetched
    once into torch hub's cache); see the module docstring."""
    path = local_file(os.fspath(path), "the teacher")
    unknown = sorted(set(network_flags) - set(arch.NETWORK_FLAG_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown network flag(s) {unknown}; valid: {sorted(arch.NETWORK_FLAG_DEFAULTS)}")
    if os.path.isdir(path):
        raise TeacherNotFoundError(f"the teacher {path} is a folder; give the teacher file in it (an EDM .pkl, our "
                                   ".pt, or an EDM state dict)")
    if not os.path.isfile(path):
        raise TeacherNotFoundError(f"teacher file not found: {path}. {EDM_TEACHER_HELP}")
    if is_zip_archive(path):
        data = _read_model_file(path)
        if isinstance(data, dict) and {"state_dict", "config"} <= set(data):
            config, state_dict = dict(data["config"]), data["state_dict"]
            _check_given_flags(path, config, network_flags)
        elif isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
            run_config = run_config_beside(path)
            if run_config is not None and run_config.get("run_kind") == TEACHER_RUN:
                config = {**run_config["network_config"], "sigma_data": run_config["sigma_data"]}
                _check_given_flags(path, config, network_flags)
            else:
                config = _config_from_flags(network_flags, f"{path} is a bare state dict")
            state_dict = data
        else:
            raise TeacherLoadError(f"{path}: a torch file, but neither a state dict nor a "
                                   "{state_dict, config} checkpoint")
        return config, state_dict
    try:
        class_name, config, state_dict = load_edm_snapshot(path)
    except EDMPickleError as e:
        raise TeacherLoadError(str(e)) from e
    if class_name != "EDMPrecond":
        raise TeacherLoadError(f"{path}: the snapshot holds a {class_name}; PID distils EDM-preconditioned "
                               "teachers (EDMPrecond), e.g. EDM's edm-*.pkl releases")
    _check_given_flags(path, config, network_flags)
    return config, state_dict


def load_teacher(path, **network_flags):
    """A frozen EDMPrecond (eval mode, no gradients) from any teacher file format, or the analytic
    teacher named by 'builtin:<name>' (e.g. builtin:gmm, an exact Gaussian-mixture denoiser).

    Files that record their architecture need no flags; flags given for them are only checked.
    """
    if str(path).startswith(BUILTIN_PREFIX):
        return builtin_teacher(str(path))[0]
    config, state_dict = read_teacher_file(path, **network_flags)
    return build_teacher(config, state_dict, path)


def save_teacher(teacher, path, config):
    """Write an EDMPrecond as our `{state_dict, config}` file, readable with `weights_only=True`."""
    atomic_torch_save({"state_dict": teacher.state_dict(), "config": dict(config)}, path)


def student_from_teacher(network_config, teacher_state=None, sigma_max=SIGMA_MAX, attention_implementation="sdpa",
                         sigma_min=SIGMA_MIN):
    """The PID student before training: the teacher's network weights (an EDMPrecond state dict) in
    the student parametrisation, as the method prescribes; random weights when there are none (an
    analytic teacher)."""
    net = network_from_config(network_config, attention_implementation)
    if teacher_state is not None:
        net.load_state_dict(network_state_dict(teacher_state), strict=True)
    return PIDStudent(net, sigma_max=sigma_max, sigma_min=sigma_min)




def run_config_beside(path):
    """The run_config.json in a checkpoint's folder (a dict with network_config), or None if there is none."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        config = read_run_config(folder)
    except ValueError as e:
        raise TeacherLoadError(f"{e}; it describes the network of {path}") from None
    if config is not None and not (isinstance(config, dict) and "network_config" in config):
        raise TeacherLoadError(f"{os.path.join(folder, RUN_CONFIG_FILE)} has no network_config: it cannot describe "
                               f"the network of {path}")
    return config


def load_student(path, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **network_flags):
    """A PIDStudent (eval mode) from a training checkpoint (`model*.pt`, `ema_*.pt`: bare network
    state dicts). The architecture, σ_min and σ_max come from the run folder's run_config.json (flags
    given are checked against it; `levels_recorded` is then True); for a file without one (e.g. the
    released pid_cifar.pt) the official network flags and `sigma_min`/`sigma_max` describe it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"--model_path {path} is a folder; give a checkpoint file in it (model*.pt, ema_*.pt)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"student checkpoint not found: {path}")
    if not is_zip_archive(path):
        raise TeacherLoadError(f"{path} is not a student checkpoint (model*.pt / ema_*.pt, a torch file){_teacher_hint(path)}")
    run_config = run_config_beside(path)
    if run_config is not None:
        if run_config.get("run_kind") == TEACHER_RUN:
            raise TeacherLoadError(f"{path} is a checkpoint of a teacher training, not a PID student: sample it "
                                   "with --training_mode one_shot_pinn_edm_edm_teacher")
        config = run_config["network_config"]
        sigma_min, sigma_max = run_config.get("sigma_min", SIGMA_MIN), run_config.get("sigma_max", SIGMA_MAX)
        _check_given_flags(path, config, network_flags)
    state = _read_model_file(path)
    if isinstance(state, dict) and {"state_dict", "config"} <= set(state):
        raise TeacherLoadError(f"{path} is a teacher file ({{state_dict, config}}), not a student checkpoint: sample it "
                               "with --training_mode one_shot_pinn_edm_edm_teacher")
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise TeacherLoadError(f"{path}: not a network state dict (optimizer and trainer-state files are not models)")
    if run_config is None:
        config = _config_from_flags(network_flags, f"{path} has no {RUN_CONFIG_FILE} beside it")
    net = network_from_config(config)
    load_strictly(net, network_state_dict(state), path, "the network described",
                  None if run_config is not None else _copy_run_config_hint)
    student = PIDStudent(net, sigma_max=sigma_max, sigma_min=sigma_min)
    student.levels_recorded = run_config is not None
    return student.eval().requires_grad_(False)


def _copy_run_config_hint():
    return (f"\na checkpoint keeps its architecture in the {RUN_CONFIG_FILE} of its run folder: copy that file "
            "beside it (or sample it where it was trained)")


def _teacher_hint(path):
    """What to do with a file that is no torch archive: an EDM snapshot is a teacher."""
    return (": it is a pickle, as EDM's teacher snapshots are; sample a teacher with --training_mode "
            "one_shot_pinn_edm_edm_teacher" if is_pickle_file(path) else "")
