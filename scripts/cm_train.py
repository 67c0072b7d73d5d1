"""Distil an EDM teacher into a one-step PID student.

    mpirun -np 8 python scripts/cm_train.py --teacher_model_path model_zoo/edm-cifar10-32x32-uncond-vp.pkl \
        --global_batch_size 512 --lr 0.0002 --start_scales 250 --loss_norm lpips ...

Runs under mpirun, torchrun or as a single process. The run folder is $OPENAI_LOGDIR (default
./experiment/openai-<time>); training resumes from its newest complete checkpoint and stops at
--total_training_steps. See scripts/distill_pid_diffusion.sh for the paper's commands.
"""

import argparse
import dataclasses
import os
import sys

import torch

from pid_diffusion import cli, dist
from pid_diffusion.trainer import NonFiniteLossError, RunFolderError, TrainConfig, TrainingInterrupted, train


INDUCTOR_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "pid_diffusion", "inductor")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    cli.add_flags(parser, {**cli.MODEL_FLAGS, **cli.TRAIN_FLAGS}, preset_flags=cli.SPEED_FLAG_NAMES)
    args = parser.parse_args(argv)
    given = cli.given_flags(argv)
    if args.training_mode not in cli.TRAINING_MODES:
        parser.error(f"--training_mode {args.training_mode!r} is not supported; valid: {', '.join(cli.TRAINING_MODES)}")
    if not args.teacher_model_path:
        parser.error("--teacher_model_path is required: the teacher is what PID distils (see model_zoo/README.md)")
    cli.warn_ignored(given, {**cli.MODEL_FLAGS, **cli.TRAIN_FLAGS})
    return args, given


def config_from_args(args, given, log_dir, device_type=None):
    """The trainer's configuration; speed and precision options from --speed for `device_type`
    (default: cuda when a GPU is visible, else cpu)."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    speed = cli.speed_options(args, given, device_type)
    values.update(speed, log_dir=log_dir, network_flags=cli.network_flags(args, given))
    return TrainConfig(**values)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, given = parse(argv)

    def distil(info):
        log_dir = dist.broadcast_object(cli.default_log_dir() if dist.is_main() else None)
        config = config_from_args(args, given, log_dir, info.device.type)
        if config.compile:
            # compiled kernels are kept here between runs: only the first run on a machine waits minutes
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", INDUCTOR_CACHE)
            dist.print0(f"torch.compile is on (--speed {args.speed}): the first steps wait for compilation, minutes on "
                        f"a cold cache (kept in {os.environ['TORCHINDUCTOR_CACHE_DIR']}); --compile False skips it")
        train(config)

    cli.run_script(distil, extra_errors=(NonFiniteLossError, RunFolderError, TrainingInterrupted))


if __name__ == "__main__":
    main()
