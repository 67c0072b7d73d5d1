"""fp16's skip decided on the device (pid_diffusion/fp16_step.py): a speculative run, whose host queues the
next step before it knows whether this one overflowed, trains exactly what the host-decided run trains,
with overflows injected where the speculation must be undone. On CUDA (the GPU machine) the same tests
check the pinned flag and the host-side step counters."""

import collections
import csv

import pytest
import torch

from pid_diffusion.fp16_step import LossScale, Rollback
from pid_diffusion.trainer import PIDTrainer, TrainConfig
from test_speed_options import random_lpips_files
from test_trainer import MPIRUN, TINY_FLAGS, read_csv_column, run_script

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OVERFLOW_ABOVE = {2: 5.5, 3: 4.5, 5: 2.5, 7: 1.5}
"""Steps whose gradients are made infinite while log2 of the loss scale exceeds these (the scale starts at
6): a skip, a skip right after the step a speculated attempt followed, two skips in a row, and the step
before a checkpoint (7 → 8). A function of the scale, not of the attempt, since the speculative run makes
more attempts (those it discards)."""


def injected_run(teacher_path, folder, speculative, **overrides):
    """A fp16 run of 10 steps (checkpoints at 8 and 10, log lines at 4, 8 and 10) with OVERFLOW_ABOVE's overflows:
    its checkpoint state, its progress.csv without timings, and how often each step was attempted."""
    values = dict(teacher_model_path=teacher_path, log_dir=str(folder), global_batch_size=8, loss_norm="l2",
                  ema_rate="0.9,0.99", log_interval=4, save_interval=8, total_training_steps=10, lr=1e-3,
                  mixed_precision="fp16", speculative_step=speculative, dropout=0.1)
    values.update(overrides)
    trainer = PIDTrainer(TrainConfig(**values))
    trainer.log2_loss_scale = 6.0  # small enough for this network: only the injected overflows skip
    attempts, current = collections.Counter(), [None]
    real_inputs = trainer.step_inputs

    def counted_inputs(step):
        if torch.is_grad_enabled():  # an attempt (the checkpoint's probe runs without gradients)
            attempts[step] += 1
            current[0] = (step, attempts[step])
        return real_inputs(step)

    trainer.step_inputs = counted_inputs
    def overflow(gradient):  # decided on the device: no host read of the scale
        threshold = OVERFLOW_ABOVE.get(current[0][0], float("inf"))
        return gradient * torch.where(trainer.loss_scale.device_log2 > threshold, float("inf"), 1.0).to(gradient.dtype)

    next(trainer.student.net.parameters()).register_hook(overflow)
    trainer.run()
    state = dict(model={k: v.clone() for k, v in trainer.student.net.state_dict().items()},
                 ema={rate: [a.clone() for a in averages] for rate, averages in trainer.ema.averages.items()},
                 optimizer=trainer.optimizer.state_dict()["state"], scale=trainer.log2_loss_scale)
    trainer.close()
    with open(folder / "progress.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if k != "images_per_second"} for row in csv.DictReader(f)]
    return state, rows, attempts


def assert_same(a, b):
    assert a["scale"] == b["scale"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for rate in a["ema"] for x, y in zip(a["ema"][rate], b["ema"][rate]))
    assert a["optimizer"].keys() == b["optimizer"].keys()
    for index, state in a["optimizer"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"][index][name])), (index, name)


@pytest.mark.parametrize("loss_norm,microbatch", [("l2", -1), ("l1", 4), pytest.param("lpips", -1, marks=pytest.mark.skipif(
    DEVICE == "cpu", reason="VGG16 in float16 on a CPU takes minutes a step: LPIPS runs on the GPU machine"))])
def test_speculative_fp16_steps_train_what_host_decided_steps_train(teacher_path, tmp_path, loss_norm, microbatch):
    extra = random_lpips_files(tmp_path) if loss_norm == "lpips" else {}
    host, host_rows, host_attempts = injected_run(teacher_path, tmp_path / "host", False, loss_norm=loss_norm,
                                                  microbatch=microbatch, **extra)
    ahead, ahead_rows, ahead_attempts = injected_run(teacher_path, tmp_path / "ahead", True, loss_norm=loss_norm,
                                                     microbatch=microbatch, **extra)
    # the host-decided run retried each overflowing step; the speculative one also queued (and undid) the
    # step after each overflow that could be speculated past (never past a log line or a checkpoint: steps 4, 8)
    if loss_norm == "l2":  # only the injected overflows (l1's and LPIPS's gradients also overflow at 2^6)
        assert host_attempts == {step: 1 + {2: 1, 3: 1, 5: 2, 7: 1}.get(step, 0) for step in range(10)}
        assert [ahead_attempts[step] for step in range(10)] == [1, 1, 2, 3, 1, 3, 3, 2, 1, 1]
        assert host["scale"] == pytest.approx(6.0 - 5 + 10 * 1e-3)  # five skips, ten applied steps
    assert sum(ahead_attempts.values()) > sum(host_attempts.values()) > 10
    assert_same(host, ahead)
    assert host_rows == ahead_rows and len(host_rows) == 3


def test_a_skipped_step_changes_nothing_on_the_device(teacher_path, tmp_path):
    """The update itself ran (it is always queued) and was undone exactly: weights, EMA, the optimizer's
    moments and counters, the norms; the scale dropped by one on the device as on the host."""
    trainer = PIDTrainer(TrainConfig(teacher_model_path=teacher_path, log_dir=str(tmp_path), global_batch_size=4,
                                     loss_norm="l2", mixed_precision="fp16", ema_rate="0.9"))
    trainer.log2_loss_scale = 6.0
    _, applied = trainer.train_step()  # decided on the host: the optimizer had no state to copy
    assert applied and trainer.rollback is None
    before = ({k: v.clone() for k, v in trainer.student.net.state_dict().items()},
              [a.clone() for a in trainer.ema.averages[0.9]],
              {i: {k: torch.as_tensor(v).clone() for k, v in s.items()} for i, s in trainer.optimizer.state.items()},
              trainer.norm_totals.clone())
    hook = next(trainer.student.net.parameters()).register_hook(lambda gradient: gradient * float("nan"))
    _, applied = trainer.train_step()
    hook.remove()
    assert not applied and trainer.rollback is not None and trainer.step == 1
    assert trainer.log2_loss_scale == float(trainer.loss_scale.device_log2) == 6.0 + 1e-3 - 1
    weights, ema, optimizer, norms = before
    assert all(torch.equal(v, trainer.student.net.state_dict()[k]) for k, v in weights.items())
    assert all(torch.equal(a, b) for a, b in zip(ema, trainer.ema.averages[0.9]))
    assert all(torch.equal(v, torch.as_tensor(trainer.optimizer.state[i][k])) for i, s in optimizer.items()
               for k, v in s.items())
    assert torch.equal(norms, trainer.norm_totals)
    _, applied = trainer.train_step()  # and the next one applies: the state moves
    assert applied and trainer.step == 2
    assert not torch.equal(weights[next(iter(weights))], trainer.student.net.state_dict()[next(iter(weights))])
    trainer.close()


def test_rollback_is_exact_and_refuses_state_it_cannot_undo():
    parameter = torch.nn.Parameter(torch.tensor([1.0, -2.5, 3e-8]))
    optimizer = torch.optim.RAdam([parameter], lr=0.1, foreach=True)
    parameter.grad = torch.tensor([0.5, 0.25, -1.0])
    optimizer.step()
    rollback = Rollback(optimizer, [parameter], parameter.device)
    assert rollback.fits([parameter]) and not rollback.fits([parameter, torch.nn.Parameter(torch.zeros(1))])
    values = [t.clone() for t in rollback.tensors]
    for discarded in (1.0, 0.0):
        rollback.take()
        optimizer.step()
        moved = [t.clone() for t in rollback.tensors]
        rollback.restore(torch.tensor(discarded))
        expected = values if discarded else moved
        assert all(torch.equal(a, b) for a, b in zip(rollback.tensors, expected))
    assert not all(torch.equal(a, b) for a, b in zip(values, rollback.tensors))  # the kept update moved them
    optimizer.state[parameter]["extra"] = torch.zeros(2, device="meta")
    with pytest.raises(ValueError, match="keeps its state 'extra' on meta.*cannot be undone on the device"):
        Rollback(optimizer, [parameter], parameter.device)


def test_loss_scale_changes_by_the_rule_on_the_device_and_the_host():
    scale = LossScale(10.0, 1e-3, torch.device("cpu"))  # 1e-3 is not a float32 number: the device keeps doubles
    assert [float(x) for x in scale.factors()[0].reshape(1).tolist() + scale.factors()[1].tolist()] == [1024.0, 1 / 1024]
    no, yes = torch.tensor(False), torch.tensor(True)
    scale.update(no, None)  # applied: +growth
    scale.update(yes, None)  # its own overflow: −1
    scale.update(yes, yes)  # discarded behind an overflow: unchanged
    scale.update(no, yes)
    assert float(scale.device_log2) == 10.0 + 1e-3 - 1
    scale.resolved(True)
    scale.resolved(False)
    assert scale.log2 == 10.0 + 1e-3 - 1


@pytest.mark.skipif(MPIRUN is None, reason="no mpirun: install the mpich extra (pip install -e '.[mpich]')")
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                    reason="two processes under NCCL need two GPUs (one GPU is refused: dist.gpu_of_local_process)")
def test_two_processes_queue_ahead_as_they_decide_on_the_host(teacher_path, tmp_path):
    """Under mpirun -np 2 (DDP, the all-reduced gradients checked on each process) a speculative fp16 run
    trains what the host-decided one trains. fp16's first scale, 2^20, overflows on this network: the first
    steps are skipped on the host, the later ones queued ahead."""
    args = ["--teacher_model_path", teacher_path, *TINY_FLAGS, "--total_training_steps", "6", "--save_interval", "6",
            "--log_interval", "6", "--use_fp16", "True"]
    for speculative in (True, False):
        finished = run_script([*args, "--speculative_step", str(speculative)], tmp_path / str(speculative), processes=2)
        assert finished.returncode == 0, finished.stderr[-2000:]
    for name in ("model000006.pt", "ema_0.9_000006.pt", "ema_0.99_000006.pt"):
        a, b = (torch.load(tmp_path / str(s) / name, weights_only=True) for s in (True, False))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    scales = [read_csv_column(tmp_path / str(s) / "progress.csv", "lg_loss_scale") for s in (True, False)]
    assert scales[0] == scales[1] and float(scales[0][0]) < 19  # steps were skipped on the way


def test_gradients_that_overflow_at_every_scale_stop_the_run(teacher_path, tmp_path):
    """Skips halve the scale; once it is below float16's smallest number the retries could never end: stop."""
    from pid_diffusion.loop import TrainingDivergedError

    trainer = PIDTrainer(TrainConfig(teacher_model_path=teacher_path, log_dir=str(tmp_path), global_batch_size=4,
                                     loss_norm="l2", mixed_precision="fp16", ema_rate="0.9", total_training_steps=3,
                                     save_interval=3))
    next(trainer.student.net.parameters()).register_hook(lambda gradient: gradient * float("inf"))
    trainer.log2_loss_scale = -20.0
    with pytest.raises(TrainingDivergedError, match=r"overflow float16 at every loss scale down to 2\^-25"):
        trainer.run()
    trainer.close()


def test_train_steps_drives_the_steps_as_a_run_does(teacher_path, tmp_path):
    """What the benchmarks time: train_steps() queues fp16 steps ahead (outside run(), with no signal handlers)
    and trains what one train_step() after another trains."""
    def trainer_at(folder, speculative):
        trainer = PIDTrainer(TrainConfig(teacher_model_path=teacher_path, log_dir=str(folder), global_batch_size=4,
                                         loss_norm="l2", mixed_precision="fp16", ema_rate="0.9",
                                         speculative_step=speculative, log_interval=100))
        trainer.log2_loss_scale = 6.0
        return trainer

    ahead, stepped = trainer_at(tmp_path / "ahead", True), trainer_at(tmp_path / "stepped", False)
    queued = []
    real_queue = ahead._queue_attempt
    ahead._queue_attempt = lambda step, prior=None: queued.append(prior is not None) or real_queue(step, prior)
    ahead.train_steps(5)
    while stepped.step < 5:
        stepped.train_step()
    assert ahead.step == 5 and any(queued)  # some steps were queued ahead
    assert all(torch.equal(a, b) for a, b in zip(ahead.student.net.parameters(), stepped.student.net.parameters()))
    ahead.close()
    stepped.close()
