"""Train an EDM teacher (EDM's denoising objective, EDM-preconditioned class-conditional DDPM++) on a
data set, on the same training loop as cm_train.py: mpirun / torchrun / one process, logs,
checkpoints and automatic resume in the run folder ($OPENAI_LOGDIR, default ./experiment/openai-<time>).

    OPENAI_LOGDIR=experiment/digits-teacher mpirun -np 2 python scripts/train_teacher.py \
        --export model_zoo/digits-ddpmpp.pt

The defaults make the shipped digits teacher (model_zoo/README.md). --export writes the EMA network
at the end as a teacher file for cm_train.py --teacher_model_path; an existing file is never replaced.
"""

import argparse
import os
import sys

from pid_diffusion import cli, dist
from pid_diffusion.digits import DIGITS_NETWORK_CONFIG, DigitsUnavailableError
from pid_diffusion.teacher_trainer import TeacherTrainConfig, TeacherTrainer
from pid_diffusion.trainer import NonFiniteLossError, RunFolderError, TrainingInterrupted, ema_rates


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    cli.add_flags(parser, cli.TEACHER_FLAGS)
    args = parser.parse_args(argv)
    if args.export and os.path.exists(args.export):
        parser.error(f"--export {args.export} exists; choose another name or remove it first")
    rates = ema_rates(args.ema_rate)
    if args.export_ema_rate < 0:
        args.export_ema_rate = rates[0] if rates else -1.0
    if args.export and args.export_ema_rate not in rates:
        parser.error(f"--export_ema_rate {args.export_ema_rate} is not one of --ema_rate {args.ema_rate}")
    return args


def config_from_args(args, log_dir):
    loop_fields = {name: getattr(args, name) for name in cli.LOOP_FLAG_NAMES}
    network = {**DIGITS_NETWORK_CONFIG, "model_channels": args.num_channels, "num_blocks": args.num_res_blocks,
               "dropout": args.dropout}
    return TeacherTrainConfig(log_dir=log_dir, dataset=args.dataset, network_config=network, **loop_fields)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)

    def train(info):
        log_dir = dist.broadcast_object(cli.default_log_dir() if dist.is_main() else None)
        config = config_from_args(args, log_dir)
        trainer = TeacherTrainer(config)
        try:
            trainer.run()
            if args.export:
                trainer.export(args.export_ema_rate, args.export)
                trainer.logger.log(f"exported the EMA {args.export_ema_rate} network to {args.export}")
        finally:
            trainer.close()

    cli.run_script(train, extra_errors=(NonFiniteLossError, RunFolderError, TrainingInterrupted,
                                        DigitsUnavailableError))


if __name__ == "__main__":
    main()
