"""Teacher files in, our files out; what a file's network is, its family says (pid_diffusion/families).

`load_teacher` reads three formats and returns the frozen teacher of the file's family (EDM's
`EDMPrecond` for every file so far):
  * an EDM network snapshot `.pkl` (read by `edm_pickle`, nothing in it runs; the architecture
    comes from the recorded constructor keywords);
  * our own `{state_dict, config}` file (what `scripts/convert_edm_pkl.py` writes);
  * a state dict extracted from EDM (the original PID README's `.ckpt`: keys `model.*`, perhaps
    `map_augment.*`), whose architecture comes from the official network flags.
Every file we write goes to a temporary name in the same folder and is renamed into place.
"""

import os

import torch

from .download import is_url, local_file
from .edm_pickle import EDMPickleError, is_pickle_file, read_snapshot
from .families import DEFAULT_FAMILY, FAMILY_KEY, family_named, family_of, family_of_snapshot, load_strictly
from .files import (StudentLoadError, TeacherLoadError, UnreadableFileError, atomic_torch_save,
                    is_zip_archive, read_torch_file)
from .guidance import GuidedDenoiser
from .precond import PIDStudent
from .run_folder import RUN_CONFIG_FILE, TEACHER_RUN, checkpoint_step, read_run_config, settings_at_step
from .schedules import SIGMA_MAX, SIGMA_MIN
from .teachers import BUILTIN_PREFIX, builtin_teacher

EDM_TEACHER_HELP = (
    "EDM teachers are NVIDIA's released snapshots, e.g. "
    "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl and "
    "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl; "
    "put them in model_zoo/ (see model_zoo/README.md)")
FLAG_FAMILY = family_named(DEFAULT_FAMILY)
"""The family the official network flags describe (files that do not record their architecture)."""


class TeacherNotFoundError(TeacherLoadError, FileNotFoundError):
    pass


def _read_model_file(path, error):
    """files.read_torch_file, its failure reported as `error` (a model file that cannot be read)."""
    try:
        return read_torch_file(path)
    except UnreadableFileError as e:
        raise error(str(e)) from None


def _config_from_flags(network_flags, why, error):
    """The network the official flags describe, for a file that does not record its own (`why` says so)."""
    try:
        return FLAG_FAMILY.config_from_flags(network_flags)
    except ValueError as e:
        raise error(f"{why}, so the network flags describe it: {e}") from e


def read_teacher_file(path, **network_flags):
    """(config, EDMPrecond state dict) from any teacher file format (a path or an http(s) URL, fetched
    once into torch hub's cache); see the module docstring."""
    path = local_file(os.fspath(path), "the teacher")
    FLAG_FAMILY.check_flag_names(network_flags)
    if os.path.isdir(path):
        raise TeacherNotFoundError(f"the teacher {path} is a folder; give the teacher file in it (an EDM .pkl, our "
                                   ".pt, or an EDM state dict)")
    if not os.path.isfile(path):
        raise TeacherNotFoundError(f"teacher file not found: {path}. {EDM_TEACHER_HELP}")
    if is_zip_archive(path):
        data = _read_model_file(path, TeacherLoadError)
        if isinstance(data, dict) and {"state_dict", "config"} <= set(data):
            config, state_dict = dict(data["config"]), data["state_dict"]
            family_of(config).check_flags(path, config, network_flags)
        elif isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
            run_config = run_config_beside(path, TeacherLoadError)
            if run_config is not None and run_config.get("run_kind") == TEACHER_RUN:
                config = {**run_config["network_config"], "sigma_data": run_config["sigma_data"]}
                family_of(config).check_flags(path, config, network_flags)
            else:
                config = _config_from_flags(network_flags, f"{path} is a bare state dict", TeacherLoadError)
            state_dict = data
        else:
            raise TeacherLoadError(f"{path}: a torch file, but neither a state dict nor a "
                                   "{state_dict, config} checkpoint")
        return config, state_dict
    try:
        snapshot = read_snapshot(path)
        family = family_of_snapshot(snapshot["ema"].class_name, path)
        config, state_dict = family.from_snapshot(snapshot, path)
    except EDMPickleError as e:
        raise TeacherLoadError(str(e)) from e
    if family.name != DEFAULT_FAMILY:
        config[FAMILY_KEY] = family.name
    family.check_flags(path, config, network_flags)
    return config, state_dict


def read_teacher(path, attention_implementation="sdpa", **network_flags):
    """(frozen teacher, its config, its state dict) of any teacher file format, or of the analytic teacher
    named by 'builtin:<name>' (e.g. builtin:gmm, an exact Gaussian-mixture denoiser; its config is that of
    the student that distils it, its state None: a student without weights to copy)."""
    if str(path).startswith(BUILTIN_PREFIX):
        teacher, config = builtin_teacher(str(path))
        return teacher, config, None
    config, state_dict = read_teacher_file(path, **network_flags)
    return family_of(config).build_teacher(config, state_dict, path, attention_implementation), config, state_dict


def read_denoiser(path, guidance=None, attention_implementation="sdpa", **network_flags):
    """(denoiser, config, state dict) of a teacher as PID and the samplers use it: its precision follows
    autocast (--mixed_precision / --use_fp16), not the use_fp16 its file records (EDM's ImageNet-64 .pkl
    says True), as the original follows its flag; autoguided when `guidance` (guidance.GuidanceOptions)
    names a guide."""
    teacher, config, state_dict = read_teacher(path, attention_implementation, **network_flags)
    teacher.use_fp16 = False
    if guidance is not None and guidance.guide_model_path:
        path = guidance.guide_model_path
        if not str(path).startswith(BUILTIN_PREFIX) and not is_url(str(path)) and not os.path.isfile(path):
            problem = "is a folder; give the guide's file in it" if os.path.isdir(path) else "not found"
            raise TeacherNotFoundError(f"--guide_model_path {path}: {problem} (the guide is a teacher file too: an EDM "
                                       ".pkl, an EDM2 .pkl or our .pt; see model_zoo/README.md)")
        guide = read_teacher(path, attention_implementation)[0]
        guide.use_fp16 = False
        teacher = GuidedDenoiser(teacher, guide, guidance.guidance)
    return teacher, config, state_dict


def load_teacher(path, **network_flags):
    """The frozen teacher (eval mode, no gradients) of any teacher file format or 'builtin:<name>'
    (read_teacher). Files that record their architecture need no flags; flags given for them are only
    checked."""
    return read_teacher(path, **network_flags)[0]


def save_teacher(teacher, path, config):
    """Write an EDMPrecond as our `{state_dict, config}` file, readable with `weights_only=True`."""
    atomic_torch_save({"state_dict": teacher.state_dict(), "config": dict(config)}, path)


def student_from_teacher(network_config, teacher_state=None, sigma_max=SIGMA_MAX, attention_implementation="sdpa",
                         sigma_min=SIGMA_MIN):
    """The PID student before training, of a student config (its family's `student_config`): the teacher's
    network weights in the student parametrisation, as the method prescribes; random weights when there
    are none (an analytic teacher)."""
    family = family_of(network_config)
    net = family.build_network(network_config, attention_implementation)
    if teacher_state is not None:
        net.load_state_dict(family.network_state_dict(teacher_state), strict=True)
    return PIDStudent(net, sigma_max=sigma_max, sigma_min=sigma_min)


def run_config_beside(path, error):
    """The run_config.json in a checkpoint's folder (a dict with network_config), or None if there is none;
    `error` when it cannot describe the file's network."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        config = read_run_config(folder)
    except ValueError as e:
        raise error(f"{e}; it describes the network of {path}") from None
    if config is not None and not (isinstance(config, dict) and "network_config" in config):
        raise error(f"{os.path.join(folder, RUN_CONFIG_FILE)} has no network_config: it cannot describe "
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
        raise StudentLoadError(f"{path} is not a student checkpoint (model*.pt / ema_*.pt, a torch file){_teacher_hint(path)}")
    run_config = run_config_beside(path, StudentLoadError)
    if run_config is not None:
        if run_config.get("run_kind") == TEACHER_RUN:
            raise StudentLoadError(f"{path} is a checkpoint of a teacher training, not a PID student: sample it "
                                   "with --training_mode one_shot_pinn_edm_edm_teacher")
        run_config = settings_at_step(run_config, checkpoint_step(path))  # a later change of σ is not this file's
        config = run_config["network_config"]
        sigma_min, sigma_max = run_config.get("sigma_min", SIGMA_MIN), run_config.get("sigma_max", SIGMA_MAX)
        family_of(config).check_flags(path, config, network_flags)
    state = _read_model_file(path, StudentLoadError)
    if isinstance(state, dict) and {"state_dict", "config"} <= set(state):
        raise StudentLoadError(f"{path} is a teacher file ({{state_dict, config}}), not a student checkpoint: sample it "
                               "with --training_mode one_shot_pinn_edm_edm_teacher")
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise StudentLoadError(f"{path}: not a network state dict (optimizer and trainer-state files are not models)")
    if run_config is None:
        config = _config_from_flags(network_flags, f"{path} has no {RUN_CONFIG_FILE} beside it", StudentLoadError)
    family = family_of(config)
    net = family.build_network(config)
    load_strictly(net, family.network_state_dict(state), path, "the network described",
                  None if run_config is not None else _copy_run_config_hint, error=StudentLoadError)
    student = PIDStudent(net, sigma_max=sigma_max, sigma_min=sigma_min)
    student.levels_recorded = run_config is not None
    student.network_config = config
    return student.eval().requires_grad_(False)


def _copy_run_config_hint():
    return (f"\na checkpoint keeps its architecture in the {RUN_CONFIG_FILE} of its run folder: copy that file "
            "beside it (or sample it where it was trained)")


def _teacher_hint(path):
    """What to do with a file that is no torch archive: an EDM snapshot is a teacher."""
    return (": it is a pickle, as EDM's teacher snapshots are; sample a teacher with --training_mode "
            "one_shot_pinn_edm_edm_teacher" if is_pickle_file(path) else "")
