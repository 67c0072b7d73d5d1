r"""Train an EDM teacher (EDM's denoising objective, EDM-preconditioned class-conditional DDPM++) on a
data set, on the same training loop as cm_train.py: mpirun / torchrun / one process, logs,
checkpoints and automatic resume in the run folder ($OPENAI_LOGDIR, default ./experiment/openai-<time>).

    OPENAI_LOGDIR=experiment/digits-teacher mpirun -np 2 python scripts/train_teacher.py \
        --export model_zoo/digits-ddpmpp.pt

The defaults make the shipped digits teacher (model_zoo/README.md). --export writes the EMA network
at the end as a teacher file for cm_train.py --teacher_model_path; an existing file is never replaced.
"""

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    from pid_diffusion import cli, dist
    from pid_diffusion.digits import DigitsUnavailableError
    from pid_diffusion.loop import RunFolderError, TrainingDivergedError, TrainingInterrupted
    from pid_diffusion.process import run_script
    from pid_diffusion.teacher_trainer import TeacherTrainer


def main(argv=None):
    args = cli.parse_teacher_training(argv, __doc__)

    def train(info):
        log_dir = dist.broadcast_object(cli.default_log_dir() if dist.is_main() else None)
        trainer = TeacherTrainer(cli.teacher_training_config(args, log_dir))
        try:
            trainer.run()
            if args.export:
                trainer.export(args.export_ema_rate, args.export)
                trainer.logger.log(f"exported the EMA {args.export_ema_rate} network to {args.export}")
        finally:
            trainer.close()

    run_script(train, extra_errors=(TrainingDivergedError, RunFolderError, TrainingInterrupted, DigitsUnavailableError))


if __name__ == "__main__":
    main()
