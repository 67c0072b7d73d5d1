"""The walk of scripts/fid_evaluation.py: every checkpoint of a run folder sampled and measured in step order, each
answer a row of the results tables (results.py) that a later walk reads instead of measuring again; and the same
measurement of images made by any code (--samples), or their statistics written as a reference (--write_reference).
Functions take the script's parsed flags (cli.parse_fid)."""

import dataclasses
import math
import os

import numpy as np

from .. import cli, dist
from ..download import is_url, local_file
from ..files import atomic_output, digest_of_arrays
from ..generate import save_grid
from ..log import RunLogger
from ..plots import plot_fid_vs_step
from ..run_folder import checkpoint_step, incomplete_step_files, model_file_names
from .detectors import load_configured_detector, resolve_feed
from .metrics import FrechetPass, LOWER_IS_BETTER, metric_answers, MetricOptions, metrics_text, real_features_for
from .results import (answer, measured_against, METRICS_TABLE, question_labels, read_results, record_result,
                      results_file, samples_tag, sampling_description, weights_digest)
from .sampling import load_sampling_model, read_images, run_generation, samples_npz_path, save_samples_npz, tally_images
from .statistics import check_stats_dimension, DetectorTally, reference_name, reference_stats


def checkpoints_in(folder, names=()):
    """[(name, step, path)] of the models to evaluate, as the original selects them: every *.pt file of
    the folder except optimizer and trainer-state files (and temporary files of interrupted saves),
    or only the files `names` (in the folder, paths, or http(s) URLs fetched once); in step order, then name."""
    if names:
        paths = [local_file(name, "the checkpoint") if is_url(name) else
                 os.path.join(folder, name) if os.path.isfile(os.path.join(folder, name)) else name for name in names]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"checkpoint file(s) not found in {folder} nor as paths: {', '.join(missing)}")
    else:
        paths = [os.path.join(folder, n) for n in model_file_names(folder)]
    found = [(os.path.splitext(os.path.basename(p))[0], checkpoint_step(p), p) for p in paths]
    return sorted(found, key=lambda item: (item[1], item[0]))


def results_folder(args):
    """Where the walk writes (--results_dir, made if missing, else --exp_dir): refused at once if it cannot."""
    out_dir = args.results_dir or args.exp_dir
    if args.results_dir and dist.is_main():
        os.makedirs(out_dir, exist_ok=True)
    dist.barrier()
    if not os.access(out_dir, os.W_OK | os.X_OK):
        advice = ("give a folder you can write to" if args.results_dir else
                  "give --results_dir <a folder you can write to> for the walk's results")
        raise PermissionError(f"{out_dir} is not writable (the walk writes fid_results_*.csv, FID/ and fid_vs_step.png "
                              f"there): {advice}")
    return out_dir


@dataclasses.dataclass
class MeasuringTools:
    """What a walk measures with, each refused at once when it cannot be had: the detector, the metrics beside FID,
    the real set they compare with (RealFeatures or None) and the second detector's pass (FrechetPass or None)."""
    detector: object
    metric_options: MetricOptions
    real: object
    second_pass: object

    @classmethod
    def load(cls, args, device):
        detector = load_configured_detector(args, device)
        metric_options = MetricOptions.parse(args.metrics, is_splits=args.is_splits, pr_neighbours=args.pr_neighbours,
                                             kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets)
        real = real_features_for(metric_options, detector, device, args.real_images)
        second_pass = None
        if "fd_dinov2" in metric_options.names:
            dinov2 = load_configured_detector(args, device, "dinov2")
            ref_path = args.dinov2_ref_path or args.ref_path
            reference = reference_stats(args.fid_dataset, ref_path or None, dinov2, device=device)
            second_pass = FrechetPass("fd_dinov2", dinov2, reference,
                                      measured_against("dinov2", dinov2, args.fid_dataset, ref_path, reference))
        return cls(detector, metric_options, real, second_pass)

    def questions(self, question, seed, num_generated):
        """{metric: its whole question} of the metrics beside FID, FID's `question` extended by each one's own."""
        return {metric: {**question, "metric": metric, **parameters} for metric, parameters in
                self.metric_options.questions(seed, num_generated, self.real, self.second_pass).items()}

    def more_tallies(self, image_shape, device, feed):
        return [] if self.second_pass is None else [self.second_pass.tally(image_shape, device, feed)]

    def measure(self, outputs, more_tallies, seed):
        """{metric: (value, std)} from the FID pass's per-sample `outputs` and the second pass's all-reduced tallies."""
        measured = self.metric_options.measure(*outputs, self.real, seed) if outputs else {}
        for tally in more_tallies:
            measured.update(self.second_pass.measure(tally))
        return measured


def evaluate_samples(args, device):
    """FID (and --metrics) of images made by any code (--samples), a row named after them in --results_dir's
    tables; the question names the images by a digest of their pixels. Every process measures its share. With
    --write_reference, their feature statistics are written as reference statistics instead."""
    if args.write_reference and os.path.exists(args.write_reference):
        raise FileExistsError(f"--write_reference {args.write_reference} exists; nothing was replaced: give another path")
    out_dir = None if args.write_reference else results_folder(args)
    tools = MeasuringTools.load(args, device)
    detector = tools.detector
    images = read_images(args.samples)
    image_shape = (images.shape[3], images.shape[1], images.shape[2])
    keeps_samples = tools.metric_options.keeps_samples
    tally = DetectorTally(detector, image_shape, device, "uint8", keep_samples=keeps_samples)
    if args.write_reference:
        write_reference_stats(args, images, tally, device)
        return
    reference = reference_stats(args.fid_dataset, args.ref_path or None, detector, device=device)
    check_stats_dimension(*reference, tally.dimension, reference_name(args.fid_dataset, args.ref_path))
    more_tallies = tools.more_tallies(image_shape, device, "uint8")
    tally_images([tally, *more_tallies], images, device, args.batch_size, shared=True)
    outputs = tally.samples_in_order() if keeps_samples else None
    for each in [tally, *more_tallies]:
        each.all_reduce()
    name = os.path.splitext(os.path.basename(os.path.normpath(args.samples)))[0]
    question = dict(num_samples=len(images), seed="", sampling=f"samples={os.path.abspath(args.samples)}",
                    feed="uint8", weights_sha256=digest_of_arrays([images]),
                    **measured_against(args.detector, detector, args.fid_dataset, args.ref_path, reference))
    if not dist.is_main():
        return
    fid = tally.fid(reference)
    if not math.isfinite(fid):
        raise ValueError(f"{args.samples}: FID is {fid} (the images' features hold NaN or infinite values): not recorded")
    seed = "samples"
    row = dict(model_name=name, step=0, FID=f"{fid:.6f}")
    record_result(results_file(out_dir, seed), row, question)
    measured = tools.measure(outputs, more_tallies, args.seed)
    asked = tools.questions(question, args.seed, len(images))
    answers, not_finite = metric_answers(name, 0, measured, asked)
    for metric_row, metric_question in answers:
        record_result(results_file(out_dir, seed, METRICS_TABLE), metric_row, metric_question, table=METRICS_TABLE)
    shown = ", ".join([f"FID {fid:.4f}", *([metrics_text(measured)] if measured else [])])
    print(f"{name}: {shown} ({len(images)} images; {results_file(out_dir, seed)})", flush=True)
    if not_finite:
        raise ValueError(f"{args.samples}: {', '.join(not_finite)} not finite: not recorded")


def write_reference_stats(args, images, tally, device):
    """The images' feature statistics as a reference .npz (mu, sigma: EDM's format), each process its share."""
    tally_images([tally], images, device, args.batch_size, shared=True)
    tally.all_reduce()
    if dist.is_main():
        mu, sigma = tally.stats.mean_cov()
        with atomic_output(args.write_reference) as tmp, open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma)
        print(f"wrote {args.write_reference}: statistics of {len(images)} images in the {args.detector} detector's "
              f"{mu.shape[0]}-d features", flush=True)


def evaluate_folder(args, given, device):
    if args.preset and dist.is_main():  # a preset's teacher is evaluated into a folder that need not exist yet
        os.makedirs(args.exp_dir, exist_ok=True)
    dist.barrier()
    if not os.path.isdir(args.exp_dir):
        raise FileNotFoundError(f"--exp_dir {args.exp_dir}: no such folder")
    out_dir = results_folder(args)
    options = cli.sampling_options(args)
    cli.generation_request(args, given)  # its values are checked before any model is loaded
    guidance = cli.guidance(args)
    guidance.check_guidance()
    # a guided teacher's rows answer their own question (unguided descriptions stay as they were)
    guided = dict(guidance=guidance.guidance, guide_model_path=guidance.guide_model_path) if (
        guidance.guide_model_path) else {}
    tools = MeasuringTools.load(args, device)
    detector = tools.detector
    checkpoints = checkpoints_in(args.exp_dir, [n for n in args.checkpoints.split(",") if n])
    if not checkpoints:
        orphans = incomplete_step_files(args.exp_dir)
        why = (f": its {len(orphans)} EMA/optimizer file(s) ({', '.join(orphans[:3])}{' …' if len(orphans) > 3 else ''}) "
               "have no model file of their step (saves that were interrupted); name them with --checkpoints to "
               "evaluate them anyway" if orphans else "")
        raise FileNotFoundError(f"no checkpoints (*.pt files but opt*.pt and trainer_state*.pt) in {args.exp_dir}{why}")
    reference = reference_stats(args.fid_dataset, args.ref_path or None, detector, device=device)
    measured_with = measured_against(args.detector, detector, args.fid_dataset, args.ref_path, reference)
    sample_dir = os.path.join(out_dir, "FID")
    if dist.is_main():
        os.makedirs(sample_dir, exist_ok=True)
    log = RunLogger(sample_dir).log  # the terminal and FID/log.txt, as the original's logger
    walk = Walk(args, tools, reference, sample_dir, log, device)
    unreadable = []
    for name in incomplete_step_files(args.exp_dir):
        if name.startswith("ema_") and not args.checkpoints:
            log(f"{name[:-3]}: skipped, its checkpoint's save was interrupted (no model file of its step)")
    measurement = None
    for name, step, path in checkpoints:
        try:
            loaded = load_sampling_model(args.training_mode, path, cli.network_flags(args, given), device, options,
                                         given, guidance, args.vae_path)
        except (ValueError, RuntimeError) as e:  # unreadable or foreign checkpoint files
            log(f"{name}: skipped, cannot be loaded ({e})")
            unreadable.append(name)
            continue
        first = cli.generation_request(args, given, loaded)
        measurement = dict(num_samples=first.num_samples, seed=first.seed,
                           feed=resolve_feed(args.detector_feed, loaded.protocol), **measured_with)
        weights = weights_digest(loaded.model)
        fids, questions = [], []
        for k in range(loaded.setting("seed_ranges", args, given)):  # disjoint ranges of samples, a row each
            request = dataclasses.replace(first, first_index=k * first.num_samples)
            sampling = sampling_description({**loaded.options, **guided}, request)
            questions.append({**measurement, "sampling": sampling, "weights_sha256": weights})
            fids.append(walk.measure(name, step, loaded, request, questions[-1]))
        if len(fids) > 1 and None not in fids:
            ranges = ", ".join(f"samples {k * first.num_samples}–{(k + 1) * first.num_samples - 1}: {fid:.4f}"
                               for k, fid in enumerate(fids))
            log(f"{name}: FID over {len(fids)} disjoint sample ranges ({ranges}); minimum {min(fids):.4f}")
            walk.summarise_ranges(name, questions, first)
    if len(unreadable) == len(checkpoints):
        raise ValueError(f"nothing could be evaluated: none of the {len(checkpoints)} checkpoints in {args.exp_dir} "
                         "can be loaded (see the reasons above)")
    if dist.is_main():  # every question's first sample range in this seed's file: a line per checkpoint kind and question
        results = results_file(out_dir, measurement["seed"])
        shown = [r for r in read_results(results) if "first_sample=" not in r.get("sampling", "")]
        labels, shared = question_labels(shown)
        common = ", ".join(text.format(shared[k]) for k, text in (("detector", "{} detector"), ("num_samples", "{} samples"),
                                                                  ("seed", "seed {}")) if shared.get(k))
        plot_fid_vs_step(shown, os.path.join(out_dir, "fid_vs_step.png"), labels=labels,
                         title=f"FID by step ({common})\n{os.path.basename(os.path.abspath(args.exp_dir))}/"
                               f"{os.path.basename(results)}")
    failed = dist.broadcast_object(walk.failed)
    if failed:
        raise ValueError(f"no finite FID for {', '.join(failed)}: not recorded (see {os.path.join(sample_dir, 'log.txt')})")


class Walk:
    """One FID measurement after another, each a row of fid_results_{seed}.csv beside `sample_dir` (the results
    folder's FID/) answering its question."""

    def __init__(self, args, tools, reference, sample_dir, log, device):
        self.args, self.tools, self.reference, self.sample_dir, self.log = args, tools, reference, sample_dir, log
        self.detector, self.device = tools.detector, device
        self.checked_dimension, self.failed = False, []

    def measure(self, name, step, loaded, request, question):
        """The FID of checkpoint `name` for `question` (from its row if one answers it, else measured and recorded);
        None when it is not finite."""
        args, log, device = self.args, self.log, self.device
        results_path = results_file(os.path.dirname(self.sample_dir), request.seed)
        rows = read_results(results_path)  # read again each time: another walk may have answered it
        known = dist.broadcast_object(answer(rows, name, question) if dist.is_main() else None)
        metrics_path = results_file(os.path.dirname(self.sample_dir), request.seed, METRICS_TABLE)
        asked = self.tools.questions(question, request.seed, request.num_samples)
        metric_rows = read_results(metrics_path, METRICS_TABLE) if asked else []
        unanswered = [metric for metric, metric_question in asked.items()
                      if answer(metric_rows, name, metric_question) is None]
        if known is not None and unanswered:
            log(f"{name}: measured again for {', '.join(unanswered)} (its FID is in the table, these are not)")
            known = None
        tag = f"{name}_{samples_tag(request, question['sampling'])}_"  # what the files measured
        samples_path = samples_npz_path(self.sample_dir, request.num_samples, loaded.output_shape(device), tag)
        if known is not None and args.save_samples and not os.path.isfile(samples_path):
            log(f"{name}: measured again to write its samples ({os.path.basename(samples_path)} is missing: the last "
                "walk ran with --save_samples False or the file was removed)")
            known = None
        if known is not None:
            log(f"{name}: already evaluated (FID {known['FID']}, {request.num_samples} samples from sample "
                f"{request.first_index}, seed {request.seed})")
            return float(known["FID"])
        if not self.checked_dimension:  # before the first sampling, against the detector's feature size
            probe = DetectorTally(self.detector, loaded.output_shape(device), device, question["feed"])
            check_stats_dimension(*self.reference, probe.dimension, question["reference"])
            if probe.note:
                log(probe.note)
            self.checked_dimension = True
        more_tallies = self.tools.more_tallies(loaded.output_shape(device), device, question["feed"])
        images, labels, indices, tally = run_generation(
            loaded.model, loaded.shape, loaded.label_dim, request, loaded.options, device, detector=self.detector,
            feed=question["feed"], keep_images=args.save_samples, decode=loaded.decode,
            keep_samples=self.tools.metric_options.keeps_samples, more_tallies=more_tallies)
        # every process's per-sample outputs, in sample order (collective)
        outputs = tally.samples_in_order() if self.tools.metric_options.keeps_samples else None
        for each in [tally, *more_tallies]:
            each.all_reduce()
        shown = min(100, request.batch_size, len(images))  # the first global batch (this process's first): in order
        grid = (images[:shown], None if labels is None else labels[:shown])
        if args.save_samples:
            images, labels = dist.gather_in_order(images, labels, indices)
        fid = None
        if dist.is_main():
            fid = tally.fid(self.reference)
            if not math.isfinite(fid):
                log(f"{name}: FID is {fid} (the samples or their features hold NaN or infinite values): not recorded")
                self.failed.append(name)
                fid = None
            else:
                self.record(name, step, fid, tally, request, question, grid, images, labels, results_path, tag)
                if asked:
                    self.record_metrics(name, step, self.tools.measure(outputs, more_tallies, request.seed), asked,
                                        metrics_path)
        dist.barrier()
        return dist.broadcast_object(fid)

    def summarise_ranges(self, name, questions, first):
        """One line per metric beside FID over the disjoint sample ranges of `questions` (their rows in the metrics
        table): each range's value and the best (the lowest KID and FD_DINOv2, the highest IS, precision, recall)."""
        asked = [self.tools.questions(question, first.seed, first.num_samples) for question in questions]
        if not dist.is_main() or not asked[0]:
            return
        rows = read_results(results_file(os.path.dirname(self.sample_dir), first.seed, METRICS_TABLE), METRICS_TABLE)
        for metric in asked[0]:
            found = [answer(rows, name, by_range[metric]) for by_range in asked]
            if None in found:  # not recorded (a value that was not finite)
                continue
            values = [float(row["value"]) for row in found]
            best = min(values) if metric in LOWER_IS_BETTER else max(values)
            shown = ", ".join(f"{value:.4g}" for value in values)
            self.log(f"{name}: {metric} over {len(values)} disjoint sample ranges ({shown}); best {best:.4g}")

    def record_metrics(self, name, step, measured, asked, metrics_path):
        """The metrics beside FID of one checkpoint's samples, a row each in the metrics table; a value that is not
        finite is reported, not recorded."""
        answers, not_finite = metric_answers(name, step, measured, asked)
        for row, question in answers:
            record_result(metrics_path, row, question, table=METRICS_TABLE)
        for metric in not_finite:
            self.log(f"{name}: {metric} is {measured[metric][0]}: not recorded")
            self.failed.append(f"{name} ({metric})")
        self.log(f"{name}: {metrics_text(measured)} ({os.path.basename(metrics_path)})")

    def record(self, name, step, fid, tally, request, question, grid, images, labels, results_path, tag):
        args, log = self.args, self.log
        row = dict(model_name=name, step=step, FID=f"{fid:.6f}")
        accuracy = tally.class_accuracy()
        if accuracy == accuracy:  # not NaN: a classifying detector and a class-conditional model
            row["class_accuracy"] = f"{accuracy:.6f}"
        caption = (f"{name}: samples {request.first_index}-{request.first_index + len(grid[0]) - 1} of seed "
                   f"{request.seed}"
                   + (" (class in the corner)" if grid[1] is not None else ""))
        save_grid(grid[0], os.path.join(self.sample_dir, f"{tag}samples.png"), columns=10, caption=caption,
                  labels=grid[1])
        if args.save_samples:
            save_samples_npz(images, labels, self.sample_dir, prefix=tag)
        # the row last: a row in the results file means its samples are written too
        record_result(results_path, row, question,
                      on_wait=lambda holder: log(f"waiting for {holder} to finish writing {results_path}"))
        extra = f", class accuracy {accuracy:.4f}" if "class_accuracy" in row else ""
        log(f"{name}: FID {fid:.4f}{extra} ({int(tally.stats.count)} samples from sample {request.first_index}, seed "
            f"{request.seed}, {args.detector} detector)")
