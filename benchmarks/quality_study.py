"""Quality study of PID's training options on a real teacher: each option and the baseline distilled from the same
teacher with the same paired training seeds, each student scored on several evaluation seeds by the digits
classifier (never used in training: PID reads no data).

    python benchmarks/quality_study.py --options baseline,finite_difference=second,loss_norm=pseudo_huber \
        --seeds 0,1,2 --eval_seeds 0,1 --steps 400 --json quality.json
    python benchmarks/quality_study.py --table quality.json[,confirm.json]

An option is `baseline` or `+`-joined `<flag>=<value>` overrides of the quickstart's settings (l2, uniform weighting,
N = 250, RAdam 3e-3, batch 64, EMA 0.99 and 0.995, with `--settings` on top for every run; e.g. `scale_mode=progressive+start_scales=10+end_scales=250`,
`guide_model_path=model_zoo/digits-edm2-autoguide.pt+guidance=1.7`); `--teacher` names the teacher. Every run is one
process of `--threads` CPU threads (the same work on the same cores, so wall times compare) and trains `--steps`
steps with training seed s (the noise, levels and labels of every step; runs with the same s are paired). Its final
raw and EMA 0.99 networks each make `--num_samples` one-step samples per evaluation seed; digit FID against the
1,797 real digits and conditional accuracy are recorded, with the teacher's 35-call Heun sampler scored on the same
evaluation seeds for reference. Writes --json after every run (a run cut short keeps what it measured); --table
prints, per option: the EMA and raw digit FID as mean ± standard deviation over training seeds (each the mean over
evaluation seeds), the mean paired difference from the baseline (same training seed) ± its standard deviation,
the spread over evaluation seeds, accuracy, wall time and network calls per sample and step.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from pid_diffusion import dist
from pid_diffusion.benchmark_modes import mode_options
from pid_diffusion.checkpoint import load_student, read_denoiser
from pid_diffusion.digits import NUM_CLASSES
from pid_diffusion.evaluation.demo import CLIP_DENOISED, TEACHER_SAMPLER, check_digits_teacher
from pid_diffusion.evaluation.detectors import load_detector
from pid_diffusion.evaluation.statistics import DetectorTally, digits_reference_stats
from pid_diffusion.generate import generate
from pid_diffusion.guidance import GuidanceOptions
from pid_diffusion.trainer import TrainConfig, train

QUALITY_SETTINGS = dict(loss_norm="l2", weight_schedule="uniform", start_scales=250, optimizer="radam", lr=3e-3,
                        global_batch_size=64, ema_rate="0.99,0.995")
"""The quickstart's settings (scripts/quickstart.sh): the baseline every option changes."""
BASELINE = "baseline"


def run_options(option, settings=""):
    """The trainer options of an option string on top of `settings` (overrides every run shares, the same form)."""
    shared = mode_options([f"eager+{settings}"], "cpu")[0][1] if settings else {}
    return shared if option == BASELINE else {**shared, **mode_options([f"eager+{option}"], "cpu")[0][1]}


def network_calls(options):
    """(student calls, teacher calls) per sample and step: three student levels for a second-order difference,
    two teacher calls when a guide is given (the guide's and the teacher's)."""
    return (3 if options.get("finite_difference") == "second" else 2), (2 if options.get("guide_model_path") else 1)


def teacher_guidance(options):
    """(guide file, weight) of the guidance an option distils ("" and 1 for most)."""
    return options.get("guide_model_path", ""), options.get("guidance", 1.0)


def scores(denoiser, detector, reference, image_shape, num_samples, eval_seed, **sampler):
    """Digit FID and conditional accuracy of `num_samples` samples of evaluation seed `eval_seed`."""
    tally = DetectorTally(detector, image_shape)
    for batch in generate(denoiser, num_samples, 1000, eval_seed, image_shape, NUM_CLASSES,
                          clip_denoised=CLIP_DENOISED, **sampler):
        tally.update(batch.images, batch.labels)
    return dict(fid=tally.fid(reference), class_accuracy=tally.class_accuracy())


def run_config(args, option, seed, folder):
    """The trainer configuration of one run (validated: an unknown flag or value is refused)."""
    config = TrainConfig(teacher_model_path=args.teacher, log_dir=folder, total_training_steps=args.steps,
                         save_interval=args.steps, log_interval=max(1, args.steps // 4), seed=seed,
                         **{**QUALITY_SETTINGS, **run_options(option, args.settings)})
    config.validate()
    return config


def train_and_score(args, option, seed, detector, reference, image_shape, folder):
    options = run_options(option, args.settings)
    config = run_config(args, option, seed, folder)
    started = time.time()
    train(config)
    seconds = time.time() - started
    networks = {"ema_0.99": f"ema_0.99_{args.steps:06d}.pt", "raw": f"model{args.steps:06d}.pt"}
    measured = {}
    for name, file_name in networks.items():
        student = load_student(os.path.join(folder, file_name))
        measured[name] = {str(eval_seed): scores(student, detector, reference, image_shape, args.num_samples,
                                                 eval_seed, sampler="oneshot", **student.noise_levels)
                          for eval_seed in args.eval_seeds}
    student_calls, teacher_calls = network_calls(options)
    return dict(option=option, seed=seed, options=options, train_seconds=seconds, student_calls=student_calls,
                teacher_calls=teacher_calls, scores=measured)


def mean_over_eval_seeds(run, network):
    return statistics.mean(s["fid"] for s in run["scores"][network].values())


def spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(json_paths):
    """The Markdown table of study JSON files (see the module's docstring)."""
    runs, teachers = [], {}
    for path in json_paths:
        with open(path) as f:
            study = json.load(f)
        runs += study["runs"]
        teachers.update({(name, seed): row for name, by_seed in study["teachers"].items()
                         for seed, row in by_seed.items()})
    lines = ["| option | training seeds | EMA 0.99 digit FID | Δ vs baseline (paired) | raw digit FID | "
             "spread over evaluation seeds | EMA accuracy | train s | calls per sample (student + teacher) |",
             "|---|---|---|---|---|---|---|---|---|"]
    baseline = {run["seed"]: run for run in runs if run["option"] == BASELINE}
    for option in dict.fromkeys(run["option"] for run in runs):
        chosen = [run for run in runs if run["option"] == option]
        ema = [mean_over_eval_seeds(run, "ema_0.99") for run in chosen]
        raw = [mean_over_eval_seeds(run, "raw") for run in chosen]
        paired = [mean_over_eval_seeds(run, "ema_0.99") - mean_over_eval_seeds(baseline[run["seed"]], "ema_0.99")
                  for run in chosen if run["seed"] in baseline]
        within = statistics.mean(spread([s["fid"] for s in run["scores"]["ema_0.99"].values()]) for run in chosen)
        accuracy = statistics.mean(s["class_accuracy"] for run in chosen for s in run["scores"]["ema_0.99"].values())
        difference = (f"{statistics.mean(paired):+.2f} ± {spread(paired):.2f}" if paired and option != BASELINE
                      else "—")
        lines.append(f"| {option} | {','.join(str(run['seed']) for run in chosen)} | {statistics.mean(ema):.2f} ± "
                     f"{spread(ema):.2f} | {difference} | {statistics.mean(raw):.2f} ± {spread(raw):.2f} | {within:.2f} | "
                     f"{100 * accuracy:.2f}% | {statistics.mean(run['train_seconds'] for run in chosen):.0f} | "
                     f"{chosen[0]['student_calls']} + {chosen[0]['teacher_calls']} |")
    for (teacher, seed), row in teachers.items():
        lines.append(f"| teacher {teacher}, Heun 18 steps, evaluation seed {seed} | — | "
                     f"{row['fid']:.2f} | — | — | — | {100 * row['class_accuracy']:.2f}% | — | — |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--options", default=f"{BASELINE},finite_difference=second", help="comma list of options")
    parser.add_argument("--teacher", default="model_zoo/digits-ddpmpp.pt", help="digits teacher file")
    parser.add_argument("--settings", default="", help="+-joined <flag>=<value> overrides of the quickstart's settings "
                                                       "for every run, the baseline's too (e.g. lr=0.01 for EDM2 "
                                                       "teachers, as scripts/edm2_digits.py distils them)")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of training seeds (paired across options)")
    parser.add_argument("--eval_seeds", default="0,1", help="comma list of evaluation seeds")
    parser.add_argument("--steps", type=int, default=400, help="PID steps per run")
    parser.add_argument("--num_samples", type=int, default=2000, help="samples per network and evaluation seed")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every run")
    parser.add_argument("--json", default="quality_study.json", help="output file")
    parser.add_argument("--table", action="store_true", help="instead of running: print the Markdown table of the "
                                                             "comma-separated --json files")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.json.split(",")))
        return
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.eval_seeds = [int(seed) for seed in args.eval_seeds.split(",")]
    options = args.options.split(",")
    for option in options:
        run_config(args, option, args.seeds[0], "unused")  # an unknown flag or value is refused before any training
    torch.set_num_threads(args.threads)
    dist.init("cpu")
    detector = load_detector("digits")
    reference = digits_reference_stats(detector)
    teacher_scores = {}  # the teacher, and the guided teacher each option distils, for reference
    for guide, weight in dict.fromkeys(teacher_guidance(run_options(option)) for option in options):
        teacher, _, _ = read_denoiser(args.teacher, GuidanceOptions(guide_model_path=guide, guidance=weight))
        image_shape = check_digits_teacher(teacher, args.teacher)
        name = os.path.basename(args.teacher) + (f" guided by {os.path.basename(guide)} at w = {weight:g}" if guide
                                                 else "")
        teacher_scores[name] = {str(seed): scores(teacher, detector, reference, image_shape, args.num_samples, seed,
                                                  **TEACHER_SAMPLER) for seed in args.eval_seeds}
        print(f"teacher {name}: " + ", ".join(f"evaluation seed {seed}: digit FID {row['fid']:.3f}"
                                              for seed, row in teacher_scores[name].items()), flush=True)
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M"), torch=torch.__version__, command=" ".join(sys.argv),
                teacher=args.teacher, steps=args.steps, num_samples=args.num_samples, threads=args.threads,
                settings={**QUALITY_SETTINGS, **run_options(BASELINE, args.settings)})
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:  # seed by seed: a study cut short keeps complete pairs
            for option in options:
                run = train_and_score(args, option, seed, detector, reference, image_shape,
                                      os.path.join(tmp, f"{len(runs)}"))
                runs.append(run)
                with open(args.json + ".tmp", "w") as f:
                    json.dump(dict(meta=meta, teachers=teacher_scores, runs=runs), f, indent=2)
                os.replace(args.json + ".tmp", args.json)
                print(f"{option:<55} seed {seed}: EMA 0.99 digit FID {mean_over_eval_seeds(run, 'ema_0.99'):.3f}, raw "
                      f"{mean_over_eval_seeds(run, 'raw'):.3f} ({run['train_seconds']:.0f} s)", flush=True)
    print(table([args.json]))
    dist.shutdown()


if __name__ == "__main__":
    main()
