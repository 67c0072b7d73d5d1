"""Where the time of a PID training step goes: torch.profiler over a few real steps on a GPU.

    python benchmarks/profile_step.py --config cifar10 --loss lpips --batch 64 --mode fast-nocompile

Prints the CUDA kernels (and operators) that take most GPU time, grouped, and writes the table to
--out with a second one grouped by the operators' input shapes. Uses the same trainer set-up as
benchmarks/train_step.py. Its first lines say how busy the GPU is: the time some kernel, copy or
memset runs (the union of their intervals in the profiler's trace) per step, against the step's
time measured between CUDA events over as many steps without the profiler (which slows the host,
not the GPU), and against the profiled steps' own wall time.
"""

import argparse
import json
import os
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pid_diffusion import dist
from pid_diffusion.benchmark_modes import mode_options
from pid_diffusion.trainer import PIDTrainer
from train_step import OFFICIAL_FLAGS, benchmark_config


GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")
"""The trace's categories of GPU work (its gpu_user_annotation spans only mark regions)."""


def gpu_busy_ms(prof, folder):
    """Milliseconds during which the GPU ran some kernel, copy or memset, in a profile."""
    path = os.path.join(folder, "trace.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    intervals = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and e.get("cat") in GPU_WORK)
    busy, covered_to = 0.0, float("-inf")
    for start, end in intervals:
        if end > covered_to:
            busy += end - max(start, covered_to)
            covered_to = end
    return busy / 1000


def timed_steps_ms(trainer, steps):
    """Milliseconds per training step between CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    trainer.train_steps(steps)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cifar10", choices=sorted(OFFICIAL_FLAGS))
    parser.add_argument("--loss", default="lpips")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mode", default="fast-nocompile")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="profile.txt")
    args = parser.parse_args()
    dist.init()
    options = dict(mode_options([args.mode]))[args.mode]
    with tempfile.TemporaryDirectory() as folder:
        trainer = PIDTrainer(benchmark_config(folder, args.config, args.loss, args.batch, options))
        trainer.train_steps(3)
        torch.cuda.synchronize()
        step_ms = timed_steps_ms(trainer, args.steps)
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            trainer.train_steps(args.steps)
            torch.cuda.synchronize()
        profiled_ms = (time.perf_counter() - started) * 1000 / args.steps
        busy_ms = gpu_busy_ms(prof, folder) / args.steps
    summary = (f"{args.config} {args.loss} b{args.batch} {args.mode}, {torch.cuda.get_device_name()}, torch "
               f"{torch.__version__}: GPU busy {busy_ms:.1f} ms per step; a step takes {step_ms:.1f} ms without the "
               f"profiler (busy {100 * busy_ms / step_ms:.1f}%), {profiled_ms:.1f} ms with it "
               f"(busy {100 * busy_ms / profiled_ms:.1f}%)")
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=40,
                                                                  max_name_column_width=50, max_shapes_column_width=90)
    print(summary)
    print(table)
    with open(args.out, "w") as f:
        f.write(f"{summary}\n\n{table}\n\nThe same operators by input shape:\n{by_shape}")


if __name__ == "__main__":
    main()
