import os
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import fixture_path, relative_error, tiny_song_config
from tolerances import PARITY_ORDER, between_implementations, network_roundings
from pid_diffusion.families import edm
from pid_diffusion.checkpoint import TeacherLoadError, TeacherNotFoundError, load_teacher, read_teacher_file, save_teacher
from pid_diffusion.edm_pickle import UnsafePickleError, read_snapshot
from pid_diffusion.files import atomic_torch_save
from pid_diffusion.networks import EDMPrecond

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_FLAGS = dict(image_size=32, num_channels=16, num_res_blocks=1, channel_mult="1,2", attention_resolutions="2")


def test_edm_pkl_loads_without_flags_and_matches_edm():
    expected = torch.load(fixture_path("edm-tiny-ddpmpp-seed0.expected.pt"), weights_only=True)
    teacher = load_teacher(fixture_path("edm-tiny-ddpmpp-seed0.pkl"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    state = teacher.state_dict()
    assert set(state) == set(expected["state_dict"])
    assert all(torch.equal(state[k], v) for k, v in expected["state_dict"].items())
    with torch.no_grad():
        denoised = teacher(expected["x"], expected["sigma"], expected["class_labels"])
    bound = between_implementations(network_roundings(teacher, teacher.img_resolution))
    assert relative_error(denoised, expected["denoised"]) <= min(bound, PARITY_ORDER)


def test_convert_script_writes_a_weights_only_file(tmp_path):
    out = tmp_path / "teacher.pt"
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "convert_edm_pkl.py"),
                    fixture_path("edm-tiny-ddpmpp-seed0.pkl"), str(out)], check=True, capture_output=True)
    data = torch.load(out, weights_only=True)
    assert data["config"]["model_type"] == "SongUNet"
    reference = load_teacher(fixture_path("edm-tiny-ddpmpp-seed0.pkl"))
    converted = load_teacher(out, image_size=16, num_channels=16)  # matching flags are accepted
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 30.0])
    assert torch.equal(converted(x, sigma), reference(x, sigma))


class _RunsShell:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    payload = _RunsShell()
    payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": payload}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load global 'posix\.system'|'os\.system'"):
        read_snapshot(path)
    with pytest.raises(TeacherLoadError, match="refusing to load global"):
        load_teacher(path)
    assert not payload.marker.exists()


def test_embedded_module_source_is_never_executed(tmp_path, monkeypatch):
    # Persistent objects whose module_src would create a file if anyone exec'd it.
    monkeypatch.chdir(tmp_path)
    data = open(fixture_path("edm-tiny-ddpmpp-seed0.pkl"), "rb").read()
    placeholder = b"# source of training.networks omitted from this test file\n"
    assert placeholder in data
    evil_src = b"open('executed', 'w')#"
    evil_src = evil_src.ljust(len(placeholder) - 1, b" ") + b"\n"
    path = tmp_path / "src.pkl"
    path.write_bytes(data.replace(placeholder, evil_src))
    load_teacher(path)
    assert not (tmp_path / "executed").exists()


def test_extracted_state_dict_with_flags(tmp_path):
    config = edm.config_from_flags(**SMALL_FLAGS)
    net = EDMPrecond(**config)
    state = net.state_dict()
    state["model.map_augment.weight"] = torch.randn(16, 9)  # EDM's CIFAR teacher carries augmentation weights
    path = tmp_path / "edm.ckpt"
    torch.save(state, path)
    teacher = load_teacher(path, **SMALL_FLAGS)
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([1.0, 10.0])
    assert torch.equal(teacher(x, sigma), net.eval()(x, sigma))
    bare = tmp_path / "bare.ckpt"  # keys without the `model.` prefix load too
    torch.save({k[len("model."):]: v for k, v in state.items()}, bare)
    assert torch.equal(load_teacher(bare, **SMALL_FLAGS)(x, sigma), teacher(x, sigma))


def test_architecture_mismatch_names_keys_and_fitting_flags(tmp_path):
    path = tmp_path / "edm.ckpt"
    torch.save(EDMPrecond(**edm.config_from_flags(**SMALL_FLAGS)).state_dict(), path)
    with pytest.raises(TeacherLoadError) as info:
        load_teacher(path, **{**SMALL_FLAGS, "num_channels": 32})
    message = str(info.value)
    assert "shape differs: model.map_layer0.weight" in message
    assert "flags that fit this file: --image_size 32 --num_channels 16 --num_res_blocks 1" in message
    assert len(message) < 2000


def test_flags_checked_against_recorded_architecture(tmp_path):
    path = tmp_path / "ours.pt"
    config = edm.config_from_flags(**SMALL_FLAGS)
    save_teacher(EDMPrecond(**config), path, config)
    assert isinstance(load_teacher(path), EDMPrecond)
    with pytest.raises(TeacherLoadError, match=r"--num_res_blocks 3 \(file: 1\)"):
        load_teacher(path, num_res_blocks=3)
    with pytest.raises(TypeError, match="unknown network flag"):
        load_teacher(path, num_chanels=16)


def test_missing_teacher_says_where_teachers_come_from(tmp_path):
    with pytest.raises(TeacherNotFoundError) as info:
        load_teacher(tmp_path / "edm-cifar10-32x32-uncond-vp.pkl")
    assert "edm-cifar10-32x32-uncond-vp.pkl" in str(info.value)
    assert "model_zoo" in str(info.value) and "nvlabs" in str(info.value).lower()


def test_a_truncated_edm_pickle_gives_a_clear_error(tmp_path):
    data = open(fixture_path("edm-tiny-ddpmpp-seed0.pkl"), "rb").read()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherLoadError, match="truncated or corrupt"):
        load_teacher(truncated)


def test_foreign_and_damaged_files_give_clear_errors(tmp_path):
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(TeacherLoadError, match="not an EDM network snapshot"):
        load_teacher(foreign)

    ours = tmp_path / "ours.pt"
    save_teacher(EDMPrecond(**tiny_song_config()), ours, tiny_song_config())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ours.read_bytes()[:5000])
    with pytest.raises(TeacherLoadError, match="cannot read"):
        load_teacher(cut)

    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(TeacherLoadError, match="neither a state dict"):
        load_teacher(listing)

    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle at all")
    with pytest.raises(TeacherLoadError):
        load_teacher(garbage)


def test_bare_state_dict_with_unofficial_size_explains_flags(tmp_path):
    path = tmp_path / "edm.ckpt"
    torch.save(EDMPrecond(**tiny_song_config()).state_dict(), path)
    with pytest.raises(TeacherLoadError, match="32 builds DDPM\\+\\+"):
        load_teacher(path, image_size=8)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"v": torch.ones(2)}, path)

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        atomic_torch_save({"v": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize("flags", [
    dict(image_size=32, num_channels=128, num_res_blocks=4, attention_resolutions="2"),
    dict(image_size=64, num_channels=192, num_res_blocks=3, attention_resolutions="2,4,8", class_cond=True),
    dict(image_size=32, num_channels=16, num_res_blocks=2, attention_resolutions="2,4", channel_mult="1,2,2"),
])
def test_flags_are_inferred_back_from_weights(flags):
    config = edm.config_from_flags(**flags)
    with torch.device("meta"):
        state = EDMPrecond(**config).model.state_dict()
    inferred = edm.infer_flags(state)
    assert edm.mismatched_flags(flags, inferred) == []
    assert edm.infer_flags({"weight": torch.zeros(1)}) is None


def test_read_teacher_file_returns_config_and_weights():
    config, state = read_teacher_file(fixture_path("edm-tiny-ddpmpp-seed0.pkl"))
    assert config["model_type"] == "SongUNet" and "model.map_layer0.weight" in state


class Payload:
    """An object a weights-only load refuses: a file holding it could run code when unpickled."""


def test_a_file_with_python_objects_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    from pid_diffusion.checkpoint import load_student
    from pid_diffusion.files import UnreadableFileError, read_torch_file

    torch.save({"weight": torch.zeros(2), "extra": Payload()}, tmp_path / "model000001.pt")
    with pytest.raises(UnreadableFileError, match="holds Python objects other than tensors.*never loads such files") as e:
        read_torch_file(tmp_path / "model000001.pt")
    assert "weights_only=False" not in str(e.value)
    with pytest.raises(Exception, match="never loads such files"):
        load_student(tmp_path / "model000001.pt")  # through the student loader too
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    assert torch.equal(read_torch_file(tmp_path / "plain.pt")["weight"], torch.zeros(2))
