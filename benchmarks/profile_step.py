"""Where the time of a PID training step goes: torch.profiler over a few real steps on a GPU.

    python benchmarks/profile_step.py --config cifar10 --loss lpips --batch 64 --mode fast-nocompile

Prints the CUDA kernels (and operators) that take most GPU time, grouped, and writes the table to
--out with a second one grouped by the operators' input shapes. Uses the same trainer set-up as
benchmarks/train_step.py.
"""

import argparse
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from pid_diffusion import dist
from pid_diffusion.benchmark_modes import mode_options
from pid_diffusion.trainer import PIDTrainer
from train_step import OFFICIAL_FLAGS, benchmark_config


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
        for _ in range(3):
            trainer.train_step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            for _ in range(args.steps):
                trainer.train_step()
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=40,
                                                                  max_name_column_width=50, max_shapes_column_width=90)
    print(table)
    with open(args.out, "w") as f:
        f.write(f"{table}\n\nThe same operators by input shape:\n{by_shape}")


if __name__ == "__main__":
    main()
