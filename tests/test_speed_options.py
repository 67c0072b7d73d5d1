"""The speed options compute the same function as the original's structure (official-pid.md §1)."""

import argparse
import os
import shutil
import sys

import pytest
import torch

from conftest import tiny_song_config
from pid_diffusion.checkpoint import save_teacher
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.networks.layers import GroupNorm, attention, set_attention_implementation
from pid_diffusion.trainer import PIDTrainer, TrainConfig, keep_compiled_convolutions_channels_last

REFERENCE = dict(batched_student=False, attention="reference", fused_optimizer=False, channels_last=False)
FAST_FP32 = dict(batched_student=True, attention="sdpa", fused_optimizer=True, channels_last=True)


@pytest.fixture(autouse=True)
def _restore_attention():
    yield
    set_attention_implementation("sdpa")


def test_attention_implementations_agree():
    q, k, v = (torch.randn(6, 16, 64, dtype=torch.float64) for _ in range(3))
    set_attention_implementation("reference")
    reference = attention(q, k, v)
    set_attention_implementation("sdpa")
    assert torch.allclose(attention(q, k, v), reference, rtol=1e-5, atol=1e-6)  # reference: float32 softmax
    with pytest.raises(ValueError, match="valid: sdpa, reference"):
        set_attention_implementation("flash")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_group_norm_runs_in_the_autocast_precision(dtype):
    torch.manual_seed(0)
    norm = GroupNorm(64)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.normal_(0, 0.5)
    x = 3 + 2 * torch.randn(4, 64, 8, 8)
    exact = norm(x)
    with torch.autocast("cpu", dtype=dtype):
        outputs = [norm(x), norm(x.to(dtype))]
    # Only the input and the output are rounded: statistics in float32, no cancellation from the offset of 3.
    unit_roundoff = torch.finfo(dtype).eps / 2
    for out in outputs:
        assert out.dtype == dtype
        assert (out.float() - exact).abs().max() <= 8 * unit_roundoff * exact.abs().max()


def test_reference_and_fast_paths_give_the_same_step(tmp_path):
    torch.manual_seed(0)
    config = tiny_song_config(label_dim=3, model_channels=64)  # 64 channels: ADM-style heads exist too
    teacher = EDMPrecond(**config)
    for p in teacher.parameters():
        p.data.normal_(0, 0.05)
    save_teacher(teacher, tmp_path / "teacher.pt", config)
    results = []
    for name, options in (("reference", REFERENCE), ("fast", FAST_FP32)):
        trainer = PIDTrainer(TrainConfig(teacher_model_path=str(tmp_path / "teacher.pt"), log_dir=str(tmp_path / name),
                                         global_batch_size=6, loss_norm="l2", weight_schedule="uniform", lr=1e-3,
                                         **options))
        loss, applied = trainer.train_step()
        assert applied
        results.append((float(loss), {k: v.clone() for k, v in trainer.student.net.state_dict().items()}))
    (loss_ref, params_ref), (loss_fast, params_fast) = results
    assert abs(loss_fast - loss_ref) <= 1e-5 * abs(loss_ref)
    start = {k[len("model."):]: v for k, v in teacher.state_dict().items()}
    for key, value in params_ref.items():
        step_ref = value - start[key]
        # the steps agree to 1e-4 (other summation orders of the same gradient); on top, each updated weight
        # may round to either neighbouring float32 (one ulp of its value: steps of 1e-6 on weights of 0.1 do)
        rounding = torch.finfo(value.dtype).eps * value.norm()
        assert (params_fast[key] - value).norm() <= 1e-4 * step_ref.norm() + rounding, key


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler (g++)")
@pytest.mark.parametrize("compile_mode", ["default", "reduce-overhead"])
def test_compiled_step_equals_the_eager_step_with_micro_batches(tmp_path, compile_mode):
    torch.manual_seed(0)
    config = tiny_song_config()
    save_teacher(EDMPrecond(**config), tmp_path / "teacher.pt", config)
    results = []
    for compiled in (False, True):
        trainer = PIDTrainer(TrainConfig(teacher_model_path=str(tmp_path / "teacher.pt"),
                                         log_dir=str(tmp_path / f"compile-{compiled}"), global_batch_size=4,
                                         microbatch=2, loss_norm="l2", weight_schedule="uniform", compile=compiled,
                                         compile_mode=compile_mode))
        loss, applied = trainer.train_step()
        assert applied
        results.append((float(loss), torch.cat([p.flatten() for p in trainer.student.net.parameters()])))
        trainer.close()
    (loss_eager, params_eager), (loss_compiled, params_compiled) = results
    assert abs(loss_compiled - loss_eager) <= 1e-5 * abs(loss_eager)
    assert torch.allclose(params_compiled, params_eager, rtol=1e-5, atol=1e-7)


def test_channels_last_is_forced_in_compiled_graphs_and_compile_modes_are_checked(tmp_path):
    import torch._inductor.config as inductor_config

    before = inductor_config.force_layout_optimization
    try:
        keep_compiled_convolutions_channels_last(True)
        assert inductor_config.force_layout_optimization is True
        keep_compiled_convolutions_channels_last(False)
        assert inductor_config.force_layout_optimization is False
    finally:
        inductor_config.force_layout_optimization = before
    config = TrainConfig(teacher_model_path="unused", log_dir=str(tmp_path), compile=True, compile_mode="max-autotune")
    with pytest.raises(ValueError, match="--compile_mode 'max-autotune' is not supported; valid: default, reduce-overhead"):
        config.validate()


def test_benchmark_modes_and_overrides():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    try:
        from train_step import FAST, REFERENCE, mode_options
    finally:
        sys.path.pop(0)
    (label, options), = mode_options(["fast-nocompile+compile_mode=reduce-overhead+cudnn_benchmark=false"])
    assert label == "fast-nocompile+compile_mode=reduce-overhead+cudnn_benchmark=false"
    assert options == {**FAST, "compile": False, "compile_mode": "reduce-overhead", "cudnn_benchmark": False}
    assert dict(mode_options(["reference"]))["reference"] == REFERENCE
    ablation = mode_options(["ablation"])
    assert ablation[-1][1] == FAST and len(ablation) == len(FAST)  # one option more per row
    with pytest.raises(ValueError, match="unknown trainer option 'speed'"):
        mode_options(["fast+speed=2"])
    with pytest.raises(argparse.ArgumentTypeError, match="expected a boolean"):
        mode_options(["fast+compile=maybe"])
    with pytest.raises(ValueError, match="unknown mode 'slow'"):
        mode_options(["slow"])
