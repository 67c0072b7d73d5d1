"""The speed options compute the same function as the original's structure (`--speed reference`)."""

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess

import pytest
import torch

from conftest import relative_error, save_random_teacher, tiny_song_config
from tolerances import between_implementations, pid_step_bounds
from pid_diffusion import cli
from pid_diffusion import benchmark_modes
from pid_diffusion.checkpoint import save_teacher
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.networks.layers import GroupNorm, UNetBlock, attention
from pid_diffusion.speed import SpeedSettings, keep_compiled_convolutions_channels_last
from pid_diffusion.trainer import PIDTrainer, TrainConfig, float32_call

REFERENCE = dict(batched_student=False, attention="reference", fused_optimizer=False, channels_last=False)
FAST_FP32 = dict(batched_student=True, attention="sdpa", fused_optimizer=True, channels_last=True)


def test_attention_implementations_agree_and_each_network_has_its_own():
    q, k, v = (torch.randn(6, 16, 64, dtype=torch.float64) for _ in range(3))
    reference = attention(q, k, v, "reference")
    # the reference rounds q and k to float32 for the scores (dot products over 16 channels) and the
    # softmax (64 positions); a score's rounding moves the output by its absolute size, up to max |score|
    scores = torch.einsum("ncq,nck->nqk", q, k) / 4
    amplification = 1 + float(scores.abs().max())
    assert relative_error(attention(q, k, v, "sdpa"), reference) <= between_implementations(16 + 3 * 64, torch.float32,
                                                                                           amplification)
    # a constructor argument, not a switch for the whole process: two networks side by side keep theirs
    explicit = EDMPrecond(**tiny_song_config(), attention_implementation="reference")
    default = EDMPrecond(**tiny_song_config())
    blocks = lambda net: [m for m in net.modules() if isinstance(m, UNetBlock) and m.num_heads]
    assert blocks(explicit) and all(b.attention_implementation == "reference" for b in blocks(explicit))
    assert all(b.attention_implementation == "sdpa" for b in blocks(default))
    with pytest.raises(ValueError, match="valid: sdpa, reference"):
        EDMPrecond(**tiny_song_config(), attention_implementation="flash")


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


def random_lpips_files(folder):
    """LPIPS weight files with random values: VGG16's feature convolutions and the five linear layers."""
    from pid_diffusion.lpips import LPIPS_TAPS, _vgg16_features

    torch.save(_vgg16_features().state_dict(), folder / "vgg.pth")
    features = [m.out_channels for i, m in enumerate(_vgg16_features()) if i + 1 in LPIPS_TAPS]
    torch.save([torch.rand(1, c, 1, 1) for c in features], folder / "lin.pt")
    return dict(lpips_vgg_weights=str(folder / "vgg.pth"), lpips_lin_weights=str(folder / "lin.pt"))


@pytest.mark.parametrize("loss_norm,microbatch", [("l2", -1), ("l1", -1), ("l2", 3), ("lpips", 3)])
def test_reference_and_fast_paths_give_the_same_step(tmp_path, loss_norm, microbatch):
    torch.manual_seed(0)
    config = tiny_song_config(label_dim=3, model_channels=64)  # 64 channels: ADM-style heads exist too
    teacher = save_random_teacher(tmp_path / "teacher.pt", config)
    lpips_files = random_lpips_files(tmp_path) if loss_norm == "lpips" else {}
    results = []
    for name, options in (("reference", REFERENCE), ("fast", FAST_FP32)):
        trainer = PIDTrainer(TrainConfig(teacher_model_path=str(tmp_path / "teacher.pt"), log_dir=str(tmp_path / name),
                                         global_batch_size=6, loss_norm=loss_norm, weight_schedule="uniform", lr=1e-3,
                                         microbatch=microbatch, **lpips_files, **options))
        if name == "reference":
            loss_bound, update_bound = pid_step_bounds(trainer)
        loss, applied = trainer.train_step()
        assert applied
        results.append((float(loss), {k: v.clone() for k, v in trainer.student.net.state_dict().items()}))
    (loss_ref, params_ref), (loss_fast, params_fast) = results
    assert abs(loss_fast - loss_ref) <= loss_bound * abs(loss_ref)
    start = {k[len("model."):]: v for k, v in teacher.state_dict().items()}
    for key, value in params_ref.items():
        update_ref = value - start[key]
        # on top of the updates' difference, each updated weight may round to either neighbouring float32
        # (one ulp of its value: updates of 1e-6 on weights of 0.1 do)
        rounding = torch.finfo(value.dtype).eps * value.norm()
        assert (params_fast[key] - value).norm() <= update_bound * update_ref.norm() + rounding, key


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler (g++)")
def test_compiled_step_equals_the_eager_step_with_micro_batches(tmp_path):
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    config = tiny_song_config(channel_mult=[1], attn_resolutions=[8])  # one level: minutes less of compilation
    save_teacher(EDMPrecond(**config), tmp_path / "teacher.pt", config)
    results = []
    for compiled in (False, True):
        trainer = PIDTrainer(TrainConfig(teacher_model_path=str(tmp_path / "teacher.pt"),
                                         log_dir=str(tmp_path / f"compile-{compiled}"), global_batch_size=4,
                                         microbatch=2, loss_norm="l2", weight_schedule="uniform", compile=compiled))
        if not compiled:
            loss_bound, update_bound = pid_step_bounds(trainer)
            start = torch.cat([p.detach().flatten() for p in trainer.student.net.parameters()])
        graphs_before = counters["stats"]["unique_graphs"]
        loss, applied = trainer.train_step()
        assert applied
        # the compiled step really ran compiled graphs (dynamo traced frames), the eager one none
        assert (counters["stats"]["unique_graphs"] > graphs_before) == compiled
        results.append((float(loss), torch.cat([p.flatten() for p in trainer.student.net.parameters()])))
        trainer.close()
    (loss_eager, params_eager), (loss_compiled, params_compiled) = results
    assert abs(loss_compiled - loss_eager) <= loss_bound * abs(loss_eager)
    rounding = torch.finfo(torch.float32).eps * params_eager.norm()  # each weight may round either way
    assert (params_compiled - params_eager).norm() <= update_bound * (params_eager - start).norm() + rounding


def test_reduce_overhead_compiles_in_that_mode_and_marks_each_micro_batch(tmp_path, monkeypatch):
    """CUDA graphs exist only on GPUs: here the mode reaching torch.compile and the step marks between
    micro-batches (without which a graph's outputs would be overwritten by the next replay) are checked."""
    modes, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: modes.append(mode) or module)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    config = tiny_song_config()
    save_teacher(EDMPrecond(**config), tmp_path / "teacher.pt", config)
    trainer = PIDTrainer(TrainConfig(teacher_model_path=str(tmp_path / "teacher.pt"), log_dir=str(tmp_path / "run"),
                                     global_batch_size=4, microbatch=2, loss_norm="l2", compile=True,
                                     compile_mode="reduce-overhead"))
    trainer.train_step()
    trainer.close()
    assert len(modes) >= 2 and set(modes) == {"reduce-overhead"}  # the student and the teacher
    assert len(marks) == 2


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


def test_student_precision_keeps_the_student_in_float32_under_autocast(tmp_path):
    torch.manual_seed(0)
    save_random_teacher(tmp_path / "teacher.pt", tiny_song_config(label_dim=3))
    z, t = 80 * torch.randn(4, 3, 8, 8), torch.tensor([80.0, 2.5, 0.1, 0.002])
    labels = torch.nn.functional.one_hot(torch.arange(4) % 3, 3).float()
    outputs = {}
    for precision in ("autocast", "fp32_output", "fp32"):
        trainer = PIDTrainer(TrainConfig(teacher_model_path=str(tmp_path / "teacher.pt"), log_dir=str(tmp_path / precision),
                                         global_batch_size=4, loss_norm="l2", mixed_precision="bf16",
                                         student_precision=precision))
        student = trainer.model if precision != "fp32" else float32_call(trainer.model)
        with torch.no_grad(), trainer.config.autocast("cpu"):
            outputs[precision] = student(z, t, labels).float()
        exact = trainer.student(z, t, labels).detach()  # no autocast: float32 throughout
        trainer.close()
    assert torch.equal(outputs["fp32"], exact)  # autocast switched off for the whole student
    error = {k: ((v - exact).norm() / (exact - z * (t / 80).reshape(-1, 1, 1, 1)).norm()).item() for k, v in outputs.items()}
    bf16_unit = torch.finfo(torch.bfloat16).eps / 2
    assert error["autocast"] > bf16_unit / 4  # bf16 rounding reaches the output ...
    assert error["fp32_output"] < error["autocast"]  # ... less of it with the output layers in float32
    with pytest.raises(ValueError, match="valid: autocast, fp32_output, fp32"):
        TrainConfig(teacher_model_path="x", log_dir=str(tmp_path), student_precision="half").validate()


PRESETS = {  # what the README and docs/benchmarks.md say each preset runs
    "reference": dict(mixed_precision="fp32", student_precision="autocast", batched_student=False,
                      attention="reference", fused_optimizer=False, channels_last=False, compile=False,
                      cudnn_benchmark=False, ddp_bucket_cap_mb=128, speculative_step=False),
    "eager": dict(mixed_precision="fp32", student_precision="autocast", batched_student=True, attention="sdpa",
                  fused_optimizer=True, channels_last=False, compile=False, cudnn_benchmark=True, ddp_bucket_cap_mb=128,
                  speculative_step=False),
    "fast": dict(mixed_precision="bf16", student_precision="fp32", batched_student=True, attention="sdpa",
                 fused_optimizer=True, channels_last=True, compile=True, cudnn_benchmark=True, ddp_bucket_cap_mb=0,
                 speculative_step=False),
}


def test_speed_presets_resolve_by_device_and_yield_to_given_flags():
    def resolved(flags, device_type):
        args, given = cli.parse_distillation(["--teacher_model_path", "t.pt", *flags])
        return cli.distillation_config(args, given, "unused", device_type)

    assert {k: getattr(resolved([], "cpu"), k) for k in PRESETS["eager"]} == PRESETS["eager"]
    assert {k: getattr(resolved([], "cuda"), k) for k in PRESETS["fast"]} == PRESETS["fast"]
    reference = resolved(["--speed", "reference"], "cuda")
    assert {k: getattr(reference, k) for k in PRESETS["reference"]} == PRESETS["reference"]
    fp16 = resolved(["--use_fp16", "True"], "cuda")  # the original's fp16 path: the student in fp16 too
    assert (fp16.mixed_precision, fp16.student_precision, fp16.compile) == ("fp16", "autocast", True)
    given = resolved(["--compile", "False", "--mixed_precision", "fp32"], "cuda")
    assert (given.compile, given.mixed_precision, given.channels_last) == (False, "fp32", True)
    with pytest.raises(ValueError, match="valid: auto, reference, eager, fast"):
        resolved(["--speed", "fastest"], "cuda")
    assert resolved(["--ddp_bucket_cap_mb", "25"], "cuda").ddp_bucket_cap_mb == 25
    with pytest.raises(ValueError, match="--ddp_bucket_cap_mb -1 is not supported: give a bucket size in MiB "
                                         r"\(the original's 128\), or 0 for one bucket"):
        resolved(["--ddp_bucket_cap_mb", "-1"], "cuda").validate()


def test_one_ddp_bucket_holds_every_gradient():
    network = torch.nn.Sequential(torch.nn.Linear(1024, 512), torch.nn.Linear(512, 4))
    network[1].requires_grad_(False)  # frozen parameters get no bucket
    gradient_mib = (1024 * 512 + 512) * 4 / 2 ** 20  # float32 weights and bias of the first layer: 2.0 MiB
    assert SpeedSettings(ddp_bucket_cap_mb=0).ddp_bucket_mib(network) == math.ceil(gradient_mib) + 1 == 4
    assert SpeedSettings(ddp_bucket_cap_mb=25).ddp_bucket_mib(network) == 25
    assert SpeedSettings().ddp_bucket_cap_mb == 128  # the original's size


def test_benchmark_modes_and_overrides():
    mode_options, fast = benchmark_modes.mode_options, benchmark_modes.FAST
    (label, options), = mode_options(["fast-nocompile+compile_mode=reduce-overhead+cudnn_benchmark=false"])
    assert label == "fast-nocompile+compile_mode=reduce-overhead+cudnn_benchmark=false"
    assert fast == PRESETS["fast"] and benchmark_modes.REFERENCE == PRESETS["reference"]
    assert options == {**fast, "compile": False, "compile_mode": "reduce-overhead", "cudnn_benchmark": False}
    assert dict(mode_options(["reference"]))["reference"] == PRESETS["reference"]
    ablation = mode_options(["ablation"])
    differing = [name for name in fast if fast[name] != benchmark_modes.REFERENCE[name]]
    assert ablation[-1][1] == fast and len(ablation) == len(differing)  # one option of fast's more per row
    with pytest.raises(ValueError, match="unknown trainer option 'speed'"):
        mode_options(["fast+speed=2"])
    with pytest.raises(argparse.ArgumentTypeError, match="expected a boolean"):
        mode_options(["fast+compile=maybe"])
    with pytest.raises(ValueError, match="unknown mode 'slow'"):
        mode_options(["slow"])
    # `default` is what cm_train.py runs on the device without a speed flag; use_fp16 adds --use_fp16 True
    for device_type in ("cuda", "cpu"):
        script, fp16 = (cli.distillation_config(*cli.parse_distillation(["--teacher_model_path", "t.pt", *flags]), "run",
                                                device_type=device_type) for flags in ([], ["--use_fp16", "True"]))
        modes = dict(mode_options(["default", "use_fp16", "eager"], device_type))
        for name, value in modes["default"].items():
            assert getattr(script, name) == value, (device_type, name)
        for name, value in modes["use_fp16"].items():
            assert getattr(fp16, name) == value, (device_type, name)
    assert dict(mode_options(["default"], "cuda"))["default"] == fast
    assert dict(mode_options(["default"], "cpu"))["default"] == dict(mode_options(["eager"], "cuda"))["eager"] != fast
    assert dict(mode_options(["use_fp16"], "cuda"))["use_fp16"]["mixed_precision"] == "fp16"


STUDY_MODES = ("reference,reference+seed=1,eager,eager+mixed_precision=fp16,eager+mixed_precision=bf16,"
               "eager+mixed_precision=bf16+student_precision=fp32_output,"
               "eager+mixed_precision=bf16+student_precision=fp32")
"""The configurations of the precision study in docs/precision.md."""


def test_precision_study_configurations_build_and_step(tmp_path):
    teacher = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_zoo", "digits-ddpmpp.pt")
    for number, (label, options) in enumerate(benchmark_modes.mode_options(STUDY_MODES.split(","))):
        config = benchmark_modes.study_config(teacher, str(tmp_path / str(number)), 1, 1, options)
        assert (config.loss_norm, config.start_scales, config.global_batch_size) == ("l2", 250, 64)
        trainer = PIDTrainer(config)
        for name, value in options.items():
            assert getattr(trainer.config, name) == value, (label, name)
        loss, applied = trainer.train_step()
        # fp16 starts at the original's loss scale 2^20, whose first steps overflow and are skipped
        assert torch.isfinite(loss) and (applied or config.mixed_precision == "fp16"), label
        trainer.close()


def load_precision_study():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "precision_study.py")
    spec = importlib.util.spec_from_file_location("precision_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("score_teacher", [True, False])
def test_precision_study_scores_the_teacher_only_when_asked_and_each_seed_trains_its_own_run(tmp_path, score_teacher):
    study = load_precision_study()
    path = tmp_path / "study.json"
    study.main(["--modes", "eager,eager+seed=1", "--steps", "2", "--eval_every", "2", "--num_samples", "32",
                "--score_teacher", str(score_teacher), "--json", str(path)])
    with open(path) as f:
        written = json.load(f)
    generators = [row["generator"] for row in written["meta"]["teacher_quality"]]
    assert generators == (["teacher heun_deter 18 steps", "teacher euler 5 steps", "teacher euler 10 steps"]
                          if score_teacher else [])
    first, second = written["results"]
    assert [r["mode"] for r in written["results"]] == ["eager", "eager+seed=1"]
    assert {c["step"] for c in first["checkpoints"]} == {c["step"] for c in second["checkpoints"]} == {2}
    assert first["losses"] != second["losses"]  # the seed is honoured: another seed, another run
    assert all(math.isfinite(c["fid"]) for c in first["checkpoints"] + second["checkpoints"])


TESTBED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "testbed.sh")


def run_testbed_study(tmp_path, **settings):
    """`testbed.sh study` with an empty teacher file (the checks come before the teacher is read)."""
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    environment = {**os.environ, "TEACHER": str(teacher), "RESULTS": str(tmp_path / "results"), **settings}
    return subprocess.run(["bash", TESTBED, "study"], env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("setting, message", [({"SEEDS": "0 x"}, "SEEDS holds whole numbers"),
                                              ({"COMPILE": "2"}, "COMPILE is 0 (eager) or 1")])
def test_testbed_study_refuses_bad_settings_before_it_creates_its_results_folder(tmp_path, setting, message):
    done = run_testbed_study(tmp_path, **setting)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_testbed_study_starts_with_good_settings(tmp_path):
    """The other side of the refusals: good settings pass the checks and the study starts (its runs fail on
    the empty teacher)."""
    done = run_testbed_study(tmp_path, SEEDS="0", COMPILE="0")
    results = tmp_path / "results"
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(results)) == ["default-seed0.log", "meta.txt", "table.md", "use_fp16-fp32_output-seed0.log",
                                           "use_fp16-seed0.log"]
    assert "no run wrote its results" in (results / "table.md").read_text()
