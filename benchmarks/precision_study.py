"""Precision study on a real teacher: the same PID distillation (same teacher, initialisation, seeds
and steps) once per configuration, scored by digit FID and conditional accuracy of its checkpoints.

    python benchmarks/precision_study.py --modes reference,reference+seed=1,eager,eager+mixed_precision=fp16,eager+mixed_precision=bf16,fast --json precision.json

Modes are those of pid_diffusion/benchmark_modes.py (reference, eager, default, fast, fast-no<option>,
<mode>+<option>=<value>). Every run: the digits teacher (model_zoo/digits-ddpmpp.pt), the
quickstart's settings (l2, N = 250, RAdam 1e-3, batch 64, EMA 0.99 and 0.999), one process. Every
`--eval_every` steps, each checkpoint (model and EMA) makes `--num_samples` one-step samples from the
same noises and labels (seed 0), scored with the digits classifier; the teacher's own samplers (35-call
Heun, 5- and 10-call Euler) are scored the same way first. Two runs of `reference` with
different seeds give the noise floor: a configuration is quality-neutral when its curves stay within
their spread. Writes --json with the curves and the loss log, and prints a table. A SIGTERM (a time
limit) ends the current run at a checkpoint, which is scored and written before the study stops.
`--table` prints a Markdown table of study JSON files, `--plot` draws their curves.
"""

import argparse
import contextlib
import copy
import csv
import json
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from pid_diffusion import dist
from pid_diffusion.benchmark_modes import STUDY_SETTINGS, mode_options, study_config
from pid_diffusion.checkpoint import load_student, load_teacher
from pid_diffusion.evaluation.demo import check_digits_teacher, CLIP_DENOISED, DigitsMetrics, format_table, json_ready
from pid_diffusion.digits import NUM_CLASSES
from pid_diffusion.evaluation.walk import checkpoints_in
from pid_diffusion.evaluation.detectors import load_detector
from pid_diffusion.evaluation.statistics import DetectorTally, digits_reference_stats
from pid_diffusion.generate import generate
from pid_diffusion.losses import implied_denoised
from pid_diffusion.loop import TrainingInterrupted
from pid_diffusion.schedules import index_to_sigma, pid_partner_index
from pid_diffusion.settings import str2bool
from pid_diffusion.trainer import PIDTrainer, float32_call, train


PROBE_INDICES = (5, 25, 60, 125, 200, 249)


def probe(config, indices=PROBE_INDICES, batch=64):
    """{grid index: relative error of the implied denoised image} of the untrained student (the
    teacher's weights) in this configuration's precision, against the same computation in float64."""
    trainer = PIDTrainer(config)
    exact = copy.deepcopy(trainer.student).double().eval()
    trainer.student.eval()
    generator = torch.Generator(device=trainer.device).manual_seed(0)
    errors = {}
    for index in indices:
        z = config.sigma_max * torch.randn((batch, *trainer.image_shape), generator=generator, device=trainer.device)
        labels = F.one_hot(torch.arange(batch, device=trainer.device) % trainer.label_dim, trainer.label_dim).float()
        idx = torch.full((batch,), index, device=trainer.device)
        t = index_to_sigma(idx, config.start_scales).float()
        t_next = index_to_sigma(pid_partner_index(idx, config.start_scales), config.start_scales).float()
        with torch.no_grad():
            with trainer.config.autocast(trainer.device.type):
                student = trainer.model if config.student_precision != "fp32" else float32_call(trainer.model)
                x_t, x_next = student(torch.cat([z, z]), torch.cat([t, t_next]), torch.cat([labels, labels])).float().chunk(2)
            implied = implied_denoised(x_t, x_next, t, t_next).double()
            e_t, e_next = exact(torch.cat([z, z]).double(), torch.cat([t, t_next]).double(),
                                torch.cat([labels, labels]).double()).chunk(2)
            truth = implied_denoised(e_t, e_next, t.double(), t_next.double())
        errors[index] = float((implied - truth).norm() / truth.norm())
    trainer.close()
    return errors


def score(folder, detector, reference, num_samples, device, image_shape):
    """[{name, step, fid, class_accuracy}] of every checkpoint in a run folder (samples of `image_shape`)."""
    rows = []
    for name, step, path in checkpoints_in(folder):
        student = load_student(path).to(device)
        tally = DetectorTally(detector, image_shape, device)
        for batch in generate(student, num_samples, 1000, 0, image_shape, NUM_CLASSES, device=device,
                              sampler="oneshot", clip_denoised=CLIP_DENOISED):
            tally.update(batch.images, batch.labels.to(device))
        rows.append(dict(name=name, step=step, fid=tally.fid(reference), class_accuracy=tally.class_accuracy()))
    return rows


def configuration_of(mode):
    """A mode's label without its seed: runs that differ only in seed are one configuration."""
    return "+".join(part for part in mode.split("+") if not part.startswith("seed="))


LINE_COLOURS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "black"]
"""matplotlib's cycle without its grey (C7), which would read as the float32 band."""


def load_results(json_paths):
    """The runs of study JSON files, in order."""
    results = []
    for path in json_paths:
        with open(path) as f:
            results += json.load(f)["results"]
    return results


def plot(json_paths, path, band="reference"):
    """Digit FID and loss against step from study JSON files: the seeds of the float32 configuration `band`
    as a band (their range, the noise floor), every other configuration as one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results(json_paths)
    figure, (fid_axes, loss_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {}
    for r in results:
        configuration = configuration_of(r["mode"])
        curve = sorted((c["step"], c["fid"]) for c in r["checkpoints"] if c["name"].startswith("ema_0.99_"))
        if configuration == band:
            fid_axes.plot(*zip(*curve), color="grey", linewidth=0.8, alpha=0.6)
            loss_axes.plot(*zip(*r["losses"]), color="grey", linewidth=0.8, alpha=0.6)
            continue
        first = configuration not in colours
        colour = colours.setdefault(configuration, LINE_COLOURS[len(colours) % len(LINE_COLOURS)])
        fid_axes.plot(*zip(*curve), color=colour, marker="o", markersize=3, label=configuration if first else None)
        loss_axes.plot(*zip(*r["losses"]), color=colour, linewidth=1)
    floor = [r for r in results if configuration_of(r["mode"]) == band]
    if floor:
        steps = sorted(set.intersection(*({c["step"] for c in r["checkpoints"]} for r in floor)))  # runs cut short differ
        by_step = [[c["fid"] for r in floor for c in r["checkpoints"]
                    if c["step"] == step and c["name"].startswith("ema_0.99_")] for step in steps]
        fid_axes.fill_between(steps, [min(v) for v in by_step], [max(v) for v in by_step], color="grey", alpha=0.25,
                              label=f"float32 {band}, {len(floor)} seeds (range)")
    fid_axes.set(yscale="log", xlabel="PID step", ylabel="digit FID (EMA 0.99, 2,000 samples)",
                 title="quality of the one-step student")
    loss_axes.set(yscale="log", xlabel="PID step", ylabel="logged l2 loss (mean of 50 steps)", title="training loss")
    for axes in (fid_axes, loss_axes):
        axes.grid(True, which="both", alpha=0.3)
    fid_axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def table(json_paths):
    """A Markdown table from study JSON files: per run, the EMA 0.99 digit FID at every checkpoint step of
    any run ("—" where a run cut short has none), then at the run's last step its conditional accuracy and
    logged loss, and its training time."""
    results = load_results(json_paths)
    steps = sorted({c["step"] for r in results for c in r["checkpoints"]})
    lines = ["| mode | " + " | ".join(str(step) for step in steps) + " | last step | accuracy | loss | train s |",
             "|---" * (len(steps) + 5) + "|"]
    for r in results:
        ema = {c["step"]: c for c in r["checkpoints"] if c["name"].startswith("ema_0.99_")}
        last = max(ema)
        loss = f"{r['losses'][-1][1]:.5f}" if r["losses"] else "—"
        lines.append(f"| {r['mode']} | " + " | ".join(f"{ema[step]['fid']:.2f}" if step in ema else "—" for step in steps)
                     + f" | {last} | {100 * ema[last]['class_accuracy']:.2f}% | {loss} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="reference,reference+seed=1,default", help="comma list of modes")
    parser.add_argument("--teacher", default="model_zoo/digits-ddpmpp.pt", help="digits teacher file (8×8, or one made at another size by "
                        "scripts/train_teacher.py --image_size, e.g. the CIFAR-10 testbed: model_zoo/README.md)")
    parser.add_argument("--steps", type=int, default=2000, help="PID steps per run")
    parser.add_argument("--eval_every", type=int, default=250, help="checkpoint and score every this many steps")
    parser.add_argument("--num_samples", type=int, default=2000, help="samples per checkpoint")
    parser.add_argument("--json", default="precision_study.json", help="output file")
    parser.add_argument("--plot", default="", help="instead of running: draw this PNG from the comma-separated "
                                                   "--json files")
    parser.add_argument("--band", default="reference", help="with --plot: the float32 configuration whose seeds are "
                                                            "drawn as the noise-floor band")
    parser.add_argument("--score_teacher", type=str2bool, default=True, help="score the teacher's samplers first (a "
                        "study split over several processes needs it from one of them only)")
    parser.add_argument("--table", action="store_true", help="instead of running: print a Markdown table of the "
                                                             "comma-separated --json files")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.json.split(",")))
        return
    if args.plot:
        plot(args.json.split(","), args.plot, args.band)
        return
    info = dist.init()
    device = info.device
    started = time.time()
    teacher, detector = load_teacher(args.teacher), load_detector("digits").to(device)
    if args.score_teacher:  # DigitsMetrics has the image shape and the reference statistics already
        teacher_metrics = DigitsMetrics(teacher, detector, args.num_samples, device=device)
        image_shape, reference = teacher_metrics.image_shape, teacher_metrics.reference
        teacher_rows = [teacher_metrics.teacher_row, *teacher_metrics.few_step_teacher_rows()]
        print(format_table(teacher_rows), flush=True)
    else:
        image_shape, reference = check_digits_teacher(teacher, "the teacher"), digits_reference_stats(detector, device)
        teacher_rows = []
    print(f"teacher and detector ready in {time.time() - started:.0f} s", flush=True)
    meta = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv), teacher=args.teacher, steps=args.steps,
                num_samples=args.num_samples, settings=STUDY_SETTINGS, teacher_quality=json_ready(teacher_rows))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, options in mode_options(args.modes.split(",")):
            folder = os.path.join(tmp, str(len(results)))
            errors = None if options.get("compile") else probe(study_config(args.teacher, folder + "-probe", 1, 1,
                                                                            options))
            started = time.time()
            try:
                train(study_config(args.teacher, folder, args.steps, args.eval_every, options))
                stopped = None
            except TrainingInterrupted as interruption:  # a time limit's SIGTERM: score what was saved, then end
                stopped = str(interruption)
            seconds = time.time() - started
            progress = os.path.join(folder, "progress.csv")  # absent when a signal came before the first log step
            with open(progress, newline="") if os.path.exists(progress) else contextlib.nullcontext([]) as f:
                losses = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
            checkpoints = score(folder, detector, reference, args.num_samples, device, image_shape)
            results.append(dict(mode=label, options=options, train_seconds=seconds, losses=losses,
                                checkpoints=checkpoints, implied_denoised_relative_error=errors, stopped=stopped))
            with open(args.json, "w") as f:  # after every mode: a run cut short keeps what it measured
                json.dump(dict(meta=meta, results=results), f, indent=2)
            last_step = max(row["step"] for row in checkpoints)
            final = {row["name"].rsplit("_", 1)[0] if row["name"].startswith("ema") else "model": row
                     for row in checkpoints if row["step"] == last_step}
            loss = f"{losses[-1][1]:.6f}" if losses else "not logged"
            print(f"{label:<45} {seconds:6.0f} s  final loss {loss}  " + "  ".join(
                f"{kind}: FID {row['fid']:.3f} acc {row['class_accuracy']:.4f}" for kind, row in sorted(final.items())),
                flush=True)
            if errors:
                print("    implied-denoised error vs float64 by grid index: "
                      + "  ".join(f"{i}: {100 * e:.2f}%" for i, e in errors.items()), flush=True)
            if stopped:
                print(f"    {stopped}: the results above are of step {last_step}; the remaining modes are not run",
                      flush=True)
                break
    dist.shutdown()


if __name__ == "__main__":
    main()
