"""Self-contained oracles: every formula PID trains by, written out here and compared with the library
on numbers small enough to follow, so that CI (which has no ../shared fixtures) catches a wrong
constant, a wrong argument or an ignored option. Each option is shown to matter: the same value gives
the formula's result, and another value another result."""

import math

import pytest
import torch

from conftest import small_run_config, tiny_song_config
from tolerances import per_sample_distance_difference_bound, per_sample_norm, implied_denoised_rounding, rounding_bound
from pid_diffusion.ema import EMA
from pid_diffusion.losses import pid_loss
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.precond import PIDStudent
from pid_diffusion.teachers import GaussianMixtureDenoiser
from pid_diffusion.trainer import PIDTrainer, num_scales_at

SIGMA_DATA = 0.5  # EDM's σ_data, written out: the oracles do not import the library's constants
WEIGHTS = {  # λ(t) of the official --weight_schedule names, from snr = 1/t²
    "snr": lambda t: t ** -2,
    "snr+1": lambda t: t ** -2 + 1,
    "karras": lambda t: t ** -2 + SIGMA_DATA ** -2,
    "truncated-snr": lambda t: torch.clamp(t ** -2, min=1.0),
    "uniform": lambda t: torch.ones_like(t),
}
DISTANCES = {  # per-sample mean over C, H, W; pseudo-Huber over the whole image, c = 0.00054·√(values per image)
    "l2": lambda d: d.flatten(1).square().mean(1),
    "l1": lambda d: d.flatten(1).abs().mean(1),
    "pseudo_huber": lambda d: (d.flatten(1).square().sum(1) + 0.00054 ** 2 * d[0].numel()).sqrt()
    - 0.00054 * d[0].numel() ** 0.5,
}


def rho_grid(num_scales, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, i = 0 … N−1, in float64."""
    return [(sigma_max ** (1 / rho) + i / (num_scales - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
            for i in range(num_scales)]


def implied(x_t, x_next, t, t_next):
    """x − t·dx/dt with dx/dt = (x_t − x_t')/(t − t')."""
    t, t_next = t.reshape(-1, 1, 1, 1), t_next.reshape(-1, 1, 1, 1)
    return x_t - t * (x_t - x_next) / (t - t_next)


class LinearNet(torch.nn.Module):
    """F(x, label) = a·x + b·label + c: a "network" whose output is computed on paper."""

    def __init__(self, a=0.7, b=-0.3, c=0.05):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (a, b, c))

    def forward(self, x, noise_labels, class_labels=None):
        return self.a * x + self.b * noise_labels.reshape(-1, 1, 1, 1) + self.c


def gaussian_mixture(seed=0, components=3):
    generator = torch.Generator().manual_seed(seed)
    return GaussianMixtureDenoiser(torch.rand(components, 3, 4, 4, generator=generator, dtype=torch.float64) - 0.5,
                                   stds=0.2)


def test_student_output_is_the_blend_of_noise_and_network_with_the_log_label():
    sigma_max = 80.0
    student = PIDStudent(LinearNet(), sigma_max=sigma_max)
    z = torch.randn(4, 3, 4, 4, dtype=torch.float64) * sigma_max
    t = torch.tensor([80.0, 20.0, 1.0, 0.002])
    got = student(z, t)
    t64 = t.double().reshape(-1, 1, 1, 1)
    network = 0.7 * z / math.sqrt(SIGMA_DATA ** 2 + sigma_max ** 2) - 0.3 * t64.log() / 4 + 0.05
    expected = t64 / sigma_max * z + (1 - t64 / sigma_max) * network
    # t/σ_max and ln(t)/4 are float32 (the student's noise-level precision); the rest is float64
    assert per_sample_norm(got - expected).max() <= rounding_bound(4) * per_sample_norm(expected).max()
    # another σ_max is another input scale and blend
    other = PIDStudent(LinearNet(), sigma_max=40.0)(z, t)
    assert per_sample_norm(other - got)[1:].min() > 100 * rounding_bound(4) * per_sample_norm(expected).max()


@pytest.mark.parametrize("batched_student", [False, True])
@pytest.mark.parametrize("loss_norm", ["l2", "l1", "pseudo_huber"])
@pytest.mark.parametrize("weight_schedule", list(WEIGHTS))
def test_pid_loss_is_the_weighted_distance_of_the_implied_image_to_the_teachers(loss_norm, weight_schedule,
                                                                                 batched_student):
    student, teacher = PIDStudent(LinearNet()), gaussian_mixture()
    z = torch.randn(5, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 80
    grid = rho_grid(10)
    t = torch.tensor([grid[0], grid[3], grid[6], grid[8], grid[9]], dtype=torch.float32)
    t_next = torch.tensor([grid[1], grid[4], grid[7], grid[9], grid[8]], dtype=torch.float32)
    got = pid_loss(student, teacher, z, t, t_next, loss_norm=loss_norm, weight_schedule=weight_schedule,
                   batched_student=batched_student)
    with torch.no_grad():
        x_t, x_next = student(z, t), student(z, t_next)
        difference = implied(x_t, x_next, t.double(), t_next.double()) - teacher(x_t, t)  # D at (x_t, t)
    expected = WEIGHTS[weight_schedule](t.double()) * DISTANCES[loss_norm](difference)
    assert torch.all((got.detach() - expected).abs() <= rounding_bound(8) * expected)
    # the same loss with the teacher at the partner level, or summed over pixels, is far from it
    with torch.no_grad():
        wrong_level = implied(x_t, x_next, t.double(), t_next.double()) - teacher(x_next, t_next)
    wrong = WEIGHTS[weight_schedule](t.double()) * DISTANCES[loss_norm](wrong_level)
    assert torch.all((wrong - expected).abs() > 1e-3 * expected)


def test_the_three_point_difference_is_exact_on_a_quadratic_trajectory_where_the_two_point_one_errs():
    """x(t) = A + B·t + C·t²: x − t·dx/dt = A − C·t² exactly, at every level of the ρ-grid with its partner and third
    levels (central inside the grid, one-sided at σ_max and σ_min)."""
    from pid_diffusion.losses import implied_denoised, implied_denoised_second_order
    from pid_diffusion.schedules import pid_partner_index, pid_third_index

    generator = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(1, 2, 3, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    grid = torch.tensor(rho_grid(8), dtype=torch.float64)
    index = torch.arange(8)
    t, t_a, t_b = grid, grid[pid_partner_index(index, 8)], grid[pid_third_index(index, 8)]
    assert pid_third_index(index, 8).tolist() == [2, 0, 1, 2, 3, 4, 5, 5]  # i−1 inside, i+2 and i−2 at the ends

    def x(level):
        level = level.reshape(-1, 1, 1, 1)
        return a + b * level + c * level ** 2

    truth = a - c * t.reshape(-1, 1, 1, 1) ** 2
    second = implied_denoised_second_order(x(t), x(t_a), x(t_b), t, t_a, t_b)
    first = implied_denoised(x(t), x(t_a), t, t_a)
    scale = truth.abs().amax(dim=(1, 2, 3))
    assert torch.all((second - truth).abs().amax(dim=(1, 2, 3)) <= 1e-9 * scale)
    assert torch.all((first - truth).abs().amax(dim=(1, 2, 3)) > 1e-6 * scale)  # O(h) of the two-point difference
    with pytest.raises(ValueError, match="at least 3 noise levels"):
        pid_third_index(index[:2], 2)


@pytest.mark.parametrize("batched_student", [False, True])
def test_pid_loss_with_a_third_level_takes_the_three_point_difference(batched_student):
    from pid_diffusion.losses import implied_denoised_second_order

    student, teacher = PIDStudent(LinearNet()), gaussian_mixture()
    z = torch.randn(4, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 80
    grid = rho_grid(10)
    t, t_next, t_third = (torch.tensor([grid[i] for i in indices], dtype=torch.float32)
                          for indices in ((0, 3, 6, 9), (1, 4, 7, 8), (2, 2, 5, 7)))
    got = pid_loss(student, teacher, z, t, t_next, loss_norm="l2", batched_student=batched_student, t_third=t_third)
    first = pid_loss(student, teacher, z, t, t_next, loss_norm="l2", batched_student=batched_student)
    with torch.no_grad():
        x_t, x_next, x_third = student(z, t), student(z, t_next), student(z, t_third)
        implied_image = implied_denoised_second_order(x_t, x_next, x_third, t.double(), t_next.double(), t_third.double())
        expected = DISTANCES["l2"](implied_image - teacher(x_t, t))
    assert torch.all((got.detach() - expected).abs() <= rounding_bound(8) * expected)
    assert torch.all((first.detach() - expected).abs() > 1e-4 * expected)  # without it: the two-point difference


def test_a_second_order_run_draws_the_first_order_run_s_levels_and_their_third(teacher_path, tmp_path):
    first = PIDTrainer(small_run_config(teacher_path, tmp_path / "first", start_scales=5))
    second = PIDTrainer(small_run_config(teacher_path, tmp_path / "second", start_scales=5,
                                         finite_difference="second"))
    as_float32 = [float(torch.tensor(s, dtype=torch.float32)) for s in rho_grid(5)]
    thirds = {}
    for step in range(20):
        *same, t_third = second.step_inputs(step)
        *reference, none = first.step_inputs(step)
        assert none is None and all(torch.equal(x, y) for x, y in zip(same, reference) if x is not None)
        thirds.update(zip(same[1].tolist(), t_third.tolist()))
    assert thirds == {as_float32[0]: as_float32[2], as_float32[1]: as_float32[0], as_float32[2]: as_float32[1],
                      as_float32[3]: as_float32[2], as_float32[4]: as_float32[2]}
    first.close()
    second.close()
    with pytest.raises(ValueError, match="--finite_difference second needs at least 3 noise levels"):
        PIDTrainer(small_run_config(teacher_path, tmp_path / "two", start_scales=2, finite_difference="second"))


def test_the_lognormal_level_draw_follows_the_lognormal_mass_between_a_level_and_its_partner():
    from pid_diffusion.schedules import level_probabilities, sample_pid_times

    grid = rho_grid(5)
    cdf = [math.erf((math.log(sigma) + 1.1) / (math.sqrt(2) * 2.0)) for sigma in grid]
    masses = [cdf[i] - cdf[i + 1] for i in range(4)] + [cdf[3] - cdf[4]]  # σ_min shares its partner's interval
    expected = torch.tensor([m / sum(masses) for m in masses], dtype=torch.float64)
    assert torch.allclose(level_probabilities(5), expected, rtol=1e-12, atol=0)
    indices, t, t_next = sample_pid_times(40_000, 5, generator=torch.Generator().manual_seed(0), distribution="lognormal")
    frequencies = torch.bincount(indices, minlength=5).double() / 40_000
    assert torch.all((frequencies - expected).abs() <= 4 * (expected * (1 - expected) / 40_000).sqrt() + 1e-4)
    uniform = sample_pid_times(40_000, 5, generator=torch.Generator().manual_seed(0))[0]
    assert (torch.bincount(uniform, minlength=5).double() / 40_000 - 0.2).abs().max() < 0.01  # the paper's draw
    with pytest.raises(ValueError, match="unknown level distribution 'normal'"):
        sample_pid_times(4, 5, distribution="normal")


def test_a_lognormal_run_draws_its_levels_by_seed(teacher_path, tmp_path):
    def levels(name, **options):
        trainer = PIDTrainer(small_run_config(teacher_path, tmp_path / name, start_scales=6, **options))
        drawn = torch.cat([trainer.step_inputs(step)[1] for step in range(10)])
        trainer.close()
        return drawn

    lognormal = levels("a", level_distribution="lognormal")
    assert torch.equal(lognormal, levels("b", level_distribution="lognormal"))  # the same seed, the same levels
    assert not torch.equal(lognormal, levels("c", level_distribution="lognormal", seed=5))
    assert not torch.equal(lognormal, levels("d"))  # the uniform draw is another


@pytest.fixture(scope="module")
def trainers(teacher_path, tmp_path_factory):
    """PID trainers on the tiny teacher, one per loss norm and weighting (separate student calls, as the
    oracle makes them, so that the comparison is of formulas, not of batched convolutions)."""
    made = {}
    for loss_norm, weight_schedule in (("l2", "karras"), ("l1", "snr"), ("l2", "truncated-snr"), ("l1", "snr+1"),
                                       ("l2", "uniform")):
        folder = tmp_path_factory.mktemp(f"{loss_norm}-{weight_schedule}")
        made[loss_norm, weight_schedule] = PIDTrainer(small_run_config(
            teacher_path, folder, loss_norm=loss_norm, weight_schedule=weight_schedule, batched_student=False,
            start_scales=6))
    yield made
    for trainer in made.values():
        trainer.close()


@pytest.mark.parametrize("loss_norm,weight_schedule", [("l2", "karras"), ("l1", "snr"), ("l2", "truncated-snr"),
                                                       ("l1", "snr+1"), ("l2", "uniform")])
def test_trainer_loss_follows_loss_norm_and_weight_schedule(trainers, loss_norm, weight_schedule):
    trainer = trainers[loss_norm, weight_schedule]
    z, t, t_next, labels, t_third = trainer.step_inputs(0)
    assert t_third is None  # the paper's first-order difference
    with torch.no_grad():
        got = trainer.batch_losses(trainer.model, (z, t, t_next, labels, None))
        x_t, x_next = trainer.student(z, t, labels), trainer.student(z, t_next, labels)
        target = trainer.teacher(x_t, t, labels)
    difference = implied(x_t.double(), x_next.double(), t.double(), t_next.double()) - target.double()
    distance = DISTANCES[loss_norm](difference)
    bound = per_sample_distance_difference_bound(difference, implied_denoised_rounding(x_t, x_next, t, t_next),
                                                 loss_norm)
    weight = WEIGHTS[weight_schedule](t.double())
    assert torch.all((got.double() - weight * distance).abs() <= weight * bound + rounding_bound(3) * weight * distance)
    # the other norm gives another loss
    other = DISTANCES["l1" if loss_norm == "l2" else "l2"](difference)
    assert torch.all((other - distance).abs() > 10 * bound)


def test_training_draws_every_level_of_its_grid_and_its_partner(teacher_path, tmp_path):
    for name, grid_options in (("default", {}), ("other", dict(sigma_min=0.01, sigma_max=40.0, rho=3.0))):
        trainer = PIDTrainer(small_run_config(teacher_path, tmp_path / name, start_scales=5, **grid_options))
        grid = rho_grid(5, **grid_options)
        drawn = {}
        for step in range(30):
            _, t, t_next, _, _ = trainer.step_inputs(step)
            z = trainer.step_inputs(step)[0]
            assert z.abs().max() > 0.5 * trainer.config.sigma_max  # z = σ_max·ε
            for level, partner in zip(t.tolist(), t_next.tolist()):
                drawn[level] = partner
        trainer.close()
        as_float32 = [float(torch.tensor(s, dtype=torch.float32)) for s in grid]
        assert sorted(drawn, reverse=True) == as_float32  # every level, σ_max and σ_min included, nothing else
        partners = {as_float32[i]: as_float32[i + 1] for i in range(4)} | {as_float32[4]: as_float32[3]}
        assert drawn == partners


def test_progressive_scale_mode_grows_the_grid_by_the_square_root_schedule(teacher_path, tmp_path):
    config = small_run_config(teacher_path, tmp_path, scale_mode="progressive", start_scales=2, end_scales=20,
                              total_training_steps=100)
    expected = lambda k: max(math.ceil(math.sqrt(k / 100 * (21 ** 2 - 2 ** 2) + 2 ** 2) - 1), 1) + 1
    assert [num_scales_at(config, k) for k in (0, 1, 25, 50, 99)] == [expected(k) for k in (0, 1, 25, 50, 99)]
    assert expected(0) == 2 and expected(99) == 21
    trainer = PIDTrainer(config)
    for step in (0, 99):
        levels = {float(v) for k in range(6) for v in trainer.step_inputs(step)[1]}
        grid = {float(torch.tensor(s, dtype=torch.float32)) for s in rho_grid(expected(step))}
        assert levels <= grid and (len(levels) > 2 if step else levels == grid)
    trainer.close()
    fixed = small_run_config(teacher_path, tmp_path / "fixed", start_scales=7, end_scales=20, total_training_steps=100)
    assert {num_scales_at(fixed, k) for k in (0, 50, 99)} == {7}


def _first_update(trainer):
    before = [p.detach().clone() for p in trainer.student.net.parameters()]
    trainer.train_step()
    grads = [p.grad.detach().clone() for p in trainer.student.net.parameters()]
    after = [p.detach().clone() for p in trainer.student.net.parameters()]
    return before, grads, after


@pytest.mark.parametrize("optimizer,lr,weight_decay,eps", [("radam", 1e-3, 0.0, 1e-8), ("radam", 3e-3, 0.5, 1e-8),
                                                           ("adam", 1e-3, 0.0, 1e-8), ("adam", 2e-3, 0.5, 1e-2)])
def test_first_update_is_the_optimizers_formula(teacher_path, tmp_path, optimizer, lr, weight_decay, eps):
    """PyTorch's first step with L2 weight decay g' = g + wd·θ and betas (0.9, 0.999): RAdam's is unrectified,
    θ − lr·g'; Adam's is θ − lr·g'/(|g'| + ε) (bias-corrected moments g' and g'²)."""
    trainer = PIDTrainer(small_run_config(teacher_path, tmp_path, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                                          opt_eps=eps))
    before, grads, after = _first_update(trainer)
    trainer.close()
    for theta, g, new in zip(before, grads, after):
        g = g.double() + weight_decay * theta.double()
        step = lr * g if optimizer == "radam" else lr * g / (g.abs() + eps)
        expected = theta.double() - step
        # the update's few roundings, and the new weight's own float32 rounding
        tolerance = rounding_bound(6) * step.abs() + torch.finfo(torch.float32).eps * expected.abs()
        assert torch.all((new.double() - expected).abs() <= tolerance)


def test_learning_rate_decays_linearly_over_lr_anneal_steps(teacher_path, tmp_path):
    rates = {}
    for anneal in (0, 4):
        trainer = PIDTrainer(small_run_config(teacher_path, tmp_path / str(anneal), lr=1e-3, lr_anneal_steps=anneal,
                                              total_training_steps=6))
        rates[anneal] = []
        for _ in range(6):
            trainer.train_step()
            rates[anneal].append(trainer.optimizer.param_groups[0]["lr"])
        trainer.close()
    assert rates[0] == [1e-3] * 6
    assert rates[4] == pytest.approx([1e-3 * (1 - min(k / 4, 1)) for k in range(1, 7)], abs=1e-18)


def test_ema_is_the_average_formula_over_three_steps():
    module = torch.nn.Linear(2, 2)
    ema = EMA(module, (0.5, 0.9))
    thetas = [module.weight.detach().clone()]
    for k in range(3):
        with torch.no_grad():
            module.weight.add_(torch.full_like(module.weight, 1.0 + k))
        ema.update()
        thetas.append(module.weight.detach().clone())
    for rate in (0.5, 0.9):
        # ema_k = r·ema_{k−1} + (1 − r)·θ_k from ema_0 = θ_0
        expected = rate ** 3 * thetas[0] + (1 - rate) * (rate ** 2 * thetas[1] + rate * thetas[2] + thetas[3])
        assert torch.allclose(ema.state_dict(rate)["weight"], expected, rtol=rounding_bound(6), atol=0)


def test_trainer_saves_each_ema_rate_by_the_formula(teacher_path, tmp_path):
    trainer = PIDTrainer(small_run_config(teacher_path, tmp_path, ema_rate="0.5,0.9", total_training_steps=3,
                                          save_interval=3))
    thetas = [{k: v.clone() for k, v in trainer.student.net.state_dict().items()}]
    for _ in range(3):
        trainer.train_step()
        thetas.append({k: v.clone() for k, v in trainer.student.net.state_dict().items()})
    trainer.save()
    trainer.close()
    for rate in (0.5, 0.9):
        saved = torch.load(tmp_path / f"ema_{rate}_000003.pt", weights_only=True)
        for key, value in saved.items():
            expected = (rate ** 3 * thetas[0][key].double() + (1 - rate) * (
                rate ** 2 * thetas[1][key].double() + rate * thetas[2][key].double() + thetas[3][key].double()))
            scale = max(float(thetas[k][key].abs().max()) for k in range(4))
            assert (value.double() - expected).abs().max() <= rounding_bound(6) * scale, (rate, key)
        raw = torch.load(tmp_path / "model000003.pt", weights_only=True)
        moved = [k for k in raw if not torch.equal(thetas[3][k], thetas[0][k])]
        assert moved and all(not torch.equal(saved[k], raw[k]) for k in moved)


def test_student_dropout_is_the_flags(teacher_path, tmp_path):
    outputs = {}
    for dropout in (0.0, 0.3):
        trainer = PIDTrainer(small_run_config(teacher_path, tmp_path / str(dropout), dropout=dropout))
        rates = {m.dropout for m in trainer.student.net.modules() if hasattr(m, "dropout")}
        assert rates == {dropout}
        z, t, t_next, labels, _ = trainer.step_inputs(0)
        with torch.no_grad():  # in training mode: dropout draws another mask on every call
            outputs[dropout] = [trainer.student(z, t_next, labels) for _ in range(2)]
        trainer.close()
    assert torch.equal(*outputs[0.0])
    assert not torch.equal(*outputs[0.3])


def test_dropout_masks_follow_the_seed(teacher_path, tmp_path):
    """Every random draw outside the step generator (here dropout's masks) follows --seed: the same seed the same
    masks, another seed others, on the same inputs."""
    inputs = PIDTrainer(small_run_config(teacher_path, tmp_path / "inputs")).step_inputs(0)
    outputs = []
    for run, seed in enumerate((7, 7, 8)):
        trainer = PIDTrainer(small_run_config(teacher_path, tmp_path / str(run), dropout=0.3, seed=seed))
        z, t, _, labels, _ = inputs
        with torch.no_grad():
            outputs.append(trainer.student(z, t, labels))
        trainer.close()
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_edm_denoiser_is_the_preconditioned_network():
    """EDM's D(x; σ) = c_skip·x + c_out·F(c_in·x, ¼ ln σ), c_skip = σ_d²/(σ² + σ_d²), c_out = σσ_d/√(σ² + σ_d²),
    c_in = 1/√(σ² + σ_d²) (Karras et al. 2022, Table 1), with a linear F."""
    denoiser = EDMPrecond(**tiny_song_config())
    denoiser.model = LinearNet(a=0.6, b=0.2, c=-0.1).float()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 5
    sigma = torch.tensor([0.01, 1.0, 50.0])
    with torch.no_grad():
        got = denoiser(x, sigma)
    s, d = sigma.double().reshape(-1, 1, 1, 1), SIGMA_DATA
    network = 0.6 * x.double() / (s ** 2 + d ** 2).sqrt() + 0.2 * s.log() / 4 - 0.1
    expected = d ** 2 / (s ** 2 + d ** 2) * x.double() + s * d / (s ** 2 + d ** 2).sqrt() * network
    assert per_sample_norm(got - expected).max() <= rounding_bound(10) * per_sample_norm(expected).max()
