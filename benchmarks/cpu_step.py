"""Time of a PID step on the CPU for digits-teacher widths: what sizes the quickstart's network.

    mpirun -np 2 python benchmarks/cpu_step.py --channels 16,24,32 --batch 64

For each width: a class-conditional 8×8 DDPM++ like the digits teacher (random weights; timing does
not depend on them) saved as a teacher file, the quickstart's PID settings (l2, N = 250), 3 untimed
steps, then --steps timed steps of PIDTrainer.train_step. Prints ms per step and parameters.
"""

import argparse
import os
import tempfile
import time

from pid_diffusion import dist
from pid_diffusion.checkpoint import save_teacher
from pid_diffusion.digits import DIGITS_NETWORK_CONFIG
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.trainer import PIDTrainer, TrainConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", default="16,32", help="comma list of model_channels")
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    args = parser.parse_args()
    dist.init()
    with tempfile.TemporaryDirectory() as tmp:
        folder = dist.broadcast_object(tmp if dist.is_main() else None)
        for channels in (int(c) for c in args.channels.split(",")):
            config = {**DIGITS_NETWORK_CONFIG, "model_channels": channels}
            path = os.path.join(folder, f"teacher{channels}.pt")
            if dist.is_main():
                save_teacher(EDMPrecond(**config), path, config)
            dist.barrier()
            trainer = PIDTrainer(TrainConfig(teacher_model_path=path, log_dir=os.path.join(folder, f"run{channels}"),
                                             global_batch_size=args.batch, loss_norm="l2", weight_schedule="uniform",
                                             start_scales=250, lr=1e-3, ema_rate="0.99,0.999"))
            for _ in range(3):
                trainer.train_step()
            started = time.time()
            for _ in range(args.steps):
                trainer.train_step()
            milliseconds = (time.time() - started) / args.steps * 1000
            parameters = sum(p.numel() for p in trainer.student.net.parameters())
            dist.print0(f"model_channels {channels:3d}: {parameters:9,d} parameters, {milliseconds:6.1f} ms per step of "
                        f"{args.batch} ({dist.info().world_size} process(es))")
            trainer.close()
    dist.shutdown()


if __name__ == "__main__":
    main()
