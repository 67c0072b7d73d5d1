"""The training loop that PID distillation and teacher training share: batch, optimizer, EMA,
micro-batches, mixed precision, DDP, compilation, logs, checkpoints and resume.

One process per device. Each step draws the *global* batch of its random inputs (noise, noise
levels, labels; for a teacher also the data indices) from a generator seeded by (seed, step) and
takes this process's slice, so a run is reproducible, survives resume bit for bit, and computes the
same step on 1 or 8 GPUs. Gradients of micro-batches are summed (the original's definition)
and averaged over processes by DDP. A trainer defines what it trains (`step_inputs(step)`,
`batch_losses(model, inputs)`) and its `run_kind`; `TrainingLoop` does the rest. What the run
folder holds, and how it is kept consistent, is pid_diffusion/run_folder.py's business.
"""

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
import warnings

import torch
from torch.nn.parallel import DistributedDataParallel

from . import dist
from .ema import EMA
from .families import load_strictly
from .files import UnreadableFileError
from .fp16_step import Attempt, LossScale, Rollback, optimizer_has_state, zero_if
from .log import PROGRESS_FILE, RunLogger, log_formats, prepare_log_dir
from .run_folder import (RunFolderLock, check_resumed_settings, check_run_kind, checkpoint_files, checkpoint_steps,
                         missing_checkpoint_files, read_checkpoint, read_run_config, remove_incomplete_steps,
                         remove_temporary_files, resume_step, write_checkpoint, write_run_config)
from .seeding import PROCESS, STEP, derived_seed, seeded_generator
from .settings import defining_settings, option, setting
from .speed import ONE_BUCKET, SpeedSettings

OPTIMIZERS = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}
ADAM_BETA1 = 0.9  # both optimizers run with PyTorch's default betas, as the original
FP16_INITIAL_LOG2_SCALE = 20.0
FP16_SMALLEST_LOG2_SCALE = -24
"""float16's smallest subnormal is 2^-24: a loss scale below it makes every scaled gradient zero."""
DIVERGENCE_FACTOR = 1e4
"""A run has diverged when a logged mean loss exceeds this many times the lowest logged mean so far (a slow
rise), or when the weights' loss on the next batch exceeds this many times the lowest logged mean or, before
the first log line, the largest step loss so far (huge but finite weights, which the next steps turn into
NaN): such weights are not saved."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite, or rose DIVERGENCE_FACTOR times above its lowest level: the run stops
    without saving those weights."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT stopped the run after a checkpoint was written; `exit_code` is 128 + signal."""

    def __init__(self, message, signal_number):
        super().__init__(message)
        self.exit_code = 128 + signal_number


class RunFolderError(RuntimeError):
    """The run folder cannot be used: another run holds it, or it cannot be written."""


@dataclasses.dataclass(kw_only=True)
class LoopConfig(SpeedSettings):
    """What every training loop takes: batch, optimizer, EMA, schedule of logs and checkpoints,
    precision and speed options."""
    HELP_GROUP = "the run: batch, optimizer, EMA, steps, logs, checkpoints, resuming"

    log_dir: str = setting()
    global_batch_size: int = option(2048, "images per step over all processes", defines_run=True)
    batch_size: int = option(-1, "images per step per process (-1 = global_batch_size / number of processes)")
    microbatch: int = option(-1, "gradient-accumulation chunk per process (-1 = whole batch); gradients are summed")
    lr: float = option(1e-4, "learning rate", defines_run=True)
    weight_decay: float = option(0.0, "weight decay", defines_run=True)
    lr_anneal_steps: int = option(0, "linear decay of the learning rate to 0 over this many steps (0 = constant)",
                                  defines_run=True)
    optimizer: str = option("radam", "radam or adam", defines_run=True)
    opt_eps: float = option(1e-8, "optimizer epsilon", defines_run=True)
    ema_rate: str = option("0.9999", "comma-separated EMA rates, e.g. 0.999,0.9999,0.99995", defines_run=True)
    log_interval: int = option(10, "log every this many steps")
    save_interval: int = option(10000, "checkpoint every this many steps (and at the end)")
    total_training_steps: int = option(600000, "stop after this many optimizer steps")
    resume_checkpoint: str = option("", "model%06d.pt to resume from (default: newest complete checkpoint in the run "
                                        "folder)")
    fp16_scale_growth: float = option(1e-3, "log2 loss-scale growth per fp16 step", defines_run=True)
    seed: int = option(0, "seed of the training noise: the global batch of a step depends only on (seed, step); the "
                          "sample grids and FIDs during training draw their noises from it too (0, as the original's "
                          "training; its sampling and FID scripts default to 42)", defines_run=True)
    allow_changed_settings: bool = option(False, "resume a run folder although settings that define the run (teacher, "
                                                 "network, loss, N, seed, optimizer and its lr, weight decay, ε and "
                                                 "annealing, fp16 scale growth, EMA rates, batch) differ; the change is "
                                                 "recorded in run_config.json and applied from the resumed step on")
    log_format: str = option("", "what the run logs to, comma-separated: stdout, log (log.txt), csv (progress.csv), "
                                 "tensorboard (event files in the run folder, with the sample grids; pip install -e "
                                 "'.[tensorboard]'); default: $OPENAI_LOG_FORMAT, else stdout,log,csv, as the "
                                 "original's logger")

    def choices(self):
        return dict(optimizer=OPTIMIZERS)

    def validate(self):
        for name, valid in self.choices().items():
            if getattr(self, name) not in valid:
                raise ValueError(f"--{name} {getattr(self, name)!r} is not supported; valid: {', '.join(valid)}")
        self.check_speed()
        for name in ("global_batch_size", "log_interval", "total_training_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("batch_size", "microbatch"):
            if getattr(self, name) < 1 and getattr(self, name) != -1:
                raise ValueError(f"--{name} must be positive, or -1 for the default, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"--lr must be a finite non-negative number, got {self.lr}")
        if self.lr / (1 - ADAM_BETA1) > torch.finfo(torch.float32).max:  # Adam's first step size: lr / (1 − β₁)
            raise ValueError(f"--lr must be below {torch.finfo(torch.float32).max * (1 - ADAM_BETA1):.3g} (the "
                             f"optimizer's first step overflows float32), got {self.lr}")
        if self.save_interval == 0 or self.save_interval < -1:
            raise ValueError("--save_interval must be positive, or -1 to save only at the end")
        if not (math.isfinite(self.opt_eps) and self.opt_eps > 0):
            raise ValueError(f"--opt_eps must be a positive number (the optimizer divides by it), got {self.opt_eps}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight_decay must be a finite non-negative number, got {self.weight_decay}")
        if self.lr_anneal_steps < 0:
            raise ValueError(f"--lr_anneal_steps must be 0 (constant) or positive, got {self.lr_anneal_steps}")
        ema_rates(self.ema_rate)
        log_formats(self.log_format)

    @property
    def ema_rates(self):
        return ema_rates(self.ema_rate)


def ema_rates(text):
    """The rates of an --ema_rate value, each in [0, 1) and listed once ("0.990" and "0.99" are one rate)."""
    try:
        rates = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--ema_rate must be comma-separated numbers, got {text!r}") from None
    outside = [rate for rate in rates if not 0.0 <= rate < 1.0]
    if outside:
        raise ValueError(f"--ema_rate {text!r}: every rate must lie in [0, 1), got {outside[0]}")
    if len(set(rates)) != len(rates):
        twice = next(rate for rate in rates if rates.count(rate) > 1)
        raise ValueError(f"--ema_rate {text!r} lists the rate {twice} twice; give each rate once")
    return rates


def make_optimizer(config, parameters, device):
    """RAdam/Adam; with `fused_optimizer` the multi-tensor (foreach) or fused CUDA kernels, which
    compute the same update as the per-parameter loop of the original."""
    options = dict(lr=config.lr, weight_decay=config.weight_decay, eps=config.opt_eps)
    if config.fused_optimizer and device.type == "cuda" and config.optimizer == "adam":
        options["fused"] = True
    else:
        options["foreach"] = bool(config.fused_optimizer)
    return OPTIMIZERS[config.optimizer](parameters, **options)


def per_process_batch(config, world_size):
    """(per-process batch, global batch); an error, not a warning, when it does not divide."""
    if config.batch_size > 0:
        return config.batch_size, config.batch_size * world_size
    if config.global_batch_size % world_size:
        raise ValueError(f"--global_batch_size {config.global_batch_size} does not divide over {world_size} "
                         f"processes; choose a multiple of {world_size} or set --batch_size per process")
    return config.global_batch_size // world_size, config.global_batch_size


class TrainingLoop:
    """Optimizer, EMA, micro-batches, mixed precision, DDP, compilation, logging, checkpoints and
    resume for any network trained by per-sample losses. A subclass builds its model and calls
    `start(model, network, network_config)`; it defines `step_inputs(step)` (this process's tensors,
    batch first, None allowed) and `batch_losses(model, inputs)` (per-sample losses)."""

    def __init__(self, config, dist_info=None):
        config.validate()
        self.config = config
        self.info = dist_info or dist.info()
        self.device = self.info.device
        self.batch, self.global_batch = per_process_batch(config, self.info.world_size)
        self.microbatch = config.microbatch if config.microbatch > 0 else self.batch
        if self.batch % self.microbatch:
            divisors = [d for d in range(1, self.batch + 1) if self.batch % d == 0]
            raise ValueError(f"--microbatch {self.microbatch} does not divide the {self.batch} images per process "
                             f"(uneven chunks would weight samples unequally); choose one of {divisors[:12]}")
        self.logger = RunLogger(config.log_dir, log_formats(config.log_format))
        self.saving = False  # a checkpoint is being written: stop signals wait for it
        self.stop_signal = None  # the signal noted while run() trains (train_steps() runs without handlers)
        self.notes = []  # what the run folder's log should say once the folder is taken
        if config.global_batch_size != self.global_batch:  # --batch_size per process decides; record what runs
            self.notes.append(f"--batch_size {config.batch_size} per process on {self.info.world_size} process(es) makes "
                              f"the global batch {self.global_batch} (not --global_batch_size {config.global_batch_size})")
            config.global_batch_size = self.global_batch
        if not config.ema_rates:
            self.notes.append("no EMA: --ema_rate is empty, so only the raw weights (model*.pt) are saved")
        self.lock = RunFolderLock(config.log_dir)
        # every random draw outside the step generator (initial weights, dropout) follows --seed and the rank
        torch.manual_seed(derived_seed(PROCESS, config.seed, self.info.rank))
        self.memory_format = config.memory_format(self.device.type)

    def starting(self, phase):
        """A line on the terminal (rank 0, with the stdout log format) before a phase of the start that may take
        seconds: the run folder, and its log.txt, are not taken yet."""
        if "stdout" in self.logger.formats:
            dist.print0(f"starting: {phase}")

    def start(self, module, network, network_config):
        """Train `network` (the weights saved in checkpoints) inside `module` (what the loss calls)."""
        try:
            self._take_run_folder()
            self._start(module, network, network_config)
        except BaseException:
            self.lock.release()
            raise

    def _take_run_folder(self):
        """Lock the run folder (rank 0; every process stops with its reason if that fails) and remove
        the debris of saves a crash interrupted."""
        problem, removed, incomplete = None, [], []
        if dist.is_main():
            try:
                prepare_log_dir(self.config.log_dir)
                self.lock.acquire()
                check_run_kind(self.config.log_dir, read_run_config(self.config.log_dir), self.run_kind)
                removed = remove_temporary_files(self.config.log_dir)
                incomplete = remove_incomplete_steps(self.config.log_dir)
            except (OSError, RuntimeError) as e:
                problem = str(e)
        problem = dist.broadcast_object(problem)
        if problem:
            raise RunFolderError(problem)
        if self.lock.previous_holder:
            self.logger.log(f"took over the lock of a run that ended without releasing it ({self.lock.previous_holder})")
        if removed:
            self.logger.log(f"removed {len(removed)} temporary file(s) of an interrupted save: {', '.join(removed)}")
        if incomplete:
            self.logger.log(f"removed {len(incomplete)} file(s) of checkpoints whose save was interrupted before their "
                            f"model file was written (not resumable, not evaluable): {', '.join(incomplete)}")
        for note in self.notes:
            self.logger.log(note)

    def _start(self, module, network, network_config):
        config = self.config
        self.module, self.network, self.network_config = module, network, network_config
        module.to(self.device, memory_format=self.memory_format).train()
        self.optimizer = make_optimizer(config, network.parameters(), self.device)
        self.step = 0
        self.loss_scale = LossScale(FP16_INITIAL_LOG2_SCALE, config.fp16_scale_growth, self.device)
        self.rollback = None  # fp16: copies of what an update changes, taken once the optimizer has state
        self.norm_totals = torch.zeros(2, device=self.device)  # gradient and weight norms since the last log
        # the settings the resumed weights were trained with: this folder's, or those beside --resume_checkpoint
        self.recorded = read_run_config(config.log_dir) or (
            read_run_config(os.path.dirname(os.path.abspath(config.resume_checkpoint))) or {}
            if config.resume_checkpoint else {})
        self.changes = list(self.recorded.get("changes", []))
        steps = checkpoint_steps(config.log_dir)
        resumed_step = resume_step(config.resume_checkpoint) if config.resume_checkpoint else steps[0] if steps else None
        later = [step for step in steps if resumed_step is not None and step > resumed_step]
        if config.resume_checkpoint and later:
            replaced = [os.path.basename(path) for step in sorted(later)
                        for path in checkpoint_files(config.log_dir, step, config.ema_rates).values() if os.path.exists(path)]
            raise RunFolderError(
                f"--resume_checkpoint {config.resume_checkpoint} is step {resumed_step}, but {config.log_dir} holds later "
                f"checkpoints, which this run would replace ({', '.join(replaced[:6])}{' …' if len(replaced) > 6 else ''}); "
                f"nothing was changed. To continue from step {resumed_step}, run in a new folder "
                f"(OPENAI_LOGDIR=<new folder>) with the same --resume_checkpoint")
        if self.recorded and resumed_step is not None:
            self.changes += check_resumed_settings(config.log_dir, self.recorded, self.run_config(),
                                                   self.defining_settings(), config.allow_changed_settings,
                                                   resumed_step)
        self.ema = EMA(network, config.ema_rates, power_function=self.power_function_ema)
        self._resume(steps)
        self.last_saved_step = self.step  # the checkpoint this run continues (0: none)
        if not self.recorded and self.step:
            self.logger.log(f"no run_config.json beside the checkpoint resumed (a folder the original wrote, or the file "
                            f"was deleted): the settings of step {self.step} cannot be checked against this run's; "
                            "they are recorded anew from here")
        self._set_learning_rate()  # the schedule's, also after a resume
        self._note_process_count()
        if dist.is_main():
            for table in self.logged_tables:
                cut = self.logger.truncate_metrics(self.step, table)
                if cut:
                    self.logger.log(f"{table}: removed {cut} row(s) after step {self.step}, logged by a run that ended "
                                    "before its next checkpoint (those steps are trained again)")
        dist.broadcast_tensors(list(network.state_dict().values()))
        self.config.set_global_switches(self.device.type)
        self.model = module
        if self.info.world_size > 1:
            if self.device.type == "cpu":
                # CPU convolutions give a 1×1 kernel's gradient other strides on its size-1 dimensions: the
                # same memory layout as DDP's bucket view, yet every process would print a warning about it.
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.model = DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None,
                                                 gradient_as_bucket_view=True,
                                                 bucket_cap_mb=self.config.ddp_bucket_mib(module))
        self.model = self.config.compiled(self.model)

    def _note_process_count(self):
        """A run resumed on another number of processes continues the same steps (the global batch and each
        step's noise depend on (seed, step) alone); it is said in the log and recorded among the changes."""
        before = self.recorded.get("world_size")
        if self.step and before is not None and before != self.info.world_size:
            self.changes.append({"step": self.step, "setting": "world_size", "from": before, "to": self.info.world_size})
            self.logger.log(f"resumed on {self.info.world_size} process(es), the checkpoint was written by {before}: the "
                            f"global batch ({self.global_batch}) and each step's noise are the same, so the run goes on "
                            "as it would have (recorded in run_config.json)")

    def _buckets(self):
        if self.info.world_size == 1:
            return ""
        size = self.config.ddp_bucket_cap_mb
        return f" (gradients all-reduced in {'one bucket' if size == ONE_BUCKET else f'buckets of {size} MiB'})"

    def step_inputs(self, step):
        raise NotImplementedError

    def batch_losses(self, model, inputs, eager=False):
        """Per-sample losses of `model` on `inputs`; `eager` asks for uncompiled helpers (a one-off
        evaluation should not compile new graphs)."""
        raise NotImplementedError

    def describe(self):
        """The first line of the log: what is trained on what."""
        raise NotImplementedError

    def network_state(self, state_dict):
        """A checkpoint's network state dict with the keys of the network trained (as saved: unchanged)."""
        return state_dict

    def after_save(self):
        """Called on every process once a checkpoint is written, before the processes meet again (what a
        trainer adds beside a checkpoint)."""

    def evaluation_due(self, step):
        """Whether `evaluate` runs after this step."""
        return False

    def evaluate(self):
        """Measure the networks during training (every process takes part)."""

    def logged_evaluation(self):
        """Columns of progress.csv that the evaluations fill (the same keys in every row)."""
        return {}

    power_function_ema = False
    """Whether the --ema_rate values are σ_rel of power-function averages (EDM2's), not exponential rates."""
    run_kind = None
    """What run_config.json's run_kind records (run_folder.RUN_KINDS); every trainer names its own."""
    logged_tables = (PROGRESS_FILE,)
    """The CSV files of the run folder that have a row per logged step (cut back on resume)."""

    def defining_settings(self):
        """The settings a resumed run must keep: the configuration's run-defining fields and the network."""
        return tuple(dict.fromkeys((*defining_settings(type(self.config)), "network_config")))

    def run_config(self):
        """What run_config.json records beside the loop's settings."""
        return {**dataclasses.asdict(self.config), "network_config": self.network_config, "run_kind": self.run_kind,
                "changes": self.changes}

    def step_generator(self, step):
        """The generator of a step's global batch: seeded by (seed, step) alone."""
        return seeded_generator(STEP, self.config.seed, step, self.device)

    def share(self, global_tensor):
        """This process's slice of a global-batch tensor."""
        return global_tensor[self.info.rank * self.batch:(self.info.rank + 1) * self.batch]

    # ----------------------------------------------------------------------------- one step
    def train_step(self):
        """One attempt at the next optimizer step, decided before it returns: (the mean of the micro-batches'
        mean losses, as the original logs it, a device tensor; whether the step was applied)."""
        attempt = self._queue_attempt(self.step)
        return attempt.loss, self._resolve(attempt)

    def _queue_attempt(self, step, prior=None):
        """Queue the update from `step` to step + 1 over the process's batch (the gradients are summed over
        micro-batches, as in the original) and return its Attempt. `prior`: the attempt queued before it whose
        outcome the host does not know yet; this one is discarded on the device if that one overflowed."""
        random_state = self._device_random_state() if prior is not None else None
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        inputs = self.step_inputs(step)
        self.optimizer.zero_grad(set_to_none=True)
        scale, inverse_scale = self.loss_scale.factors() if self.config.loss_scaling else (1.0, None)
        loss_sum = torch.zeros((), device=self.device)
        starts = range(0, self.batch, self.microbatch)
        for index, start in enumerate(starts):
            part = slice(start, start + self.microbatch)
            last = index == len(starts) - 1
            sync = self.model.no_sync() if self.info.world_size > 1 and not last else contextlib.nullcontext()
            if self.config.compile and self.config.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # the previous micro-batch's graph outputs are consumed
            with sync:
                with self.config.autocast(self.device.type):
                    losses = self.batch_losses(self.model, [None if x is None else x[part] for x in inputs])
                loss = losses.float().mean()
                (loss * scale).backward()
            loss_sum += loss.detach()
        attempt = Attempt(step, loss_sum / len(starts), True, random_state=random_state)
        self._update(attempt, inverse_scale, prior)
        return attempt

    def _update(self, attempt, inverse_scale, prior):
        """Unscale, measure and apply the summed gradients, with no per-parameter Python loop and no host read
        (except fp16's first update, below). Under fp16 loss scaling the overflow check and the unscaling are
        one multi-tensor kernel (torch.amp's); a step whose gradients are not finite is skipped (weights, EMA,
        optimizer state and norms untouched) on the device (pid_diffusion/fp16_step.py). Before the optimizer
        has state to copy, the host reads the check and skips the update itself."""
        parameters = [p for p in self.network.parameters() if p.grad is not None]
        grads = [p.grad for p in parameters]
        if not (self.config.loss_scaling and grads):
            norms = self._norms(parameters)
            if norms is not None:
                self.norm_totals += norms
            self.optimizer.step()
            self.ema.update(attempt.step)
            if self.config.loss_scaling:
                self.loss_scale.update(None, None)
            return
        found = torch.zeros(1, device=self.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inverse_scale)
        overflowed = found[0] > 0
        if not optimizer_has_state(self.optimizer, parameters):  # nothing to copy yet: the host decides
            attempt.applied = not bool(overflowed.item())
            if attempt.applied:
                self.norm_totals += self._norms(parameters)
                self.optimizer.step()
                attempt.optimizer_calls = 1
                self.ema.update(attempt.step)
            self.loss_scale.update(overflowed, None)
            return
        discarded = overflowed if prior is None else overflowed | prior.overflowed
        zero_if(discarded, grads)
        kept = (~discarded).float()
        self.norm_totals += self._norms(parameters) * kept
        if self.rollback is None or not self.rollback.fits(parameters):
            self.rollback = Rollback(self.optimizer, parameters, self.device)
        self.rollback.take()
        self.optimizer.step()
        self.rollback.restore(discarded.float())
        self.ema.update(attempt.step, kept)
        self.loss_scale.update(overflowed, None if prior is None else prior.overflowed)
        attempt.applied, attempt.overflowed, attempt.optimizer_calls = ~discarded, overflowed, 1
        if self.device.type == "cuda":  # the answer travels to the host behind the work, read when it arrives
            attempt.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            attempt.flag.copy_(attempt.applied, non_blocking=True)
            attempt.ready = torch.cuda.Event()
            attempt.ready.record()

    def _resolve(self, attempt):
        """Wait for an attempt's outcome (the host's one read of an fp16 step) and count it: the step count,
        the loss scale the host knows, the learning rate of the next step. Returns whether it was applied."""
        applied = attempt.applied
        if torch.is_tensor(applied):
            if attempt.ready is not None:
                attempt.ready.synchronize()
                applied = bool(attempt.flag)
            else:
                applied = bool(applied.item())
        if self.config.loss_scaling:
            self.loss_scale.resolved(applied)
        if not applied:  # skipped for its own overflow: the optimizer's host-side counters go back
            self._rewind_optimizer(attempt)
            return False
        self.step += 1
        self._set_learning_rate()
        return True

    def _rewind_optimizer(self, attempt):
        if attempt.optimizer_calls and self.rollback is not None:
            self.rollback.rewind(attempt.optimizer_calls)

    def _discard(self, attempt):
        """Undo the host-side traces of a speculative attempt that an overflow ahead of it discarded on the
        device: the optimizer's step counters and the device's random generator (dropout), so that the retried
        step draws what it would have drawn had it never been queued."""
        self._rewind_optimizer(attempt)
        self._set_device_random_state(attempt.random_state)

    def _device_random_state(self):
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()

    def _set_device_random_state(self, state):
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    @property
    def log2_loss_scale(self):
        """log2 of fp16's loss scale (the original's lg_loss_scale)."""
        return self.loss_scale.log2

    @log2_loss_scale.setter
    def log2_loss_scale(self, value):
        self.loss_scale.set(value)

    def learning_rate(self, step):
        """The learning rate of the update from `step` to step + 1: --lr, decayed linearly to 0 over
        --lr_anneal_steps when it is given (a trainer may define another schedule)."""
        if not self.config.lr_anneal_steps:
            return self.config.lr
        return self.config.lr * (1 - min(step / self.config.lr_anneal_steps, 1.0))

    def _set_learning_rate(self):
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)

    @staticmethod
    def _norms(parameters):
        """This step's gradient and weight norms (over all parameters, before the update, after
        unscaling), a device tensor (None without gradients): progress.csv logs their means over the
        interval as grad_norm and param_norm, as consistency_models' logger did."""
        if not parameters:
            return None
        return torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).float())
                            for tensors in ([p.grad for p in parameters], parameters)]).detach()

    # ----------------------------------------------------------------------------- the loop
    def run(self):
        """Train to --total_training_steps. SIGTERM (a scheduler's notice) and SIGINT (Ctrl-C) end the
        current step on every process; then a checkpoint is written and TrainingInterrupted raised."""
        with self._signals_noted():
            self._run()

    @contextlib.contextmanager
    def _signals_noted(self):
        self.stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signal_number, frame):
            if self.stop_signal is None or self.saving:  # the first signal, and any during a save, wait
                self.stop_signal = self.stop_signal or signal_number
                return
            signal.signal(signal_number, previous[signal_number])  # a second signal outside a save acts at once
            raise TrainingInterrupted(self._steps_lost(signal_number), signal_number)

        previous = {number: signal.signal(number, note) for number in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _steps_lost(self, signal_number):
        """What a second signal, which stops the run before the first one's checkpoint, costs."""
        name, trained = signal.Signals(signal_number).name, self.step - self.last_saved_step
        if not self.last_saved_step:
            return (f"stopped by a second {name} at step {self.step}, before any checkpoint was written: the "
                    f"{trained} step(s) trained are lost; the same command starts the run again")
        return (f"stopped by a second {name} at step {self.step}, before its checkpoint was written: the {trained} "
                f"step(s) since model{self.last_saved_step:06d}.pt are lost; the same command continues from that "
                f"checkpoint (one signal alone saves first)")

    def _stop_requested(self):
        """The signal any process got (0: none); several processes agree through an all-reduce, one
        process reads its flag without touching the device."""
        noted = 0 if self.stop_signal is None else int(self.stop_signal)
        if self.info.world_size == 1:
            return noted
        return int(dist.all_reduce_max(torch.tensor(noted, device=self.device)).item())

    def _run(self):
        cfg = self.config
        if dist.is_main():
            speed = {field.name: getattr(cfg, field.name) for field in dataclasses.fields(SpeedSettings)}
            write_run_config(cfg.log_dir, {**self.run_config(), "world_size": self.info.world_size,
                                           "per_process_batch": self.batch, "torch_version": torch.__version__},
                             self.recorded, {"step": self.step, "world_size": self.info.world_size,
                                             "torch_version": torch.__version__, **speed})
        self.logger.log(f"{self.describe()}, {self.info.world_size} process(es) on {self.device.type}{self._buckets()}, "
                        f"global batch {self.global_batch} ({self.batch} per process, micro-batch {self.microbatch}), steps "
                        f"{self.step} → {cfg.total_training_steps}, run folder {cfg.log_dir}")
        loss_total = torch.zeros((), device=self.device)
        self.norm_totals.zero_()
        largest_loss = torch.zeros((), device=self.device)
        lowest_logged_loss = math.inf  # of this process's life: a resume starts it again
        first_bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        steps_in_interval, started = 0, time.time()

        def queue(step, prior=None):
            """Queue an attempt and add its loss to the interval's tallies where it counts (on the device)."""
            nonlocal largest_loss, first_bad_step
            attempt = self._queue_attempt(step, prior)
            if attempt.applied is False:  # decided on the host: skipped
                return attempt
            loss = attempt.loss.detach()
            finite = loss.nan_to_num(0.0, 0.0, 0.0)
            bad = ~torch.isfinite(loss) & (first_bad_step < 0)
            if torch.is_tensor(attempt.applied):
                finite, bad = torch.where(attempt.applied, finite, 0.0), bad & attempt.applied
            loss_total.add_(finite)
            largest_loss = torch.maximum(largest_loss, finite)
            first_bad_step = torch.where(bad, torch.full_like(first_bad_step, step + 1), first_bad_step)
            return attempt

        pending = None  # an attempt queued before the host knew whether the one ahead of it counted
        while self.step < cfg.total_training_steps:
            saved_now = False
            pending = self._next_step(pending, queue, cfg.total_training_steps)
            steps_in_interval += 1
            evaluated = self.evaluation_due(self.step)
            if evaluated:  # before the log, whose row then holds the evaluation's numbers
                self.evaluate()
            due_log = self.step % cfg.log_interval == 0 or self.step == cfg.total_training_steps or evaluated
            due_save = cfg.save_interval > 0 and self.step % cfg.save_interval == 0
            if due_log:
                self._check_finite(first_bad_step)
                elapsed = time.time() - started
                logged_loss = self._log(loss_total / steps_in_interval, steps_in_interval, elapsed)
                self._check_loss_level(logged_loss, lowest_logged_loss)
                if logged_loss > 0:
                    lowest_logged_loss = min(lowest_logged_loss, logged_loss)
                loss_total.zero_()
                self.norm_totals.zero_()
                steps_in_interval, started = 0, time.time()
            if due_save or self.step == cfg.total_training_steps:
                self._save_checked(first_bad_step, largest_loss, lowest_logged_loss)
                saved_now = True
            # one process alone checks every step (a flag on the host); several agree at each log step and save
            if (self.info.world_size == 1 or due_log or saved_now) and self.step < cfg.total_training_steps \
                    and pending is None:  # a queued step finishes first (no speculation once a signal is noted)
                stop = self._stop_requested()
                if stop:
                    if self.last_saved_step != self.step:
                        self._save_checked(first_bad_step, largest_loss, lowest_logged_loss)
                    name = signal.Signals(stop).name
                    self.logger.log(f"stopped by {name} at step {self.step}: checkpoint model{self.step:06d}.pt is "
                                    "written; the same command continues the run")
                    raise TrainingInterrupted(f"stopped by {name} at step {self.step}; checkpoint "
                                              f"model{self.step:06d}.pt in {cfg.log_dir}", stop)
        self.logger.log(f"done: {self.step} steps; checkpoints in {cfg.log_dir}")

    def train_steps(self, count):
        """Train `count` steps as a run does (fp16 steps queued ahead), without logs or checkpoints: what the
        benchmarks time."""
        until, pending = self.step + count, None
        while self.step < until:
            pending = self._next_step(pending, self._queue_attempt, until)

    def _next_step(self, pending, queue, until):
        """Queue (with `queue`), resolve and retry attempts until one step is applied. With `pending`, the attempt
        already queued for this step; returns the attempt queued behind the applied one, if any (never for step
        `until` or beyond)."""
        while True:
            attempt, pending = pending or queue(self.step), None
            if self._may_speculate(attempt, until):
                pending = queue(self.step + 1, prior=attempt)
            if self._resolve(attempt):
                return pending
            if pending is not None:  # discarded on the device; its host-side traces are undone here
                self._discard(pending)
                pending = None
            self._check_skipped_step(attempt.loss, attempt.step + 1)

    def _may_speculate(self, attempt, until):
        """Whether the step after `attempt` may be queued before the host knows that `attempt` counted: only
        for a device-decided fp16 update, and never past a step at which the host has work (an evaluation, a
        log line, a checkpoint, the last step, a stop signal)."""
        cfg, following = self.config, attempt.step + 1
        return (cfg.speculative_step and torch.is_tensor(attempt.applied) and following < until
                and following % cfg.log_interval != 0 and not (cfg.save_interval > 0 and following % cfg.save_interval == 0)
                and not self.evaluation_due(following) and self.stop_signal is None)

    def _save_checked(self, first_bad_step, largest_loss, lowest_logged_loss):
        """Save a checkpoint only when no loss so far was NaN and the weights have not diverged."""
        self._check_finite(first_bad_step)
        self._check_weights(largest_loss if math.isinf(lowest_logged_loss) else lowest_logged_loss)
        self.save()

    def _check_loss_level(self, loss, lowest_logged_loss):
        """A logged mean loss DIVERGENCE_FACTOR times its lowest logged level: the updates diverge slowly (each
        step's loss a few times the last, which the check on the next batch's loss never sees). The mean is
        the same on every process, which all stop together."""
        if loss > DIVERGENCE_FACTOR * lowest_logged_loss:
            raise TrainingDivergedError(
                f"the mean loss rose to {loss:.4g} by step {self.step}, {loss / lowest_logged_loss:.3g} times its "
                f"lowest logged level ({lowest_logged_loss:.4g}): the updates diverged; "
                f"{self._divergence_advice()}")

    def _check_finite(self, first_bad_step):
        processes_with_bad_loss = int(dist.all_reduce_sum((first_bad_step >= 0).long()).item())
        if processes_with_bad_loss:
            where = (f"in the update to step {int(first_bad_step.item())}" if first_bad_step.item() >= 0
                     else "on another process")
            raise TrainingDivergedError(f"the loss became NaN or infinite {where}; {self._divergence_advice()}")

    def _check_skipped_step(self, loss, step):
        """An fp16 step skipped for a non-finite gradient is retried with a halved loss scale and the same
        noise (the noise follows the step count). If its loss itself is not finite, the forward pass
        overflowed float16, which no loss scale mends: the retries would go on forever, so stop. A read
        on skipped steps only (every process skips together: the gradients are all-reduced)."""
        saved = (f"The same command with one of these continues from model{self.last_saved_step:06d}.pt in "
                 f"{self.config.log_dir}." if self.last_saved_step else "No checkpoint was written.")
        if int(dist.all_reduce_sum((~torch.isfinite(loss)).long()).item()):
            raise TrainingDivergedError(
                f"the loss of step {step} is NaN or infinite under fp16 autocast: the forward pass overflowed "
                f"float16 (largest value 65504), which no loss scale can mend. Run with --use_fp16 False or "
                f"--mixed_precision bf16 (or fp32). {saved}")
        if self.log2_loss_scale < FP16_SMALLEST_LOG2_SCALE:
            raise TrainingDivergedError(
                f"the gradients of step {step} overflow float16 at every loss scale down to 2^{self.log2_loss_scale:.0f} "
                f"(below that every gradient rounds to zero): run with --use_fp16 False or --mixed_precision bf16 (or "
                f"fp32). {saved}")

    def _check_weights(self, reference_loss):
        """Before a checkpoint is written: the weights are finite and give a finite loss on the next
        step's batch, not DIVERGENCE_FACTOR times `reference_loss` (an update can leave huge but finite
        weights that the next steps turn into NaN); otherwise stop without saving them."""
        with torch.no_grad(), self.config.autocast(self.device.type):
            inputs = [None if x is None else x[:self.microbatch] for x in self.step_inputs(self.step)]
            probe = self.batch_losses(self.module, inputs, eager=True).float().mean()
        healthy = torch.isfinite(probe) & (probe <= DIVERGENCE_FACTOR * reference_loss)
        healthy &= torch.stack([torch.isfinite(p).all() for p in self.network.parameters()]).all()
        if int(dist.all_reduce_sum((~healthy).long()).item()):
            found = (f"give a loss of {float(probe):.4g} on the next batch against {float(reference_loss):.4g} so far"
                     if healthy.item() is False else "diverge on another process")
            raise TrainingDivergedError(f"the weights after step {self.step} {found} (NaN, infinite or over "
                                        f"{DIVERGENCE_FACTOR:g} times: the updates diverged); "
                                        f"{self._divergence_advice()}")

    def _divergence_advice(self):
        if not self.last_saved_step:
            return "stopping without saving; no checkpoint was written. Lower --lr and start again."
        return (f"stopping without saving these weights. Last good checkpoint: model{self.last_saved_step:06d}.pt in "
                f"{self.config.log_dir}. To continue from it with a lower learning rate, run the same command with "
                "--lr <lower> --allow_changed_settings True (or --use_fp16 False if fp16 overflowed).")

    def _log(self, mean_loss, steps, elapsed):
        """Write the interval's row and line; returns its mean loss over every process."""
        loss = float(dist.all_reduce_sum(mean_loss.clone()).item()) / self.info.world_size
        images_per_second = steps * self.global_batch / max(elapsed, 1e-9)
        remaining = (self.config.total_training_steps - self.step) * elapsed / max(steps, 1)
        grad_norm, param_norm = (self.norm_totals / steps).tolist()
        row = dict(step=self.step, loss=loss, grad_norm=grad_norm, param_norm=param_norm,
                   images_per_second=images_per_second, samples=self.step * self.global_batch,
                   lr=self.optimizer.param_groups[0]["lr"])
        if self.config.loss_scaling:
            row["lg_loss_scale"] = self.log2_loss_scale
        row.update(self.logged_evaluation())
        self.logger.metrics(row)
        eta = time.strftime("%H:%M:%S", time.gmtime(remaining)) if remaining < 86400 else f"{remaining / 86400:.1f} days"
        self.logger.log(f"step {self.step:>7d}  loss {loss:.6f}  {images_per_second:8.1f} img/s  ETA {eta}")
        return loss

    # ----------------------------------------------------------------------------- checkpoints
    def save(self):
        """Write the checkpoint of this step; SIGINT/SIGTERM arriving meanwhile wait until it is complete."""
        self.saving = True
        try:
            rng_by_rank = dist.all_gather_objects((torch.get_rng_state(), torch.cuda.get_rng_state_all()
                                                   if torch.cuda.is_available() else []))
            if dist.is_main():
                state = dict(step=self.step, log2_loss_scale=self.log2_loss_scale, cpu_rng=rng_by_rank[0][0],
                             cuda_rng=rng_by_rank[0][1], rng_by_rank=rng_by_rank)
                write_checkpoint(self.config.log_dir, self.step, self.network.state_dict(),
                                 {rate: self.ema.state_dict(rate) for rate in self.ema.rates},
                                 self.optimizer.state_dict(), state)
                self.logger.log(f"saved checkpoint {self.step:06d}")
            self.last_saved_step = self.step
            self.after_save()
            dist.barrier()  # every process leaves the save together (a launcher ends the rest when one exits)
        finally:
            self.saving = False

    def _resume(self, steps):
        """Load --resume_checkpoint, or the newest complete checkpoint of the folder; a damaged one is
        reported and the one before it used."""
        cfg = self.config
        if cfg.resume_checkpoint:
            self._load(cfg.resume_checkpoint, resume_step(cfg.resume_checkpoint))
            return
        saved_rates = ema_rates(self.recorded.get("ema_rate", cfg.ema_rate))  # the rates the files were saved with
        complete = [step for step in steps if not missing_checkpoint_files(cfg.log_dir, step, saved_rates)]
        for step in complete:
            try:
                self._load(checkpoint_files(cfg.log_dir, step, self.ema.rates)["model"], step)
                return
            except UnreadableFileError as e:  # a damaged file, or one that does not fit the network
                self.logger.log(f"checkpoint {step:06d} is damaged and skipped: {e}")
        if steps:
            newest_missing = missing_checkpoint_files(cfg.log_dir, steps[0], saved_rates)
            why = (f" (checkpoint {steps[0]:06d} lacks {', '.join(newest_missing)}; --ema_rate must list the rates "
                   "the files were saved with)" if newest_missing else "")
            raise RunFolderError(f"{cfg.log_dir} holds checkpoints ({', '.join(f'{s:06d}' for s in steps[:5])}) but "
                                 f"none is complete and readable{why}; nothing was overwritten. Move them away to "
                                 "start afresh, or point --resume_checkpoint at a model file")

    def _load(self, model_path, step):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"--resume_checkpoint {model_path}: no such file")
        saved = read_checkpoint(model_path, step, self.ema.rates)
        load_strictly(self.network, self.network_state(saved["model"]), model_path, "the network being trained")
        for rate, ema_state in saved["ema"].items():
            self.ema.load_state_dict(rate, ema_state if ema_state is not None else self.network.state_dict())
        if saved["opt"] is not None:
            self.optimizer.load_state_dict(saved["opt"])  # brings back the saved hyperparameters: this run's win
            for group in self.optimizer.param_groups:
                group.update(weight_decay=self.config.weight_decay, eps=self.config.opt_eps)
        state = saved["state"]
        if state is not None:
            self.log2_loss_scale = state["log2_loss_scale"]
            by_rank = state.get("rng_by_rank") or [(state["cpu_rng"], state["cuda_rng"])]
            cpu_rng, cuda_rng = by_rank[self.info.rank] if len(by_rank) == self.info.world_size else by_rank[0]
            torch.set_rng_state(cpu_rng)
            if cuda_rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda_rng)
        self.step = step
        note = (f" ({', '.join(saved['missing'])} not found: an EMA without its file starts from the loaded weights, "
                "the optimizer state afresh)" if saved["missing"] else "")
        if state is None:
            note += " (no trainer state, as in a folder the original wrote: the fp16 loss scale starts afresh)"
        self.logger.log(f"resumed from {model_path} at step {step}{note}")

    def close(self):
        """Release the DDP wrapper and optimizer before the process group ends (see dist.shutdown), and
        the run folder."""
        self.model = self.optimizer = self.ema = None
        self.logger.close()
        self.lock.release()


