r"""Distil an EDM teacher into a one-step PID student.

    mpirun -np 8 python scripts/cm_train.py --teacher_model_path model_zoo/edm-cifar10-32x32-uncond-vp.pkl \
        --global_batch_size 512 --lr 0.0002 --start_scales 250 --loss_norm lpips ...

Runs under mpirun, torchrun or as a single process. The run folder is $OPENAI_LOGDIR (default
./experiment/openai-<time>); training resumes from its newest complete checkpoint and stops at
--total_training_steps. See scripts/distill_pid_diffusion.sh for the paper's commands.
"""

import os

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    from pid_diffusion import cli, dist
    from pid_diffusion.loop import RunFolderError, TrainingDivergedError, TrainingInterrupted
    from pid_diffusion.process import run_script
    from pid_diffusion.trainer import train

INDUCTOR_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "pid_diffusion", "inductor")


def main(argv=None):
    args, given = cli.parse_distillation(argv, __doc__)

    def distil(info):
        log_dir = dist.broadcast_object(cli.default_log_dir() if dist.is_main() else None)
        config = cli.distillation_config(args, given, log_dir, info.device.type)
        if config.compile:
            # compiled kernels are kept here between runs: only the first run on a machine waits minutes
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", INDUCTOR_CACHE)
            dist.print0(f"torch.compile is on (--speed {args.speed}): the first steps wait for compilation, minutes on "
                        f"a cold cache (kept in {os.environ['TORCHINDUCTOR_CACHE_DIR']}); --compile False skips it")
        train(config)

    run_script(distil, extra_errors=(TrainingDivergedError, RunFolderError, TrainingInterrupted))


if __name__ == "__main__":
    main()
