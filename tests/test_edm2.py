"""EDM2 teachers: the magnitude-preserving network against EDM2's own outputs (the fixtures), its
release `.pkl` files read without running them, autoguidance, latent teachers decoded by a VAE, and
PID on them end to end."""

import collections
import os
import pickle
import subprocess
import sys
import types

import pytest
import torch

from conftest import load_fixture, relative_error
from tolerances import (PARITY_ORDER, between_implementations, implied_denoised_difference_bound, network_roundings,
                        per_sample_distance_difference_bound, per_sample_norm, rounding_bound)
from pid_diffusion.checkpoint import TeacherLoadError, load_student, load_teacher, read_teacher_file, save_teacher
from pid_diffusion.evaluation.sampling import load_sampling_model, run_generation, TEACHER_MODE
from pid_diffusion.families.edm2 import ENCODER_KEY, LATENT_ENCODER, PIXEL_ENCODER, network_state_dict
from pid_diffusion.evaluation.detectors import load_detector
from pid_diffusion.generate import GenerationRequest
from pid_diffusion.guidance import GuidanceOptions, GuidedDenoiser
from pid_diffusion.latents import LatentsUnavailableError
from pid_diffusion.losses import implied_denoised, pid_loss
from pid_diffusion.networks.edm2 import EDM2Precond, MPConv, normalize, unet_from_config
from pid_diffusion.precond import PIDStudent
from pid_diffusion.samplers import sample
from pid_diffusion.schedules import index_to_sigma, pid_partner_index
from pid_diffusion.trainer import PIDTrainer, TrainConfig, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(img_resolution=8, label_dim=10, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
            channels_per_head=8, dropout=0.0, logvar_channels=8, use_fp16=False)


def tiny_edm2(img_channels=3, seed=0):
    """A random EDM2Precond whose gains (zero at EDM2's initialisation) are set, so that every layer matters."""
    torch.manual_seed(seed)
    net = EDM2Precond(img_channels=img_channels, **TINY)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("gain"):
                parameter.uniform_(0.5, 1.5)
    return net.eval()


def save_edm2_teacher(path, net, encoder):
    config = dict(TINY, img_channels=net.img_channels, family="edm2", **{ENCODER_KEY: encoder})
    save_teacher(net, path, config)
    return str(path)


# ------------------------------------------------------------------ parity with EDM2's own code
@pytest.fixture(scope="module")
def edm2_fixture():
    return load_fixture("../edm2/edm2_tiny_seed0")


def fixture_network(fixture, state_key="state_dict", attention="sdpa"):
    net = EDM2Precond(**fixture["config"], use_fp16=False, attention_implementation=attention).eval()
    net.load_state_dict(fixture[state_key] if state_key in fixture else fixture["sampler"][state_key], strict=True)
    return net


@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_network_matches_edm2(edm2_fixture, attention):
    net = fixture_network(edm2_fixture, attention=attention)
    x, sigma, labels = edm2_fixture["x"], edm2_fixture["sigma"], edm2_fixture["class_labels"]
    with torch.no_grad():
        denoised, logvar = net(x, sigma, labels, return_logvar=True)
        c_in = (1 / (sigma ** 2 + 0.25).sqrt()).reshape(-1, 1, 1, 1)
        raw = net.unet(c_in * x, sigma.log() / 4, labels)
    bound = min(between_implementations(network_roundings(net, net.img_resolution)), PARITY_ORDER)
    assert relative_error(raw, edm2_fixture["raw_output"]) <= bound
    assert relative_error(denoised, edm2_fixture["denoised"]) <= bound
    assert relative_error(logvar, edm2_fixture["logvar"]) <= min(between_implementations(2 * 16 + 8), PARITY_ORDER)


def test_training_forward_normalises_the_weights_as_edm2(edm2_fixture):
    net = fixture_network(edm2_fixture).train()
    denoised = net(edm2_fixture["x"], edm2_fixture["sigma"], edm2_fixture["class_labels"])
    expected = edm2_fixture["train_forward"]
    assert relative_error(denoised, expected["denoised"]) <= min(
        between_implementations(network_roundings(net, net.img_resolution)), PARITY_ORDER)
    after = net.state_dict()
    for key, value in expected["state_dict_after"].items():  # each weight rewritten as normalize(weight)
        fan_in = value[0].numel() if value.ndim > 1 else 1
        assert relative_error(after[key], value) <= min(between_implementations(2 * fan_in + 8), PARITY_ORDER), key


@pytest.mark.parametrize("guided", [False, True])
def test_sampler_with_and_without_autoguidance_matches_edm2(edm2_fixture, guided):
    sampler = edm2_fixture["sampler"]
    denoiser = fixture_network(edm2_fixture)
    if guided:
        denoiser = GuidedDenoiser(denoiser, fixture_network(edm2_fixture, "guide_state_dict"), sampler["guidance"])
    with torch.no_grad():
        out = sample(denoiser, sampler["latents"], "heun_deter", steps=sampler["num_steps"],
                     class_labels=edm2_fixture["class_labels"], sigma_min=sampler["sigma_min"],
                     sigma_max=sampler["sigma_max"], rho=sampler["rho"])
    expected = sampler["guided_output" if guided else "output"]
    calls = (2 * sampler["num_steps"] - 1) * (2 if guided else 1)
    roundings = calls * network_roundings(denoiser, denoiser.img_resolution)
    assert relative_error(out, expected) <= min(between_implementations(roundings), PARITY_ORDER)
    if guided:  # the guide changes the images
        assert relative_error(out, sampler["output"]) > 100 * PARITY_ORDER


def test_pid_terms_with_an_edm2_student_match_edm2(edm2_fixture):
    pid = edm2_fixture["pid"]
    teacher = fixture_network(edm2_fixture)
    student = PIDStudent(unet_from_config(edm2_fixture["config"]).eval())
    student.net.load_state_dict(network_state_dict(pid["student_state_dict"]), strict=True)
    labels, z, t, t_next = edm2_fixture["class_labels"], pid["z"], pid["t"], pid["t_next"]
    assert torch.equal(index_to_sigma(pid["indices"], pid["num_scales"]).float(), t)
    assert torch.equal(index_to_sigma(pid_partner_index(pid["indices"], pid["num_scales"]), pid["num_scales"]).float(),
                       t_next)
    with torch.no_grad():
        x_t, x_t_next = student(z, t, labels), student(z, t_next, labels)
        losses = {norm: pid_loss(student, teacher, z, t, t_next, labels, loss_norm=norm) for norm in ("l2", "l1")}
        teacher_denoised = teacher(x_t, t, labels)
    student_bound = min(between_implementations(network_roundings(student, 16)), PARITY_ORDER)
    assert relative_error(x_t, pid["x_t"]) <= student_bound and relative_error(x_t_next, pid["x_t_next"]) <= student_bound
    assert relative_error(teacher_denoised, pid["teacher_denoised"]) <= min(
        between_implementations(network_roundings(teacher, 16)) + relative_error(x_t, pid["x_t"]), PARITY_ORDER)
    ours = implied_denoised(x_t, x_t_next, t, t_next)
    assert (ours - pid["implied_denoised"]).norm() <= implied_denoised_difference_bound(
        pid["x_t"], pid["x_t_next"], t, t_next, x_t - pid["x_t"], x_t_next - pid["x_t_next"])
    difference = ours - teacher_denoised
    reference_difference = pid["implied_denoised"] - pid["teacher_denoised"]
    for norm, loss in losses.items():
        bound = per_sample_distance_difference_bound(difference, per_sample_norm(difference - reference_difference), norm)
        assert torch.all((loss - pid[f"loss_{norm}"]).abs().double() <= bound), norm
        assert torch.all((loss - pid[f"loss_{norm}"]).abs() <= PARITY_ORDER * pid[f"loss_{norm}"]), norm


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_release_pickles_load_without_running_anything(kind):
    from conftest import fixture_path

    path = fixture_path(f"../edm2/edm2-tiny-{kind}-seed0.pkl")
    expected = torch.load(fixture_path(f"../edm2/edm2-tiny-{kind}-seed0.expected.pt"), weights_only=True)
    config, state = read_teacher_file(path)
    assert config["family"] == "edm2" and {k: config[k] for k in expected["init_kwargs"]} == expected["init_kwargs"]
    assert set(state) == set(expected["state_dict"])
    assert all(torch.equal(state[k], v) for k, v in expected["state_dict"].items())  # float16, as stored
    teacher = load_teacher(path)
    with torch.no_grad():
        denoised = teacher(expected["x"], expected["sigma"], expected["class_labels"])
    bound = min(between_implementations(network_roundings(teacher, teacher.img_resolution)), PARITY_ORDER)
    assert relative_error(denoised, expected["denoised"]) <= bound
    encoder = config[ENCODER_KEY]
    if kind == "pixel":
        assert encoder == {"kind": PIXEL_ENCODER}
    else:
        recorded = expected["encoder"]
        assert (encoder["kind"], encoder["vae_name"], encoder["batch_size"]) == (
            LATENT_ENCODER, recorded["vae_name"], recorded["batch_size"])
        for name in ("scale", "bias"):
            assert torch.allclose(torch.tensor(encoder[name], dtype=torch.float64), recorded[name].double(), rtol=1e-7,
                                  atol=0), name


# ------------------------------------------------------------------ without the fixtures: oracles written out
def test_magnitude_preserving_operations_keep_unit_variance():
    from pid_diffusion.networks.edm2 import mp_cat, mp_silu, mp_sum

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 400_000, generator=generator, dtype=torch.float64)
    for t in (0.3, 0.5, 0.8):  # EDM2's res_balance, label and concat balances: unit in, unit out
        assert abs(mp_sum(a, b, t).var().item() - 1) < 0.01, t
        wide = mp_cat(a.reshape(-1, 40), b.reshape(-1, 40)[:, :25], dim=1, t=t)  # parts of unequal width
        assert abs(wide.pow(2).mean().item() - 1) < 0.01, t
    assert abs(mp_silu(a).pow(2).mean().item() - 1) < 0.01
    assert torch.equal(mp_sum(a, b, 0.0), a) and torch.allclose(mp_sum(a, b, 0.5), (a + b) / 2 ** 0.5)


def test_the_denoiser_is_its_written_out_preconditioning():
    """D(x; σ) = c_skip·x + c_out·F(c_in·x, ln(σ)/4, labels), σ_data = 0.5 (EDM2 = EDM here), on a network whose
    every gain is set: an input of x, not c_in·x, gives other numbers."""
    net = tiny_edm2()
    x, sigma, labels = 3 * torch.randn(3, 3, 8, 8), torch.tensor([0.02, 1.0, 40.0]), torch.eye(10)[[1, 4, 7]]
    scale = (sigma ** 2 + 0.25).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        raw = net.unet(x / scale.sqrt(), sigma.log() / 4, labels)
        expected = 0.25 / scale * x + sigma.reshape(-1, 1, 1, 1) * 0.5 / scale.sqrt() * raw
        assert relative_error(net(x, sigma, labels), expected) <= rounding_bound(8)
        assert relative_error(net.unet(x, sigma.log() / 4, labels), raw) > 0.01  # c_in matters


def test_the_u_net_sees_the_image_and_a_constant_channel_of_ones():
    net = tiny_edm2()
    seen = []
    first = net.unet.enc["8x8_conv"]
    handle = first.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        net.unet(x, torch.zeros(2), torch.eye(10)[:2])
    handle.remove()
    assert seen[0].shape == (2, 4, 8, 8) and torch.equal(seen[0][:, :3], x)
    assert torch.equal(seen[0][:, 3], torch.ones(2, 8, 8))


# ------------------------------------------------------------------ without the fixtures: behaviour
def test_training_mode_rewrites_weights_normalised_and_eval_mode_does_not():
    torch.manual_seed(0)
    conv = MPConv(6, 4, [3, 3])
    with torch.no_grad():
        conv.weight.mul_(3.0)
    before = conv.weight.detach().clone()
    x = torch.randn(2, 6, 5, 5)
    out_eval = conv.eval()(x)
    assert torch.equal(conv.weight, before)
    out_train = conv.train()(x)
    rms = conv.weight.detach().flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.ones(4), atol=1e-4) and not torch.equal(conv.weight, before)
    # the weight is used normalised either way (normalising twice differs only by the epsilon, 1e-4 relative)
    assert torch.allclose(out_train, out_eval, rtol=3e-4, atol=1e-6)
    assert torch.allclose(normalize(before).flatten(1).pow(2).mean(1), torch.ones(4), atol=1e-3)


def test_autoguidance_is_the_guide_plus_w_times_the_difference():
    teacher, guide = tiny_edm2(seed=0), tiny_edm2(seed=1)
    x, sigma, labels = torch.randn(3, 3, 8, 8), torch.tensor([0.1, 1.0, 10.0]), torch.eye(10)[:3]
    with torch.no_grad():
        guided = GuidedDenoiser(teacher, guide, 1.7)(x, sigma, labels)
        d, g = teacher(x, sigma, labels), guide(x, sigma, labels)
    assert torch.allclose(guided, g + 1.7 * (d - g), rtol=0, atol=rounding_bound(8) * d.abs().max().item())
    with pytest.raises(ValueError, match="the guiding network has img_channels 4, the teacher 3"):
        GuidedDenoiser(teacher, tiny_edm2(img_channels=4), 1.7)
    with pytest.raises(ValueError, match="--guidance 2 needs a guiding network"):
        GuidanceOptions(guidance=2.0).check_guidance()
    with pytest.raises(ValueError, match="used only with --guidance other than 1"):
        GuidanceOptions(guide_model_path="g.pt").check_guidance()


class _Recorded:
    """What torch_utils.persistence pickles: a call of _reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name, state):
        self.meta = dict(type="class", version=6, module_src="raise SystemExit('module source ran')",
                         class_name=class_name, state=state)

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def _recorded_module(module, init_kwargs=None):
    state = {"_parameters": collections.OrderedDict((n, p) for n, p in module._parameters.items()),
             "_buffers": collections.OrderedDict(module._buffers.items()), "_non_persistent_buffers_set": set(),
             "_modules": collections.OrderedDict((n, _recorded_module(c)) for n, c in module._modules.items()),
             "_init_args": (), "_init_kwargs": init_kwargs or {}}
    edm2_names = {"EDM2Precond": "Precond", "EDM2UNet": "UNet"}  # EDM2's class names
    return _Recorded(edm2_names.get(type(module).__name__, type(module).__name__), state)


def write_edm2_release_pickle(path, net, encoder_class, encoder_state, monkeypatch):
    """A pickle with the structure and globals of EDM2's release files, from stand-ins of EDM2's modules."""
    persistence = types.ModuleType("torch_utils.persistence")

    def reconstruct(meta):
        return meta

    reconstruct.__module__, reconstruct.__name__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    reconstruct.__qualname__ = reconstruct.__name__
    persistence._reconstruct_persistent_obj = reconstruct
    util = types.ModuleType("dnnlib.util")
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = EasyDict
    for name, module in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                         ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, module)
    kwargs = dict(TINY, img_channels=net.img_channels)
    snapshot = EasyDict(encoder=_Recorded(encoder_class, {"_init_args": (), "_init_kwargs": {}, **encoder_state}),
                        loss_fn=_Recorded("EDM2Loss", {"P_mean": -0.4, "P_std": 1.0, "sigma_data": 0.5}),
                        dataset_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path="x.zip"),
                        ema=_recorded_module(net.half(), kwargs))
    with open(path, "wb") as f:
        pickle.dump(snapshot, f, protocol=4)
    net.float()


def test_an_edm2_style_pickle_is_read_and_foreign_objects_refused(tmp_path, monkeypatch):
    import numpy as np

    net = tiny_edm2(img_channels=4)
    latent = dict(vae_name="stabilityai/sd-vae-ft-mse", scale=np.float32([0.1, 0.2, 0.3, 0.4]),
                  bias=np.float32([-0.5, 0.0, 0.5, 1.0]), batch_size=8, _vae=None)
    write_edm2_release_pickle(tmp_path / "latent.pkl", net, LATENT_ENCODER, latent, monkeypatch)
    config, state = read_teacher_file(tmp_path / "latent.pkl")
    # every field of the encoder that decoding reads
    assert config[ENCODER_KEY]["scale"] == pytest.approx([0.1, 0.2, 0.3, 0.4], rel=1e-7)
    assert config[ENCODER_KEY]["bias"] == pytest.approx([-0.5, 0.0, 0.5, 1.0], rel=1e-7)
    assert (config[ENCODER_KEY]["kind"], config[ENCODER_KEY]["vae_name"], config[ENCODER_KEY]["batch_size"]) == (
        LATENT_ENCODER, "stabilityai/sd-vae-ft-mse", 8)
    assert state["unet.out_gain"].dtype == torch.float16  # EDM2 stores the EMA network in float16
    teacher = load_teacher(tmp_path / "latent.pkl")
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 5.0])
    with torch.no_grad():
        assert torch.equal(teacher(x, sigma), net.half()(x, sigma))  # the stored float16 network, computed alike
    write_edm2_release_pickle(tmp_path / "foreign.pkl", tiny_edm2(), "SomeOtherEncoder", {}, monkeypatch)
    with pytest.raises(TeacherLoadError, match="the encoder is a SomeOtherEncoder; EDM2's files hold a "
                                               "StandardRGBEncoder .* or a StabilityVAEEncoder"):
        load_teacher(tmp_path / "foreign.pkl")
    with pytest.raises(TeacherLoadError, match="is an EDM2 network, which records its architecture; the flags "
                                               "--num_channels describe EDM networks"):
        read_teacher_file(tmp_path / "latent.pkl", num_channels=128)


def tiny_run(teacher, folder, **overrides):
    values = dict(teacher_model_path=teacher, log_dir=str(folder), global_batch_size=4, loss_norm="l2",
                  start_scales=10, lr=1e-3, ema_rate="0.9", total_training_steps=2, save_interval=2, log_interval=1)
    return TrainConfig(**{**values, **overrides})


def test_pid_on_an_edm2_teacher_trains_resumes_and_samples(tmp_path):
    teacher = save_edm2_teacher(tmp_path / "edm2.pt", tiny_edm2(), {"kind": PIXEL_ENCODER})
    train(tiny_run(teacher, tmp_path / "run"))
    student = load_student(tmp_path / "run" / "ema_0.9_000002.pt")
    assert student.network_config["family"] == "edm2" and type(student.net).__name__ == "EDM2UNet"
    resumed = train(tiny_run(teacher, tmp_path / "run", total_training_steps=3, save_interval=3))
    assert resumed.step == 3 and "resumed from" in (tmp_path / "run" / "log.txt").read_text()
    # the student was initialised from the teacher's U-Net and trained with forced weight normalisation
    weights = [m.weight.detach().flatten(1) for m in resumed.student.modules() if isinstance(m, MPConv)]
    assert all(w.pow(2).mean(1).sqrt().sub(1).abs().max() < 0.05 for w in weights)
    loaded = load_sampling_model("one_shot_pinn_edm_edm_one_shot", str(tmp_path / "run" / "model000003.pt"), {}, "cpu",
                                 dict(sampler="oneshot", sigma_min=0.002, sigma_max=80.0, clip_denoised=True))
    images, _, _, _ = run_generation(loaded.model, loaded.shape, loaded.label_dim, GenerationRequest(3, 3, 0),
                                     loaded.options, "cpu", progress=False)
    assert images.shape == (3, 8, 8, 3) and images.dtype == torch.uint8


def test_autoguided_distillation_targets_the_guided_teacher(tmp_path):
    teacher = save_edm2_teacher(tmp_path / "teacher.pt", tiny_edm2(seed=0), {"kind": PIXEL_ENCODER})
    guide = save_edm2_teacher(tmp_path / "guide.pt", tiny_edm2(seed=1), {"kind": PIXEL_ENCODER})
    plain = PIDTrainer(tiny_run(teacher, tmp_path / "plain"))
    guided = PIDTrainer(tiny_run(teacher, tmp_path / "guided", guide_model_path=guide, guidance=1.7))
    self_guided = PIDTrainer(tiny_run(teacher, tmp_path / "self", guide_model_path=teacher, guidance=1.7))
    inputs = plain.step_inputs(0)
    with torch.no_grad():
        losses = [trainer.batch_losses(trainer.module, inputs, eager=True) for trainer in (plain, guided, self_guided)]
        x_t = plain.student(inputs[0], inputs[1], inputs[3])
        d, g = plain.teacher(x_t, inputs[1], inputs[3]), guided.teacher.guide(x_t, inputs[1], inputs[3])
        assert torch.allclose(guided.teacher(x_t, inputs[1], inputs[3]), g + 1.7 * (d - g), atol=1e-5)
    assert torch.allclose(losses[0], losses[2], rtol=1e-5) and not torch.allclose(losses[0], losses[1], rtol=1e-2)
    for trainer in (plain, guided, self_guided):
        trainer.close()
    other = save_edm2_teacher(tmp_path / "other.pt", tiny_edm2(img_channels=4), {"kind": PIXEL_ENCODER})
    with pytest.raises(ValueError, match="the guiding network has img_channels 4"):
        PIDTrainer(tiny_run(teacher, tmp_path / "bad", guide_model_path=other, guidance=1.7))
    assert not (tmp_path / "bad" / "run_config.json").exists()


def write_tiny_vae(folder, seed=0, constant_output=None):
    """A tiny random AutoencoderKL saved in `folder`; `constant_output`: its decoder gives that value everywhere."""
    diffusers = pytest.importorskip("diffusers", reason="the [latent] extra (diffusers) is not installed")
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=4, sample_size=16)
    if constant_output is not None:
        with torch.no_grad():  # the decoder's last layer: a constant
            vae.decoder.conv_out.weight.zero_()
            vae.decoder.conv_out.bias.fill_(constant_output)
    vae.save_pretrained(folder)
    return vae


def edm2_pixels(vae, latents, encoder):
    """EDM2's decoding, written out: the VAE on (latents − bias)/scale, its output read as [0, 1]."""
    bias, scale = (torch.tensor(encoder[k]).reshape(1, -1, 1, 1) for k in ("bias", "scale"))
    with torch.no_grad():
        return (vae.decode((latents - bias) / scale).sample.clamp(0, 1) * 255).to(torch.uint8)


def test_latent_codec_matches_edm2():
    from conftest import fixture_path
    from pid_diffusion.latents import LatentCodec, codec_constants

    diffusers = pytest.importorskip("diffusers", reason="the [latent] extra (diffusers) is not installed")
    codec = torch.load(fixture_path("../edm2/edm2_latent_codec_seed0.pt"), weights_only=True)
    vae = diffusers.AutoencoderKL(**codec["vae_config"])
    vae.load_state_dict(codec["vae_state_dict"])
    scale, bias = codec_constants(codec["raw_mean"], codec["raw_std"], codec["final_mean"], codec["final_std"])
    assert torch.equal(scale, codec["scale"]) and torch.equal(bias, codec["bias"])  # EDM2's constants, float32
    ours = LatentCodec("fixture", scale, bias, vae=vae.eval())
    with torch.no_grad():  # the value before truncation, to tell a truncation edge: written out from EDM2's decode
        levels = vae.decode((codec["latents"] - bias.reshape(1, -1, 1, 1)) / scale.reshape(1, -1, 1, 1)).sample
    levels = levels.clamp(0, 1) * 255
    # The VAE's float32 sums round differently by thread count and batch size, so a value within that rounding
    # (PARITY_ORDER relative, of 255 levels) of an integer may truncate to the level below: those pixels may be
    # one level off; every other pixel is EDM2's, exactly.
    at_edge = ((levels - levels.round()).abs() <= 255 * PARITY_ORDER) & (levels > 0) & (levels < 255)  # not clamped
    for batch_size in (ours.batch_size, 1):
        ours.batch_size = batch_size
        decoded = ours.decode(codec["latents"])
        off = decoded.int() - codec["decoded"].int()
        assert decoded.dtype == torch.uint8 and torch.equal(decoded[~at_edge], codec["decoded"][~at_edge]), batch_size
        assert off.abs().max() <= 1 and at_edge.float().mean() < 0.01, batch_size
    assert ((codec["decoded"] == 0) | (codec["decoded"] == 255)).float().mean() > 0.05  # the clamp mattered
    raw = ours.encode_pixels(codec["pixels"])
    assert relative_error(raw, codec["raw_latents"]) <= PARITY_ORDER
    final = ours.encode_latents(codec["raw_latents"], noise=codec["noise"])
    assert relative_error(final, codec["final_latents"]) <= PARITY_ORDER


@pytest.mark.parametrize("decoder_value,pixel", [(0.25, 63), (0.75, 191)])
def test_image_sample_writes_edm2_pixels_of_a_latent_teacher(tmp_path, decoder_value, pixel):
    import numpy as np

    write_tiny_vae(tmp_path / "vae", constant_output=decoder_value)
    encoder = dict(kind=LATENT_ENCODER, vae_name=str(tmp_path / "vae"), scale=[0.5] * 4, bias=[0.0] * 4, batch_size=2)
    teacher = save_edm2_teacher(tmp_path / "latent.pt", tiny_edm2(img_channels=4), encoder)
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "image_sample.py"), "--training_mode",
                           TEACHER_MODE, "--model_path", teacher, "--steps", "2", "--num_samples", "3",
                           "--batch_size", "3"], env={**os.environ, "OPENAI_LOGDIR": str(tmp_path / "out")},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out" / "samples_3x16x16x3.npz") as samples:
        assert samples["arr_0"].dtype == np.uint8 and set(np.unique(samples["arr_0"])) == {pixel}  # EDM2: 0.25 → 63
    loaded = load_sampling_model(TEACHER_MODE, teacher, {}, "cpu", dict(sampler="euler", steps=2))
    tally = run_generation(loaded.model, loaded.shape, loaded.label_dim, GenerationRequest(2, 2, 0), loaded.options,
                           "cpu", detector=load_detector("pixels"), progress=False, decode=loaded.decode)[3]
    assert np.allclose(tally.stats.mean_cov()[0], pixel / 255, rtol=0, atol=1e-12)  # the detector sees them as they are


def test_a_latent_teacher_distils_and_its_samples_are_decoded_for_fid(tmp_path):
    vae = write_tiny_vae(tmp_path / "vae")
    encoder = dict(kind=LATENT_ENCODER, vae_name=str(tmp_path / "vae"), scale=[0.5, 0.25, 1.0, 2.0],
                   bias=[0.1, -0.2, 0.0, 0.3], batch_size=2)
    teacher = save_edm2_teacher(tmp_path / "latent.pt", tiny_edm2(img_channels=4), encoder)
    trainer = train(tiny_run(teacher, tmp_path / "run"))
    assert trainer.image_shape == (4, 8, 8) and trainer.output_shape() == (3, 16, 16)
    assert (tmp_path / "run" / "samples_000002.png").exists()
    loaded = load_sampling_model("one_shot_pinn_edm_edm_one_shot", str(tmp_path / "run" / "ema_0.9_000002.pt"), {},
                                 "cpu", dict(sampler="oneshot", sigma_min=0.002, sigma_max=80.0, clip_denoised=True))
    assert loaded.options["clip_denoised"] is False and loaded.output_shape() == (3, 16, 16)
    request = GenerationRequest(4, 2, 0)
    images, _, _, tally = run_generation(loaded.model, loaded.shape, loaded.label_dim, request, loaded.options, "cpu",
                                         detector=load_detector("pixels"), progress=False, decode=loaded.decode)
    assert images.shape == (4, 16, 16, 3) and int(tally.stats.count) == 4
    # the decoded images are EDM2's pixels of (latents − bias)/scale
    z = torch.randn(2, 4, 8, 8)
    assert torch.equal(loaded.decode(z), edm2_pixels(vae, z, encoder))
    # --vae_path replaces the VAE the file names
    other = write_tiny_vae(tmp_path / "other_vae", seed=1)
    replaced = load_sampling_model("one_shot_pinn_edm_edm_one_shot", str(tmp_path / "run" / "ema_0.9_000002.pt"), {},
                                   "cpu", dict(sampler="oneshot", sigma_min=0.002, sigma_max=80.0, clip_denoised=True),
                                   vae_path=str(tmp_path / "other_vae"))
    assert torch.equal(replaced.decode(z), edm2_pixels(other, z, encoder))
    assert not torch.equal(replaced.decode(z), loaded.decode(z))


def test_a_latent_teacher_without_diffusers_is_refused_in_one_line(tmp_path, monkeypatch):
    encoder = dict(kind=LATENT_ENCODER, vae_name="stabilityai/sd-vae-ft-mse", scale=[1.0] * 4, bias=[0.0] * 4,
                   batch_size=2)
    teacher = save_edm2_teacher(tmp_path / "latent.pt", tiny_edm2(img_channels=4), encoder)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` fails
    with pytest.raises(LatentsUnavailableError, match=r"pip install -e '\.\[latent\]'"):
        PIDTrainer(tiny_run(teacher, tmp_path / "run"))
    with pytest.raises(ValueError, match="rewrites its weights in every training call .* add --batched_student True"):
        PIDTrainer(tiny_run(save_edm2_teacher(tmp_path / "pixel.pt", tiny_edm2(), {"kind": PIXEL_ENCODER}),
                            tmp_path / "run", batched_student=False))
    four_channels = save_edm2_teacher(tmp_path / "four.pt", tiny_edm2(img_channels=4), {"kind": PIXEL_ENCODER})
    with pytest.raises(ValueError, match="--loss_norm lpips compares RGB images; this teacher's samples have 4 channel"):
        PIDTrainer(tiny_run(four_channels, tmp_path / "run", loss_norm="lpips"))
    assert not (tmp_path / "run" / "run_config.json").exists()


def test_sampling_an_edm2_teacher_with_autoguidance_from_its_flags(tmp_path):
    from pid_diffusion import cli

    teacher = save_edm2_teacher(tmp_path / "teacher.pt", tiny_edm2(seed=0), {"kind": PIXEL_ENCODER})
    guide = save_edm2_teacher(tmp_path / "guide.pt", tiny_edm2(seed=1), {"kind": PIXEL_ENCODER})
    base = ["--training_mode", TEACHER_MODE, "--model_path", teacher, "--sampler", "heun_deter", "--steps", "3",
            "--num_samples", "2", "--batch_size", "2", "--clip_denoised", "False"]
    images = {}
    for name, extra in (("plain", []), ("guided", ["--guide_model_path", guide, "--guidance", "1.7"])):
        args, given = cli.parse_sampling([*base, *extra])
        loaded = load_sampling_model(args.training_mode, args.model_path, {}, "cpu", cli.sampling_options(args), given,
                                     cli.guidance(args))
        assert isinstance(loaded.model, GuidedDenoiser) == (name == "guided")
        images[name] = run_generation(loaded.model, loaded.shape, loaded.label_dim, cli.generation_request(args, given, loaded),
                                      loaded.options, "cpu", progress=False)[0]
    assert images["plain"].shape == (2, 8, 8, 3) and not torch.equal(images["plain"], images["guided"])
    args, given = cli.parse_sampling([*base, "--guidance", "2"])
    with pytest.raises(ValueError, match="--guidance 2 needs a guiding network"):
        load_sampling_model(args.training_mode, args.model_path, {}, "cpu", cli.sampling_options(args), given,
                            cli.guidance(args))
    student_args, given = cli.parse_sampling(["--model_path", "s.pt", "--guide_model_path", guide, "--guidance", "2"])
    with pytest.raises(ValueError, match="guide a teacher; a PID student samples in one step"):
        load_sampling_model(student_args.training_mode, "s.pt", {}, "cpu", cli.sampling_options(student_args), given,
                            cli.guidance(student_args))


def test_edm2_reference_statistics_pickle_is_read_without_running_it(tmp_path):
    import numpy as np

    from pid_diffusion.evaluation.statistics import load_reference_stats

    mu, sigma = np.arange(4, dtype=np.float32), np.eye(4, dtype=np.float32) * 2
    with open(tmp_path / "img512.pkl", "wb") as f:
        pickle.dump({"fid": {"mu": mu, "sigma": sigma}, "fd_dinov2": {"mu": mu[:2], "sigma": sigma[:2, :2]}}, f)
    got_mu, got_sigma = load_reference_stats(str(tmp_path / "img512.pkl"), 4)
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma) and got_mu.dtype == np.float64
    with open(tmp_path / "other.pkl", "wb") as f:
        pickle.dump({"inception": {"mu": mu}}, f)
    with pytest.raises(ValueError, match="other.pkl: not EDM2's reference statistics"):
        load_reference_stats(str(tmp_path / "other.pkl"))


def distill_script_config(name):
    """The cm_train.py configuration that scripts/distill_pid_diffusion.sh runs for `name` (DRY_RUN)."""
    import shlex

    from pid_diffusion import cli

    printed = subprocess.run(["bash", os.path.join(REPO, "scripts", "distill_pid_diffusion.sh"), name],
                             env={**os.environ, "DRY_RUN": "1"}, capture_output=True, text=True, check=True).stdout
    command = shlex.split(printed.splitlines()[1])
    args, given = cli.parse_distillation(command[command.index("./scripts/cm_train.py") + 1:])
    return cli.distillation_config(args, given, "unused", "cuda")


@pytest.mark.parametrize("name,teacher,guide,guidance,reference", [
    ("edm2-img64-s", "edm2-img64-s-1073741-0.075.pkl", "", 1.0, "edm2-img64"),  # the older names stay
    ("edm2-img512-xxl", "edm2-img512-xxl-0939524-0.070.pkl", "", 1.0, "edm2-img512"),
    ("edm2-img64-s-autog", "edm2-img64-s-1073741-0.045.pkl", "edm2-img64-xs-0134217-0.110.pkl", 1.7, "edm2-img64"),
    ("edm2-img512-s-guid-fid", "edm2-img512-s-2147483-0.025.pkl", "edm2-img512-xs-uncond-2147483-0.025.pkl", 1.4,
     "edm2-img512"),
    ("edm2-img512-xxl-autog-dino", "edm2-img512-xxl-0939524-0.130.pkl", "edm2-img512-m-0268435-0.205.pkl", 2.3,
     "edm2-img512"),
])
def test_the_distill_script_names_edm2_presets_and_their_statistics(name, teacher, guide, guidance, reference):
    from pid_diffusion.presets import EDM2_RELEASES

    config = distill_script_config(name)
    assert (config.teacher_model_path, config.guide_model_path, config.guidance, config.fid_dataset) == (
        f"{EDM2_RELEASES}/{teacher}", f"{EDM2_RELEASES}/{guide}" if guide else "", guidance, reference)
    assert config.network_flags == {}  # EDM2 files record their architecture
    assert (config.global_batch_size, config.lr, config.start_scales) == (2048, 1e-3, 250)
    assert config.loss_norm == ("l2" if "img512" in name else "lpips")  # latents are no RGB images for LPIPS
    config.check_guidance()


def test_every_edm2_preset_resolves_and_explicit_flags_win(tmp_path, monkeypatch, capsys):
    from pid_diffusion import cli
    from pid_diffusion.presets import ALIASES, EDM2_RELEASES, PRESETS, preset_named

    assert len(PRESETS) == 36 and all(preset_named(alias) is PRESETS[name] for alias, name in ALIASES.items())
    for name, preset in PRESETS.items():
        args, given = cli.parse_sampling(["--preset", name])
        assert (args.training_mode, args.model_path, args.guidance) == (TEACHER_MODE, preset.teacher_path,
                                                                         preset.guidance)
        assert args.guide_model_path == (f"{EDM2_RELEASES}/{preset.guide}" if preset.guide else "")
        assert ("-guid-" in name or "-autog-" in name) == bool(preset.guide) == (preset.guidance != 1)
        assert "uncond" in preset.guide or "-guid-" not in name  # classifier-free: an unconditional guide
    # a file in model_zoo/ is used instead of the address
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_zoo").mkdir()
    (tmp_path / "model_zoo" / "edm2-img64-s-1073741-0.045.pkl").write_bytes(b"")
    args, given = cli.parse_fid(["--preset", "edm2-img64-s-autog-fid", "--exp_dir", "out", "--guidance", "2.5"])
    assert args.checkpoints == os.path.join("model_zoo", "edm2-img64-s-1073741-0.045.pkl")
    assert args.guidance == 2.5 and args.fid_dataset == "edm2-img64"  # the explicit weight wins
    args, _ = cli.parse_distillation(["--preset", "edm2-img512-xs-guid-fid", "--fid_dataset", "digits"])
    assert args.teacher_model_path.endswith("edm2-img512-xs-2147483-0.045.pkl") and args.fid_dataset == "digits"
    for argv, message in ((["--preset", "edm2-img64-q"], "unknown --preset 'edm2-img64-q'; EDM2's presets: "
                                                          "edm2-img512-xs-fid, "),
                          (["--preset", "edm2-img64-s-fid", "--teacher_model_path", "t.pkl"],
                           "--preset edm2-img64-s-fid names the teacher; drop --teacher_model_path t.pkl")):
        with pytest.raises(SystemExit):
            cli.parse_distillation(argv)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_sampling(["--preset", "edm2-img64-s-fid", "--training_mode", "one_shot_pinn_edm_edm_one_shot"])
    assert "--preset edm2-img64-s-fid names a teacher: drop --training_mode" in capsys.readouterr().err


def test_edm2_models_take_edm2_s_protocol_and_edm_models_the_original_s(tmp_path, teacher_path):
    from pid_diffusion import cli
    from pid_diffusion.families.edm2 import EDM2Family

    edm2 = save_edm2_teacher(tmp_path / "edm2.pt", tiny_edm2(), {"kind": PIXEL_ENCODER})
    for path, expected in ((edm2, dict(sampler="heun_deter", steps=32, clip_denoised=False, seed=0, num_samples=50000,
                                       feed="uint8", ranges=3)),
                           (teacher_path, dict(sampler="heun", steps=40, clip_denoised=True, seed=42, num_samples=10000,
                                               feed="float", ranges=1))):
        args, given = cli.parse_fid(["--exp_dir", "d", "--training_mode", TEACHER_MODE, "--model_path", path])
        loaded = load_sampling_model(TEACHER_MODE, path, {}, "cpu", cli.sampling_options(args), given)
        request = cli.generation_request(args, given, loaded)
        from pid_diffusion.evaluation.detectors import resolve_feed

        assert {k: loaded.options[k] for k in ("sampler", "steps", "clip_denoised")} == {
            k: expected[k] for k in ("sampler", "steps", "clip_denoised")}
        assert (request.seed, request.num_samples, resolve_feed(args.detector_feed, loaded.protocol),
                loaded.setting("seed_ranges", args, given)) == (expected["seed"], expected["num_samples"],
                                                                 expected["feed"], expected["ranges"])
    # flags given win over the family's protocol
    argv = ["--exp_dir", "d", "--training_mode", TEACHER_MODE, "--sampler", "euler", "--steps", "5", "--seed", "42",
            "--num_samples", "7", "--clip_denoised", "True", "--detector_feed", "float", "--seed_ranges", "1"]
    args, given = cli.parse_fid(argv)
    loaded = load_sampling_model(TEACHER_MODE, edm2, {}, "cpu", cli.sampling_options(args), given)
    request = cli.generation_request(args, given, loaded)
    assert (loaded.options["sampler"], loaded.options["steps"], loaded.options["clip_denoised"]) == ("euler", 5, True)
    assert (request.seed, request.num_samples, args.detector_feed, loaded.setting("seed_ranges", args, given)) == (
        42, 7, "float", 1)
    assert EDM2Family.sampling_protocol["sigma_min"] == 0.002 and EDM2Family.sampling_protocol["rho"] == 7


def test_the_fid_walk_measures_an_autoguided_teacher_as_its_own_question(tmp_path):
    import csv

    import numpy as np

    folder = tmp_path / "teachers"
    folder.mkdir()
    save_edm2_teacher(folder / "teacher.pt", tiny_edm2(seed=0), {"kind": PIXEL_ENCODER})
    guide = save_edm2_teacher(tmp_path / "guide.pt", tiny_edm2(seed=1), {"kind": PIXEL_ENCODER})
    pixels = np.random.default_rng(0).uniform(0, 1, (64, 8 * 8 * 3))
    np.savez(tmp_path / "ref.npz", mu=pixels.mean(0), sigma=np.cov(pixels, rowvar=False))
    np.savez(tmp_path / "real.npz", (pixels.reshape(64, 8, 8, 3) * 255).round().astype(np.uint8))
    base = ["--exp_dir", str(folder), "--training_mode", TEACHER_MODE, "--sampler", "heun_deter", "--steps", "2",
            "--clip_denoised", "False", "--detector", "pixels", "--ref_path", str(tmp_path / "ref.npz"),
            "--num_samples", "4", "--batch_size", "4", "--seed", "0", "--save_samples", "False", "--metrics",
            "fid,pr,kid", "--real_images", str(tmp_path / "real.npz")]
    for extra in ([], ["--guide_model_path", guide, "--guidance", "1.7"]):
        done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "fid_evaluation.py"), *base, *extra],
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
    with open(folder / "fid_results_0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # EDM2's protocol: three disjoint ranges of samples for each question (plain, guided), a row each
    assert [("guidance=1.7" in row["sampling"]) for row in rows] == [False] * 3 + [True] * 3
    assert [row["sampling"].count("first_sample=") and row["sampling"].split("first_sample=")[1].split(";")[0]
            for row in rows] == [0, "4", "8"] * 2
    assert len({row["FID"] for row in rows}) == 6  # other samples, other FIDs
    assert {row["feed"] for row in rows} == {"uint8"}  # EDM2's protocol, not the original's float feed
    log = (folder / "FID" / "log.txt").read_text()
    minimum = min(float(row["FID"]) for row in rows[3:])
    assert "teacher: FID over 3 disjoint sample ranges (samples 0–3: " in log and f"minimum {minimum:.4f}" in log
    # the metrics beside FID: a row per range, and a line with each range's value and the best (KID: the lowest)
    with open(folder / "metrics_0.csv", newline="") as f:
        kids = [float(row["value"]) for row in csv.DictReader(f) if row["metric"] == "kid"]
    assert len(kids) == 6 and len(set(kids[3:])) == 3
    assert f"teacher: kid over 3 disjoint sample ranges ({', '.join(f'{v:.4g}' for v in kids[3:])}); best " \
           f"{min(kids[3:]):.4g}" in log
    assert "teacher: recall over 3 disjoint sample ranges (" in log


# ------------------------------------------------------------------ classifier-free guidance (an unconditional guide)
def cfg_pair():
    from conftest import fixture_path

    return (fixture_path("../edm2/edm2-tiny-cond-seed0.pkl"), fixture_path("../edm2/edm2-tiny-uncond-seed0.pkl"),
            torch.load(fixture_path("../edm2/edm2-tiny-cfg-seed0.expected.pt"), weights_only=True))


@pytest.mark.parametrize("which", ["output", "guided_output", "uncond_output"])
def test_classifier_free_guidance_samples_as_edm2(which):
    from pid_diffusion.checkpoint import read_denoiser

    conditional, unconditional, expected = cfg_pair()
    guidance = GuidanceOptions(guide_model_path=unconditional, guidance=expected["guidance"])
    path, labels, options = conditional, expected["class_labels"], (guidance if which == "guided_output" else None)
    if which == "uncond_output":
        path, labels = unconditional, None
    denoiser = read_denoiser(path, options)[0]
    with torch.no_grad():
        out = sample(denoiser, expected["latents"], "heun_deter", steps=expected["num_steps"], class_labels=labels,
                     sigma_min=expected["sigma_min"], sigma_max=expected["sigma_max"], rho=expected["rho"])
    calls = (2 * expected["num_steps"] - 1) * (2 if which == "guided_output" else 1)
    net = denoiser.denoiser if which == "guided_output" else denoiser
    assert relative_error(out, expected[which]) <= min(between_implementations(calls * network_roundings(net, 16)),
                                                       PARITY_ORDER)
    if which == "guided_output":  # the guide changes the images
        assert relative_error(out, expected["output"]) > 100 * PARITY_ORDER


def test_image_sample_guides_a_conditional_teacher_by_an_unconditional_one(tmp_path):
    import numpy as np

    from pid_diffusion.checkpoint import read_denoiser
    from pid_diffusion.generate import seeded_inputs, to_uint8

    conditional, unconditional, expected = cfg_pair()
    flags = ["--training_mode", TEACHER_MODE, "--model_path", conditional, "--guide_model_path", unconditional,
             "--guidance", "1.4", "--steps", "3", "--num_samples", "4", "--batch_size", "2", "--seed", "5"]
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "image_sample.py"), *flags],
                          env={**os.environ, "OPENAI_LOGDIR": str(tmp_path)}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "samples_4x16x16x3.npz") as written:
        images, labels = torch.from_numpy(written["arr_0"]), torch.from_numpy(written["arr_1"])
    # what the library gives for the same samples (EDM2's sampler, proven above): Heun, no clamping
    guided = read_denoiser(conditional, GuidanceOptions(guide_model_path=unconditional, guidance=1.4))[0]
    noise, drawn = seeded_inputs(5, range(4), (3, 16, 16), 10)
    with torch.no_grad():
        out = sample(guided, noise, "heun_deter", steps=3, class_labels=torch.eye(10)[drawn])
    assert torch.equal(labels, drawn)
    # the script samples in batches of 2, this in one of 4: float32 sums in another order may put a value
    # within rounding of a pixel edge on the other side (measured: 1 pixel of 3,072, one level)
    levels = (out.clamp(-1, 1) * 127.5 + 128).permute(0, 2, 3, 1)
    off = to_uint8(out.clamp(-1, 1)) != images
    assert (to_uint8(out.clamp(-1, 1)).int() - images.int()).abs().max() <= 1 and off.sum() <= 2
    assert ((levels[off] - levels[off].round()).abs() < 1e-3).all()  # only at truncation edges


def test_an_unconditional_guide_distils_and_real_mismatches_are_refused(tmp_path):
    teacher = save_edm2_teacher(tmp_path / "teacher.pt", tiny_edm2(seed=0), {"kind": PIXEL_ENCODER})
    unconditional_config = dict(TINY, label_dim=0)
    torch.manual_seed(1)
    unconditional = EDM2Precond(img_channels=3, **unconditional_config).eval()
    save_teacher(unconditional, tmp_path / "uncond.pt", dict(unconditional_config, img_channels=3, family="edm2",
                                                            **{ENCODER_KEY: {"kind": PIXEL_ENCODER}}))
    trainer = train(tiny_run(teacher, tmp_path / "cfg", guide_model_path=str(tmp_path / "uncond.pt"), guidance=1.4))
    x, sigma, labels = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 5.0]), torch.eye(10)[:2]
    with torch.no_grad():  # the guide is called without labels: D_uncond + 1.4·(D_cond − D_uncond)
        expected = unconditional(x, sigma).lerp(trainer.teacher.denoiser(x, sigma, labels), 1.4)
        assert torch.allclose(trainer.teacher(x, sigma, labels), expected, rtol=0, atol=1e-5)
    assert trainer.step == 2 and (tmp_path / "cfg" / "ema_0.9_000002.pt").exists()
    # an unconditional teacher with a conditional guide, and two different label counts, are refused
    with pytest.raises(ValueError, match="the guiding network has label_dim 10, the teacher 0; the teacher is "
                                         "unconditional: its guide must be too"):
        GuidedDenoiser(unconditional, tiny_edm2(), 1.4)
    other = EDM2Precond(img_channels=3, **dict(TINY, label_dim=5))
    with pytest.raises(ValueError, match="label_dim 5, the teacher 10; a guide has the teacher's 10 labels"):
        GuidedDenoiser(tiny_edm2(), other, 1.4)
    with pytest.raises(ValueError, match="img_resolution 16, the teacher 8"):
        GuidedDenoiser(tiny_edm2(), EDM2Precond(img_channels=3, **dict(TINY, img_resolution=16)), 1.4)


def test_a_latent_teacher_whose_vae_cannot_load_stops_before_training(tmp_path):
    encoder = dict(kind=LATENT_ENCODER, vae_name=str(tmp_path / "missing_vae"), scale=[1.0] * 4, bias=[0.0] * 4,
                   batch_size=2)
    teacher = save_edm2_teacher(tmp_path / "latent.pt", tiny_edm2(img_channels=4), encoder)
    with pytest.raises(FileNotFoundError, match="the VAE folder .*missing_vae does not exist.*--vae_path"):
        PIDTrainer(tiny_run(teacher, tmp_path / "run"))
    assert not (tmp_path / "run").exists() or not any(n.endswith(".pt") for n in os.listdir(tmp_path / "run"))
    (tmp_path / "not_a_folder").write_text("x")  # a file named as the VAE: said so, no Hub lookup
    with pytest.raises(FileNotFoundError, match="not_a_folder is a file, not a diffusers AutoencoderKL folder"):
        load_sampling_model(TEACHER_MODE, teacher, {}, "cpu", dict(sampler="euler", steps=2),
                            vae_path=str(tmp_path / "not_a_folder")).output_shape()


def test_a_missing_guide_is_called_a_guide(tmp_path):
    from pid_diffusion.checkpoint import TeacherNotFoundError

    teacher = save_edm2_teacher(tmp_path / "edm2.pt", tiny_edm2(), {"kind": PIXEL_ENCODER})
    for missing, said in ((tmp_path / "nothing.pt", "not found"), (tmp_path, "is a folder; give the guide's file")):
        with pytest.raises(TeacherNotFoundError, match=f"--guide_model_path .*: {said}"):
            PIDTrainer(tiny_run(teacher, tmp_path / "run", guide_model_path=str(missing), guidance=1.5))
