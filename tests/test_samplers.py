import pytest
import torch

from conftest import relative_error
from tolerances import between_implementations, network_roundings, rounding_bound, sampler_roundings
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
    assert relative_error(out, ref["output"]) <= between_implementations(roundings)
    assert relative_error(via_entry_point, ref["output"]) <= between_implementations(roundings)


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
    out = sample(teacher, noise, sampler, steps=6, s_churn=2.0, ts=ts)
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


def test_clip_denoised_clamps_like_the_original():
    wild = lambda x, sigma, labels=None: 3 * torch.ones_like(x)
    out = sample(wild, torch.randn(2, 3, 4, 4), "euler", steps=4, clip_denoised=True)
    assert out.max() <= 1 and out.min() >= -1


def test_bad_sampler_arguments():
    denoiser = gaussian_teacher(torch.zeros(3, 4, 4), 0.5)
    with pytest.raises(ValueError, match="valid: heun_deter, heun, euler, dpm, ancestral, onestep, oneshot"):
        sample(denoiser, torch.randn(1, 3, 4, 4), "heun2")
    with pytest.raises(ValueError, match="--steps must be a positive integer"):
        sample(denoiser, torch.randn(1, 3, 4, 4), "euler", steps=0)
    with pytest.raises(ValueError, match="--ts must be comma-separated integers"):
        sample(denoiser, torch.randn(1, 3, 4, 4), "multistep", steps=10, ts="0,a")
