import pytest
import torch

from conftest import relative_error
from tolerances import PARITY_ORDER, between_implementations, network_roundings, rounding_bound, sampler_roundings
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.samplers import SAMPLERS, edm_sampler, network_calls, sample
from pid_diffusion.teachers import GaussianMixtureDenoiser, gaussian_teacher


def test_edm_sampler_matches_edm(edm_fixture):
    net = EDMPrecond(**edm_fixture["config"]).eval()
    net.load_state_dict(edm_fixture["state_dict"])
    ref = edm_fixture["sampler"]
    labels = edm_fixture.get("class_labels")
    with torch.no_grad():
        out = edm_sampler(net, ref["latents"], labels, num_steps=ref["num_steps"], sigma_min=ref["sigma_min"],
                          sigma_max=ref["sigma_max"], rho=ref["rho"])
        via_entry_point = sample(net, ref["latents"], "heun_deter", steps=ref["num_steps"], class_labels=labels)
    roundings = sampler_roundings(network_roundings(net, net.img_resolution),
                                  network_calls("heun_deter", ref["num_steps"]), ref["num_steps"])
    bound = min(between_implementations(roundings), PARITY_ORDER)
    assert relative_error(out, ref["output"]) <= bound and relative_error(via_entry_point, ref["output"]) <= bound


def test_heun_converges_at_second_order_to_the_exact_solution():
    teacher = gaussian_teacher(torch.randn(3, 4, 4, dtype=torch.float64) * 0.3, 0.5)
    latents = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    exact = teacher.ode_solution(latents * 80, 80.0, 0.0)
    errors = [(edm_sampler(teacher, latents, num_steps=n) - exact).abs().max().item() for n in (32, 64, 128)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(3.6 < r < 4.6 for r in ratios), ratios  # measured: 4.29, 4.16


class CountingDenoiser(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.sigmas = inner, 0, []

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        self.sigmas.append(float(torch.as_tensor(sigma).flatten()[0]))
        return self.inner(x, sigma, class_labels)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_with_its_documented_cost(sampler):
    teacher = CountingDenoiser(GaussianMixtureDenoiser(torch.rand(3, 3, 4, 4) * 2 - 1, stds=0.1))
    noise = torch.randn(5, 3, 4, 4)
    ts = "0,3,5" if sampler == "multistep" else ""
    out = sample(teacher, noise, sampler, steps=6, s_churn=2.0 if sampler in ("heun", "dpm") else 0.0, ts=ts)
    assert out.shape == noise.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert teacher.calls == network_calls(sampler, 6, ts="0,3,5")
    assert network_calls("heun_deter", 35) == 69 and network_calls("heun_deter", 18) == 35


def test_stochastic_heun_uses_churn_and_is_reproducible():
    teacher = GaussianMixtureDenoiser(torch.rand(3, 3, 4, 4) * 2 - 1, stds=0.1)
    noise = torch.randn(2, 3, 4, 4)

    def seeded(seed):
        generator = torch.Generator().manual_seed(seed)
        return lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)

    run = lambda seed, churn: sample(teacher, noise, "heun", steps=8, s_churn=churn, randn_like=seeded(seed))
    assert torch.equal(run(0, 10.0), run(0, 10.0))
    assert not torch.equal(run(0, 10.0), run(1, 10.0))
    assert torch.equal(run(0, 0.0), sample(teacher, noise, "heun_deter", steps=8))


def test_oneshot_calls_the_student_once_at_sigma_min():
    student = CountingDenoiser(lambda z, t, labels=None: z / 80)
    noise = torch.randn(3, 3, 4, 4)
    for steps in (1, 35):
        student.sigmas.clear()
        out = sample(student, noise, "oneshot", steps=steps, sigma_min=0.002)
        # σ_min as a float32 number; z = 80·noise and back: two roundings
        assert student.sigmas == [pytest.approx(0.002, rel=rounding_bound(1), abs=0)]
        assert relative_error(out, noise) <= rounding_bound(2)


def test_bad_sampler_arguments():
    denoiser = gaussian_teacher(torch.zeros(3, 4, 4), 0.5)
    with pytest.raises(ValueError, match="valid: heun_deter, heun, euler, dpm, ancestral, onestep, oneshot"):
        sample(denoiser, torch.randn(1, 3, 4, 4), "heun2")
    with pytest.raises(ValueError, match="--steps must be a positive integer"):
        sample(denoiser, torch.randn(1, 3, 4, 4), "euler", steps=0)
    with pytest.raises(ValueError, match="--ts must be comma-separated integers"):
        sample(denoiser, torch.randn(1, 3, 4, 4), "multistep", steps=10, ts="0,a")


# --- The stochastic samplers against the published algorithms, restated here with the noise injected, so that
# the comparison is exact up to float64 rounding: EDM's Algorithm 2 (Karras et al. 2022), k-diffusion's DPM-2 and
# Euler-ancestral as the original's karras_diffusion.py writes them (DPM-2's midpoint on every step, the last one
# included; noise drawn on every step), and consistency models' multistep sampler.

class InjectedNoise:
    """randn_like that hands out prescribed unit-normal tensors in order, and records how many it gave."""

    def __init__(self, shape, count=64, seed=5):
        generator = torch.Generator().manual_seed(seed)
        self.draws = [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(count)]
        self.used = 0

    def __call__(self, x):
        draw = self.draws[self.used]
        self.used += 1
        return draw.to(x.dtype)


def _reference_denoise(denoiser, x, sigma):
    """The network sees float32, the state stays float64 (as EDM integrates)."""
    return denoiser(x.float(), torch.as_tensor(sigma, dtype=torch.float64), None).double()


def _reference_grid(steps, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM's t_i = (σ_max^(1/ρ) + i/(N−1)(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, then t_N = 0."""
    return [(sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
            for i in range(steps)] + [0.0]


def reference_heun(denoiser, x, steps, s_churn, s_tmin, s_tmax, s_noise, noise):
    t = _reference_grid(steps)
    for i in range(steps):
        gamma = min(s_churn / steps, 2 ** 0.5 - 1) if s_tmin <= t[i] <= s_tmax else 0.0
        t_hat = t[i] * (1 + gamma)
        x_hat = x + (t_hat ** 2 - t[i] ** 2) ** 0.5 * s_noise * noise(x)
        d = (x_hat - _reference_denoise(denoiser, x_hat, t_hat)) / t_hat
        x = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_next = (x - _reference_denoise(denoiser, x, t[i + 1])) / t[i + 1]
            x = x_hat + (t[i + 1] - t_hat) * (d + d_next) / 2
    return x


def reference_dpm2(denoiser, x, steps, s_churn, s_tmin, s_tmax, s_noise, noise):
    s = _reference_grid(steps)
    for i in range(steps):
        gamma = min(s_churn / steps, 2 ** 0.5 - 1) if s_tmin <= s[i] <= s_tmax else 0.0
        eps = noise(x) * s_noise
        sigma_hat = s[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat ** 2 - s[i] ** 2) ** 0.5
        d = (x - _reference_denoise(denoiser, x, sigma_hat)) / sigma_hat
        sigma_mid = ((sigma_hat ** (1 / 3) + s[i + 1] ** (1 / 3)) / 2) ** 3
        x_mid = x + d * (sigma_mid - sigma_hat)
        d_mid = (x_mid - _reference_denoise(denoiser, x_mid, sigma_mid)) / sigma_mid
        x = x + d_mid * (s[i + 1] - sigma_hat)
    return x


def reference_euler_ancestral(denoiser, x, steps, noise):
    s = _reference_grid(steps)
    for i in range(steps):
        denoised = _reference_denoise(denoiser, x, s[i])
        sigma_up = min(s[i + 1], (s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2) ** 0.5)
        sigma_down = (s[i + 1] ** 2 - sigma_up ** 2) ** 0.5
        x = x + (x - denoised) / s[i] * (sigma_down - s[i])
        x = x + noise(x) * sigma_up
    return x


def reference_multistep(denoiser, x, ts, steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, noise=None):
    level = lambda i: (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    for i in range(len(ts) - 1):
        x0 = _reference_denoise(denoiser, x, level(ts[i]))
        next_t = min(max(level(ts[i + 1]), sigma_min), sigma_max)
        x = x0 + noise(x) * (next_t ** 2 - sigma_min ** 2) ** 0.5
    return x


def _mixture():
    return GaussianMixtureDenoiser(torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1, stds=0.1)


def _agree(ours, reference):
    # float64 integration of float32 network calls: the same float32 inputs in both, so only float64 rounding
    # of differently ordered arithmetic separates them
    assert relative_error(ours, reference.float()) <= rounding_bound(8), relative_error(ours, reference.float())


CHURN_CASES = [dict(s_churn=40.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0),   # churn capped at √2 − 1
               dict(s_churn=2.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.3)]             # window and noise inflation


@pytest.mark.parametrize("options", CHURN_CASES)
@pytest.mark.parametrize("sampler,reference", [("heun", reference_heun), ("dpm", reference_dpm2)])
def test_churn_samplers_match_the_published_algorithms(sampler, reference, options):
    denoiser, latents = _mixture(), torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    ours = sample(denoiser, latents, sampler, steps=8, randn_like=InjectedNoise(latents.shape), **options)
    expected = reference(denoiser, latents.double() * 80, 8, noise=InjectedNoise(latents.shape), **options)
    _agree(ours, expected)
    # and the options matter: without churn, or with other noise, other images
    plain = sample(denoiser, latents, sampler, steps=8, randn_like=InjectedNoise(latents.shape))
    assert relative_error(plain, ours) > 1e-3


def test_euler_ancestral_matches_the_published_algorithm():
    denoiser, latents = _mixture(), torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    ours = sample(denoiser, latents, "ancestral", steps=6, randn_like=InjectedNoise(latents.shape))
    _agree(ours, reference_euler_ancestral(denoiser, latents.double() * 80, 6, InjectedNoise(latents.shape)))
    other_noise = sample(denoiser, latents, "ancestral", steps=6, randn_like=InjectedNoise(latents.shape, seed=6))
    assert relative_error(other_noise, ours) > 1e-3


@pytest.mark.parametrize("grid", [dict(), dict(sigma_min=0.01, sigma_max=40.0, rho=3.0)])
def test_multistep_matches_the_consistency_models_sampler(grid):
    denoiser, latents = _mixture(), torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    ours = sample(denoiser, latents, "multistep", steps=10, ts="0,4,9", randn_like=InjectedNoise(latents.shape), **grid)
    expected = reference_multistep(denoiser, latents.double() * grid.get("sigma_max", 80.0), [0, 4, 9], 10,
                                   noise=InjectedNoise(latents.shape), **grid)
    _agree(ours, expected)
    assert relative_error(ours, sample(denoiser, latents, "multistep", steps=10, ts="0,6,9", **grid)) > 1e-3


def test_deterministic_samplers_match_their_formulas():
    denoiser, latents = _mixture(), torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    x = latents.double() * 80
    _agree(sample(denoiser, latents, "heun_deter", steps=5), reference_heun(denoiser, x, 5, 0.0, 0.0, float("inf"),
                                                                            1.0, lambda x: torch.zeros_like(x)))
    s = _reference_grid(5)
    euler = x
    for i in range(5):
        euler = euler + (s[i + 1] - s[i]) * (euler - _reference_denoise(denoiser, euler, s[i])) / s[i]
    _agree(sample(denoiser, latents, "euler", steps=5), euler)
    _agree(sample(denoiser, latents, "onestep", steps=5), _reference_denoise(denoiser, x, 80.0))
    # progdist: Euler over the steps + 1 levels σ_max … σ_min, without the step to 0
    s = _reference_grid(6)[:-1]
    progdist = x
    for i in range(5):
        progdist = progdist + (s[i + 1] - s[i]) * (progdist - _reference_denoise(denoiser, progdist, s[i])) / s[i]
    _agree(sample(denoiser, latents, "progdist", steps=5), progdist)
    # one step at σ_max with a one-point grid: D(σ_max·ε; σ_max) whatever σ_min says
    _agree(sample(denoiser, latents, "heun_deter", steps=1, sigma_min=0.5), _reference_denoise(denoiser, x, 80.0))


def test_clip_denoised_clamps_every_denoiser_output_and_the_one_step_sample():
    student = lambda z, t, labels=None: z / 20  # a "student" whose one-step sample leaves [−1, 1]
    latents = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    clipped = sample(student, latents, "oneshot", clip_denoised=True)
    assert relative_error(clipped, (latents * 4).clamp(-1, 1)) <= rounding_bound(2) and clipped.abs().max() == 1
    assert relative_error(sample(student, latents, "oneshot", clip_denoised=False), latents * 4) <= rounding_bound(2)
    # Euler's last step returns the clamped denoiser output itself
    wild = lambda x, sigma, labels=None: 2 * torch.sign(x)
    assert torch.all(sample(wild, latents, "euler", steps=3, clip_denoised=True).abs() == 1)
    assert torch.all(sample(wild, latents, "euler", steps=3, clip_denoised=False).abs() == 2)
    # every call is clamped, not only the result: Heun's intermediate derivatives see the clamped outputs
    smooth = lambda x, sigma, labels=None: 1.2 * torch.tanh(x / (1 + sigma))
    clamped = lambda x, sigma, labels=None: smooth(x, sigma).clamp(-1, 1)
    ours = sample(smooth, latents, "heun_deter", steps=4, clip_denoised=True)
    zero = lambda x: torch.zeros_like(x)
    _agree(ours, reference_heun(clamped, latents.double() * 80, 4, 0.0, 0.0, float("inf"), 1.0, zero).clamp(-1, 1))
    only_the_result = sample(smooth, latents, "heun_deter", steps=4, clip_denoised=False).clamp(-1, 1)
    assert relative_error(ours, only_the_result) > 1e-3


@pytest.mark.parametrize("steps", [2, 3, 10, 40])
def test_the_multistep_error_suggests_indices_its_own_check_accepts(steps):
    import re

    from pid_diffusion.samplers import check_sampler_options

    with pytest.raises(ValueError, match="needs --ts") as refused:
        check_sampler_options("multistep", steps=steps, ts="")
    example = re.search(r"e\.g\. ([0-9,]+) for", str(refused.value)).group(1)
    check_sampler_options("multistep", steps=steps, ts=example)  # accepted as suggested


def test_churn_options_given_to_a_sampler_that_ignores_them_are_refused():
    from pid_diffusion.samplers import check_sampler_options

    for sampler in ("euler", "heun_deter", "ancestral", "multistep"):
        with pytest.raises(ValueError, match=f"--s_churn 5: stochastic churn is read by --sampler heun or dpm only; "
                                             f"--sampler {sampler} would ignore it"):
            check_sampler_options(sampler, steps=10, s_churn=5.0, ts="0,5,9" if sampler == "multistep" else "")
    check_sampler_options("heun", steps=10, s_churn=5.0, s_noise=1.007)  # read: accepted
    check_sampler_options("euler", steps=10)  # the defaults are not "given"


def test_a_class_conditional_model_sampled_without_labels_is_refused():
    network = EDMPrecond(img_resolution=8, img_channels=3, label_dim=3, model_type="SongUNet", model_channels=16,
                         channel_mult=[1], num_blocks=1, attn_resolutions=[])
    noise = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"class-conditional \(3 classes\): give class_labels, one-hot \[N, 3\]"):
            sample(network, noise, "euler", steps=2)
        labelled = sample(network, noise, "euler", steps=2, class_labels=torch.eye(3)[[0, 2]])
        unlabelled = sample(network, noise, "euler", steps=2, class_labels=torch.zeros(2, 3))  # said explicitly
    assert labelled.shape == unlabelled.shape == noise.shape
