"""FID of every checkpoint in a training run folder, resumable.

    python scripts/fid_evaluation.py --exp_dir experiment/pid_cifar10 --fid_dataset cifar10 \
        --num_samples 50000 --batch_size 500 --seed 0

Evaluates every *.pt of the folder but optimizer and trainer-state files, as the original (or the
files --checkpoints names), in step order with the same noise for every checkpoint; a file without
run_config.json beside it (e.g. the released pid_cifar.pt) is built from the architecture flags.
Skips checkpoints already listed in <exp_dir>/fid_results_{seed}.csv (also one the original wrote),
adds `model_name,FID,step` rows (the original's columns first; `class_accuracy` with the digits
detector: the share of samples the classifier assigns to the label they were generated for), and
writes, as the original, <exp_dir>/FID/{name}_samples.png, FID/{name}_samples_NxHxWx3.npz (every
sample; --save_samples False skips it) and FID/log.txt, and <exp_dir>/fid_vs_step.png. A checkpoint
that cannot be read is reported and skipped. Runs under mpirun, torchrun or alone.

Digits: --detector digits --fid_dataset digits (features of the shipped digits classifier, reference
statistics computed from the 1,797 real digits).
"""

import argparse
import os
import sys

from pid_diffusion import cli, dist, evaluation
from pid_diffusion.digits import DigitsUnavailableError
from pid_diffusion.fid import DetectorTally, load_detector, reference_stats
from pid_diffusion.log import RunLogger
from pid_diffusion.plots import plot_fid_vs_step


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_flags(parser, {**cli.MODEL_FLAGS, **cli.SAMPLE_FLAGS, **cli.FID_FLAGS})
    args = parser.parse_args(argv)
    given = cli.given_flags(argv)
    if not args.exp_dir:
        parser.error("--exp_dir is required: the folder of checkpoints to evaluate")
    cli.warn_ignored(given, cli.MODEL_FLAGS)
    return args, given


def evaluate_folder(args, given, device):
    if not os.path.isdir(args.exp_dir):
        raise FileNotFoundError(f"--exp_dir {args.exp_dir}: no such folder")
    options = cli.sampling_options(args)
    detector = load_detector(args.detector, args.detector_path or None, device)
    checkpoints = evaluation.checkpoints_in(args.exp_dir, [n for n in args.checkpoints.split(",") if n])
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints (*.pt files but opt*.pt and trainer_state*.pt) in {args.exp_dir}")
    results_path = os.path.join(args.exp_dir, f"fid_results_{args.seed}.csv")
    done = evaluation.read_results(results_path)
    sample_dir = os.path.join(args.exp_dir, "FID")
    if dist.is_main():
        os.makedirs(sample_dir, exist_ok=True)
    log = RunLogger(sample_dir).log  # the terminal and FID/log.txt, as the original's logger
    request = cli.generation_request(args)
    reference = None
    unreadable = []
    for name, step, path in checkpoints:
        if name in done:
            log(f"{name}: already evaluated (FID {done[name]['FID']})")
            continue
        try:
            model, shape, label_dim = evaluation.load_sampling_model(args.training_mode, path,
                                                                     cli.network_flags(args, given), device)
        except (ValueError, RuntimeError) as e:  # unreadable or foreign checkpoint files
            log(f"{name}: skipped, cannot be loaded ({e})")
            unreadable.append(name)
            continue
        if reference is None:  # checked before the first sampling, against the detector's feature size
            dim = DetectorTally(detector, shape, device, args.detector_feed).stats.total.shape[0]
            reference = reference_stats(args.fid_dataset, args.ref_path or None, detector, dim, device)
        images, labels, indices, tally = evaluation.run_generation(
            model, shape, label_dim, request, options, device, detector=detector, feed=args.detector_feed,
            keep_images=args.save_samples)
        tally.all_reduce()
        grid = images[:100]
        if args.save_samples:
            images, labels = evaluation.gather_in_order(images, labels, indices)
        if dist.is_main():
            row = dict(model_name=name, step=step, FID=f"{tally.fid(reference):.6f}")
            accuracy = tally.class_accuracy()
            if accuracy == accuracy:  # not NaN: a classifying detector and a class-conditional model
                row["class_accuracy"] = f"{accuracy:.6f}"
            done[name] = row
            evaluation.write_results(results_path, list(done.values()))
            evaluation.save_grid(grid, os.path.join(sample_dir, f"{name}_samples.png"), columns=10)
            if args.save_samples:
                evaluation.save_samples_npz(images, labels, sample_dir, prefix=f"{name}_")
            extra = f", class accuracy {accuracy:.4f}" if "class_accuracy" in row else ""
            log(f"{name}: FID {float(row['FID']):.4f}{extra} ({int(tally.stats.count)} samples, {args.detector} "
                "detector)")
        dist.barrier()
    if len(unreadable) == len(checkpoints):
        raise ValueError(f"nothing could be evaluated: none of the {len(checkpoints)} checkpoints in {args.exp_dir} "
                         "can be loaded (see the reasons above)")
    if dist.is_main():
        plot_fid_vs_step(list(evaluation.read_results(results_path).values()),
                         os.path.join(args.exp_dir, "fid_vs_step.png"), title=f"FID ({args.detector} detector) by step")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, given = parse(argv)
    cli.run_script(lambda info: evaluate_folder(args, given, info.device), extra_errors=(DigitsUnavailableError,))


if __name__ == "__main__":
    main()
