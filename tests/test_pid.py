import pytest
import torch

from conftest import relative_error
from tolerances import (PARITY_ORDER, between_implementations, implied_denoised_difference_bound, network_roundings,
                        per_sample_distance_difference_bound, per_sample_norm, rounding_bound)
from pid_diffusion.families.edm import network_state_dict
from pid_diffusion.losses import implied_denoised, pid_loss, weightings
from pid_diffusion.lpips import LPIPS
from pid_diffusion.networks import MODEL_TYPES, EDMPrecond, SongUNet
from pid_diffusion.precond import PIDStudent
from pid_diffusion.schedules import index_to_sigma, karras_sigmas, pid_partner_index, sample_pid_times
from pid_diffusion.teachers import GaussianMixtureDenoiser, gaussian_teacher


def _fixture_models(fixture):
    config = dict(fixture["config"])
    teacher = EDMPrecond(**config).eval()
    teacher.load_state_dict(fixture["state_dict"])
    size, channels, model_type = (config.pop(k) for k in ("img_resolution", "img_channels", "model_type"))
    net = MODEL_TYPES[model_type](img_resolution=size, in_channels=channels, out_channels=channels,
                                  **{**config, "augment_dim": 0}).eval()
    net.load_state_dict(network_state_dict(fixture["pid"]["student_state_dict"]), strict=True)
    return PIDStudent(net), teacher


def test_pid_terms_match_the_official_code(edm_fixture):
    pid = edm_fixture["pid"]
    student, teacher = _fixture_models(edm_fixture)
    labels = edm_fixture.get("class_labels")
    z, t, t_next = pid["z"], pid["t"], pid["t_next"]
    assert torch.equal(index_to_sigma(pid["indices"], pid["num_scales"]).float(), t)
    assert torch.equal(index_to_sigma(pid_partner_index(pid["indices"], pid["num_scales"]),
                                      pid["num_scales"]).float(), t_next)
    with torch.no_grad():
        x_t, x_t_next = student(z, t, labels), student(z, t_next, labels)
        loss_l2 = pid_loss(student, teacher, z, t, t_next, labels, loss_norm="l2")
        loss_l1 = pid_loss(student, teacher, z, t, t_next, labels, loss_norm="l1")
        teacher_denoised = teacher(x_t, t, labels)
    student_roundings = network_roundings(student, teacher.img_resolution)
    teacher_roundings = network_roundings(teacher, teacher.img_resolution)
    student_bound = min(between_implementations(student_roundings), PARITY_ORDER)
    assert relative_error(x_t, pid["x_t"]) <= student_bound and relative_error(x_t_next, pid["x_t_next"]) <= student_bound
    # the teacher sees x_t with the student's rounding (networks taken as well-conditioned: κ = 1)
    assert relative_error(teacher_denoised, pid["teacher_denoised"]) <= min(
        between_implementations(teacher_roundings) + relative_error(x_t, pid["x_t"]), PARITY_ORDER)
    # The finite difference is the official formula, operation for operation ...
    no_change = torch.zeros_like(pid["x_t"])
    assert (implied_denoised(pid["x_t"], pid["x_t_next"], t, t_next) - pid["implied_denoised"]).norm() <= (
        implied_denoised_difference_bound(pid["x_t"], pid["x_t_next"], t, t_next, no_change, no_change))
    # ... but it cancels: x_t ≈ t·ε is far larger than the implied image, and the difference is
    # amplified by t/(t − t') ≈ 46, so the students' rounding reaches the implied image that amplified.
    dx_t, dx_t_next = x_t - pid["x_t"], x_t_next - pid["x_t_next"]
    ours = implied_denoised(x_t, x_t_next, t, t_next)
    assert (ours - pid["implied_denoised"]).norm() <= implied_denoised_difference_bound(
        pid["x_t"], pid["x_t_next"], t, t_next, dx_t, dx_t_next)
    # The loss compares the implied image with the teacher's (uniform weighting: 1).
    difference = ours - teacher_denoised
    reference_difference = pid["implied_denoised"] - pid["teacher_denoised"]
    for loss, name in ((loss_l2, "l2"), (loss_l1, "l1")):
        bound = per_sample_distance_difference_bound(difference, per_sample_norm(difference - reference_difference), name)
        assert torch.all((loss - pid[f"loss_{name}"]).abs().double() <= bound), name
        assert torch.all((loss - pid[f"loss_{name}"]).abs() <= PARITY_ORDER * pid[f"loss_{name}"]), name


def test_student_returns_the_noise_at_sigma_max():
    net = SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16, channel_mult=[1, 2],
                   num_blocks=1, attn_resolutions=[4])
    for p in net.parameters():
        p.data.normal_(0, 0.5)
    z = torch.randn(4, 3, 8, 8) * 80
    student = PIDStudent(net)
    assert torch.equal(student(z, 80.0), z)
    assert not torch.allclose(student(z, 0.002), z)


def _tiny_student():
    return PIDStudent(SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16,
                               channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0))


def test_gradient_reaches_both_student_calls_and_never_the_teacher():
    student = _tiny_student()
    teacher = EDMPrecond(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=16,
                         channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    calls = []
    original_forward = student.forward
    student.forward = lambda z, t, labels=None: calls.append(t) or original_forward(z, t, labels)
    z = torch.randn(3, 3, 8, 8) * 80
    _, t, t_next = sample_pid_times(3, 250)
    pid_loss(student, teacher, z, t, t_next).mean().backward()
    assert len(calls) == 2 and all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_partner_index_wraps_at_the_last_level():
    assert pid_partner_index(torch.tensor([0, 5, 248, 249]), 250).tolist() == [1, 6, 249, 248]
    indices, t, t_next = sample_pid_times(4000, 250, generator=torch.Generator().manual_seed(1))
    assert indices.min() == 0 and indices.max() == 249
    last = indices == 249
    assert torch.all(t_next[~last] < t[~last]) and torch.all(t_next[last] > t[last])
    # σ_min and σ_max are the grid's ends: the float32 rounding of 0.002 and 80 exactly
    assert torch.all(t[last] == torch.tensor(0.002)) and t.max() == 80.0
    with pytest.raises(ValueError, match="at least 2 noise levels"):
        sample_pid_times(4, 1)


def test_grid_values_of_the_official_code():
    grid = karras_sigmas(250)
    # the original's values as printed, to five significant digits: each exact to half a unit of its last digit
    printed = {0: "80", 1: "78.262", 2: "76.557", 3: "74.884", 124: "2.5608", 125: "2.4704", 246: "0.0026800",
               247: "0.0024342", 248: "0.0022080", 249: "0.002"}
    for index, text in printed.items():
        decimals = len(text.partition(".")[2])
        assert abs(grid[index].item() - float(text)) <= 0.5 * 10.0 ** -decimals, index


def test_weightings():
    t = torch.tensor([0.5, 2.0])
    # a few float32 operations on exactly representable values
    for schedule, expected in (("snr", [4.0, 0.25]), ("snr+1", [5.0, 1.25]), ("karras", [8.0, 4.25]),
                               ("truncated-snr", [4.0, 1.0])):
        assert relative_error(weightings(schedule, t), torch.tensor(expected)) <= rounding_bound(4), schedule
    assert torch.equal(weightings("uniform", t), torch.ones(2))


def test_bad_names_list_the_valid_ones():
    student, teacher = _tiny_student(), gaussian_teacher(torch.zeros(3, 8, 8), 0.5)
    z, t = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="valid: l1, l2, lpips"):
        pid_loss(student, teacher, z, t, t / 2, loss_norm="l3")
    with pytest.raises(ValueError, match="valid: snr, snr\\+1, karras, truncated-snr, uniform"):
        pid_loss(student, teacher, z, t, t / 2, weight_schedule="sqrt")
    with pytest.raises(ValueError, match="pass lpips="):
        pid_loss(student, teacher, z, t, t / 2, loss_norm="lpips")


def test_missing_lpips_weights_name_each_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as info:
        LPIPS()
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and "lpips_weights.pt" in message and "model_zoo" in message


def _residual_of(trajectory, teacher, num_scales):
    indices = torch.arange(num_scales)
    t = index_to_sigma(indices, num_scales)
    t_next = index_to_sigma(pid_partner_index(indices, num_scales), num_scales)
    z = torch.randn(num_scales, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    x_t = trajectory(z, t)
    target = teacher(x_t, t)
    residual = implied_denoised(x_t, trajectory(z, t_next), t, t_next) - target
    return (residual.flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1)).max().item()


def test_exact_ode_trajectory_has_a_vanishing_pid_residual():
    teacher = gaussian_teacher(torch.randn(3, 8, 8, dtype=torch.float64) * 0.3, 0.5)

    def exact(z, t):
        return teacher.ode_solution(z, 80.0, t)

    def perturbed(z, t):  # same end points, wrong path in between
        w = (t / 80 * (1 - t / 80)).reshape(-1, 1, 1, 1)
        return exact(z, t) + 0.05 * w * z

    coarse, fine = _residual_of(exact, teacher, 250), _residual_of(exact, teacher, 1000)
    assert coarse < 0.02
    assert fine < coarse / 3  # first-order finite difference: the residual shrinks with the grid step
    assert _residual_of(perturbed, teacher, 250) > 50 * coarse


def _short_run_improvement(seed, autocast_dtype=None):
    """Held-out PID loss after 40 Adam steps on a Gaussian-mixture teacher, over the loss before."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    teacher = GaussianMixtureDenoiser(torch.rand(4, 3, 8, 8, generator=generator) * 1.6 - 0.8, stds=0.05)
    student = _tiny_student()
    optimizer = torch.optim.Adam(student.parameters(), lr=2e-3)
    held_out = torch.Generator().manual_seed(100)
    z_eval = torch.randn(64, 3, 8, 8, generator=held_out) * 80
    _, t_eval, t_next_eval = sample_pid_times(64, 40, generator=held_out)

    def held_out_loss():
        with torch.no_grad():
            return pid_loss(student, teacher, z_eval, t_eval, t_next_eval).mean().item()

    before = held_out_loss()
    for _ in range(40):
        z = torch.randn(32, 3, 8, 8, generator=generator) * 80
        _, t, t_next = sample_pid_times(32, 40, generator=generator)
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = pid_loss(student, teacher, z, t, t_next, batched_student=True).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return held_out_loss() / before


@pytest.fixture(scope="module")
def fp32_improvements():
    return [_short_run_improvement(seed) for seed in (0, 1, 2)]


def test_short_pid_run_lowers_the_loss(fp32_improvements):
    assert max(fp32_improvements) < 0.6  # measured: 0.31–0.41 of the loss before, seeds 0–2


def test_bf16_reaches_the_fp32_quality_within_the_seed_spread(fp32_improvements):
    bf16 = [_short_run_improvement(seed, torch.bfloat16) for seed in (0, 1, 2)]
    spread = max(fp32_improvements) - min(fp32_improvements)
    mean = lambda values: sum(values) / len(values)
    assert abs(mean(bf16) - mean(fp32_improvements)) <= spread
    assert max(bf16) < 0.6
