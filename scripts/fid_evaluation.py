"""FID of every checkpoint in a training run folder, resumable.

    python scripts/fid_evaluation.py --exp_dir experiment/pid_cifar10 --fid_dataset cifar10 \
        --num_samples 50000 --batch_size 500 --seed 0

Evaluates model*.pt and ema_*.pt (never opt*.pt or trainer_state*.pt) in step order with the same
noise for every checkpoint, skips those already listed in <exp_dir>/fid_results_{seed}.csv, appends
`model_name,step,FID` rows, and writes <exp_dir>/FID/{name}_samples.png and <exp_dir>/fid_vs_step.png.
A checkpoint that cannot be read is reported and skipped. Runs under mpirun, torchrun or alone.
"""

import argparse
import os
import sys

from pid_diffusion import cli, dist, evaluation
from pid_diffusion.fid import frechet_distance, load_detector, load_reference_stats, reference_stats_path


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
    options = evaluation.sampler_options(args, args.training_mode)
    detector = load_detector(args.detector, args.detector_path or None, device)
    checkpoints = evaluation.checkpoints_in(args.exp_dir)
    if not checkpoints:
        raise FileNotFoundError(f"no model*.pt or ema_*.pt checkpoints in {args.exp_dir}")
    ref_path = reference_stats_path(args.fid_dataset, args.ref_path or None)
    results_path = os.path.join(args.exp_dir, f"fid_results_{args.seed}.csv")
    done = evaluation.read_results(results_path)
    sample_dir = os.path.join(args.exp_dir, "FID")
    if dist.is_main():
        os.makedirs(sample_dir, exist_ok=True)
    reference = None
    for name, step, path in checkpoints:
        if name in done:
            dist.print0(f"{name}: already evaluated (FID {done[name]['FID']})")
            continue
        try:
            model, shape, label_dim = evaluation.load_sampling_model(args.training_mode, path,
                                                                     cli.network_flags(args, given), device)
        except (ValueError, RuntimeError) as e:  # unreadable or foreign checkpoint files
            dist.print0(f"{name}: skipped, cannot be loaded ({e})")
            continue
        images, _, _, stats = evaluation.run_generation(model, shape, label_dim, args, options, device,
                                                        detector=detector, feed=args.detector_feed,
                                                        keep_images=False)
        mu, sigma = stats.all_reduce().mean_cov()
        if reference is None:
            reference = load_reference_stats(ref_path, dim=mu.shape[0])
        if dist.is_main():
            fid = frechet_distance(mu, sigma, *reference)
            evaluation.append_result(results_path, dict(model_name=name, step=step, FID=f"{fid:.6f}"))
            evaluation.save_grid(images[:100], os.path.join(sample_dir, f"{name}_samples.png"), columns=10)
            print(f"{name}: FID {fid:.4f} ({int(stats.count)} samples, {args.detector} detector)", flush=True)
        dist.barrier()
    if dist.is_main():
        rows = list(evaluation.read_results(results_path).values())
        evaluation.plot_fid_vs_step(rows, os.path.join(args.exp_dir, "fid_vs_step.png"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, given = parse(argv)
    cli.run_script(lambda info: evaluate_folder(args, given, info.device))


if __name__ == "__main__":
    main()
