"""FID of every checkpoint in a training run folder, resumable.

    python scripts/fid_evaluation.py --exp_dir experiment/pid_cifar10 --fid_dataset cifar10 \
        --num_samples 50000 --batch_size 500 --seed 0

Evaluates every *.pt of the folder but optimizer and trainer-state files, as the original (or the
files --checkpoints names), in step order with the same noise for every checkpoint; a file without
run_config.json beside it (e.g. the released pid_cifar.pt) is built from the architecture flags, and
EMA files of a save that was interrupted before its model file are skipped. Each result is a row of
<exp_dir>/fid_results_{seed}.csv: `model_name,FID,step` (the original's columns first), what it
measured (sample count, seed, sampling options, detector and a digest of its weights, detector feed,
reference statistics and their digest) and `class_accuracy` with the digits detector (the share of
samples the classifier assigns to the label they were generated for). A checkpoint is skipped only
when a row answers the same question; rows of other questions (and the original's, which record
none) are kept. Walks beside each other on one folder share the file: each row is added under its
lock. NaN statistics are refused, never recorded. Writes FID/{name}_{seed-tag}_samples.png,
FID/{name}_{seed-tag}_samples_NxHxWx3.npz (every sample; --save_samples False skips it; the tag names
the seed and a digest of the sampling options, so other samples never replace them), FID/log.txt
and <exp_dir>/fid_vs_step.png. A checkpoint that cannot be read is reported and skipped. Runs under
mpirun, torchrun or alone.

Digits: --detector digits --fid_dataset digits (features of the shipped digits classifier, reference
statistics computed from the 1,797 real digits).
"""

import math
import os

from pid_diffusion import cli, dist, evaluation
from pid_diffusion.digits import DigitsUnavailableError
from pid_diffusion.fid import DetectorTally, check_stats_dimension, load_detector, reference_name, reference_stats
from pid_diffusion.files import digest_of_arrays
from pid_diffusion.generate import save_grid
from pid_diffusion.log import RunLogger
from pid_diffusion.plots import plot_fid_vs_step
from pid_diffusion.process import run_script
from pid_diffusion.run_folder import incomplete_step_files


def evaluate_folder(args, given, device):
    if not os.path.isdir(args.exp_dir):
        raise FileNotFoundError(f"--exp_dir {args.exp_dir}: no such folder")
    options = cli.sampling_options(args)
    request = cli.generation_request(args)
    guidance = cli.guidance(args)
    guidance.check_guidance()
    # a guided teacher's rows answer their own question (unguided descriptions stay as they were)
    guided = dict(guidance=guidance.guidance, guide_model_path=guidance.guide_model_path) if (
        guidance.guide_model_path) else {}
    detector = load_detector(args.detector, args.detector_path or None, device)
    checkpoints = evaluation.checkpoints_in(args.exp_dir, [n for n in args.checkpoints.split(",") if n])
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints (*.pt files but opt*.pt and trainer_state*.pt) in {args.exp_dir}")
    reference = reference_stats(args.fid_dataset, args.ref_path or None, detector, device=device)
    measurement = dict(num_samples=request.num_samples, seed=request.seed, detector=args.detector,
                       detector_sha256=digest_of_arrays(detector.state_dict().values()), feed=args.detector_feed,
                       reference=reference_name(args.fid_dataset, args.ref_path), reference_sha256=digest_of_arrays(reference))
    results_path = os.path.join(args.exp_dir, f"fid_results_{args.seed}.csv")
    evaluation.read_results(results_path)  # a damaged results file stops the walk before any sampling
    sample_dir = os.path.join(args.exp_dir, "FID")
    if dist.is_main():
        os.makedirs(sample_dir, exist_ok=True)
    log = RunLogger(sample_dir).log  # the terminal and FID/log.txt, as the original's logger
    unreadable, failed, checked_dimension = [], [], False
    for name in incomplete_step_files(args.exp_dir):
        if name.startswith("ema_") and not args.checkpoints:
            log(f"{name[:-3]}: skipped, its checkpoint's save was interrupted (no model file of its step)")
    for name, step, path in checkpoints:
        try:
            loaded = evaluation.load_sampling_model(args.training_mode, path, cli.network_flags(args, given), device,
                                                    options, given, guidance, args.vae_path)
        except (ValueError, RuntimeError) as e:  # unreadable or foreign checkpoint files
            log(f"{name}: skipped, cannot be loaded ({e})")
            unreadable.append(name)
            continue
        sampling = evaluation.sampling_description({**loaded.options, **guided}, request)
        question = {**measurement, "sampling": sampling}
        known = evaluation.answer(evaluation.read_results(results_path), name, question) if dist.is_main() else None
        known = dist.broadcast_object(known)  # read again: another walk may have answered it meanwhile
        if known is not None:
            log(f"{name}: already evaluated (FID {known['FID']}, {request.num_samples} samples, seed {request.seed})")
            continue
        if not checked_dimension:  # before the first sampling, against the detector's feature size
            dimension = DetectorTally(detector, loaded.output_shape(device), device, args.detector_feed).dimension
            check_stats_dimension(*reference, dimension, measurement["reference"])
            checked_dimension = True
        images, labels, indices, tally = evaluation.run_generation(
            loaded.model, loaded.shape, loaded.label_dim, request, loaded.options, device, detector=detector,
            feed=args.detector_feed, keep_images=args.save_samples, decode=loaded.decode)
        tally.all_reduce()
        grid = images[:100]
        if args.save_samples:
            images, labels = evaluation.gather_in_order(images, labels, indices)
        if dist.is_main():
            fid = tally.fid(reference)
            if not math.isfinite(fid):
                log(f"{name}: FID is {fid} (the samples or their features hold NaN or infinite values): not recorded")
                failed.append(name)
            else:
                row = dict(model_name=name, step=step, FID=f"{fid:.6f}")
                accuracy = tally.class_accuracy()
                if accuracy == accuracy:  # not NaN: a classifying detector and a class-conditional model
                    row["class_accuracy"] = f"{accuracy:.6f}"
                tag = f"{name}_{evaluation.samples_tag(request, sampling)}_"  # what the files measured
                save_grid(grid, os.path.join(sample_dir, f"{tag}samples.png"), columns=10)
                if args.save_samples:
                    evaluation.save_samples_npz(images, labels, sample_dir, prefix=tag)
                # the row last: a row in the results file means its samples are written too
                evaluation.record_result(results_path, row, question,
                                         on_wait=lambda holder: log(f"waiting for {holder} to finish writing "
                                                                    f"{results_path}"))
                extra = f", class accuracy {accuracy:.4f}" if "class_accuracy" in row else ""
                log(f"{name}: FID {fid:.4f}{extra} ({int(tally.stats.count)} samples, seed {request.seed}, "
                    f"{args.detector} detector)")
        dist.barrier()
    if len(unreadable) == len(checkpoints):
        raise ValueError(f"nothing could be evaluated: none of the {len(checkpoints)} checkpoints in {args.exp_dir} "
                         "can be loaded (see the reasons above)")
    if dist.is_main():  # every answer to this measurement, also those of walks beside this one
        same = [r for r in evaluation.read_results(results_path) if all(r.get(k) == str(v) for k, v in measurement.items())]
        plot_fid_vs_step(same, os.path.join(args.exp_dir, "fid_vs_step.png"),
                         title=f"FID ({args.detector} detector) by step")
    failed = dist.broadcast_object(failed)
    if failed:
        raise ValueError(f"no finite FID for {', '.join(failed)}: not recorded (see {os.path.join(sample_dir, 'log.txt')})")


def main(argv=None):
    args, given = cli.parse_fid(argv, __doc__)
    run_script(lambda info: evaluate_folder(args, given, info.device), extra_errors=(DigitsUnavailableError,))


if __name__ == "__main__":
    main()
