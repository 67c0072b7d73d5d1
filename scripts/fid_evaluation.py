r"""FID of every checkpoint in a training run folder, resumable.

    python scripts/fid_evaluation.py --exp_dir experiment/pid_cifar10 --fid_dataset cifar10 \
        --num_samples 50000 --batch_size 500 --seed 0
    python scripts/fid_evaluation.py --preset edm2-img64-s-autog-fid --exp_dir experiment/edm2-teachers

Evaluates every *.pt of the folder but optimizer and trainer-state files, as the original (or the
files --checkpoints names; --preset names an EDM2 teacher and its guide), in step order with the same
noise for every checkpoint; a file without run_config.json beside it (e.g. the released pid_cifar.pt)
is built from the architecture flags, and EMA files of a save that was interrupted before its model
file are skipped. Each result is a row of <exp_dir>/fid_results_{seed}.csv (in --results_dir when given):
`model_name,FID,step` (the original's columns first), what it measured (sample count, seed, sampling
options, detector and a digest of its weights, detector feed, reference statistics and their digest, a
digest of the checkpoint's weights) and `class_accuracy` with the digits detector (the share of samples
the classifier assigns to the label they were generated for). A checkpoint is skipped only when a row
answers the same question; rows of other questions (and the original's, which record none) are kept.
Walks beside each other on one folder share the file: each row is added under its lock. NaN statistics
are refused, never recorded. Writes
FID/{name}_{seed-tag}_samples.png, FID/{name}_{seed-tag}_samples_NxHxWx3.npz (every sample;
--save_samples False skips it; the tag names the seed and a digest of the sampling options, so other
samples never replace them), FID/log.txt and <exp_dir>/fid_vs_step.png. A checkpoint that cannot be
read is reported and skipped. Runs under mpirun, torchrun or alone.

--seed_ranges K measures each checkpoint on K disjoint ranges of samples (0 … N − 1, N … 2N − 1, ...), a
row each, and reports each FID and the minimum, as EDM2 reports its FIDs. EDM2 models (teachers and their
students) follow EDM2's protocol for the flags not given: Heun with 32 steps and no clamping, seed 0,
50,000 samples, uint8 pixels to the detector, 3 ranges.

Digits: --detector digits --fid_dataset digits (features of the shipped digits classifier, reference
statistics computed from the 1,797 real digits).
"""

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    from pid_diffusion import cli
    from pid_diffusion.digits import DigitsUnavailableError
    from pid_diffusion.evaluation.walk import evaluate_folder, evaluate_samples
    from pid_diffusion.process import run_script


def main(argv=None):
    args, given = cli.parse_fid(argv, __doc__)
    body = (lambda info: evaluate_samples(args, info.device)) if args.samples else (
        lambda info: evaluate_folder(args, given, info.device))
    run_script(body, extra_errors=(DigitsUnavailableError,))


if __name__ == "__main__":
    main()
