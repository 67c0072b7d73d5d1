"""Distillation-quality metrics of a PID run on the digits teacher (the quickstart's step 2).

    python scripts/demo_metrics.py --run_dir experiment/quickstart-...

Compares, on the same noises and labels, the teacher's 35-call Heun sampler, the teacher's 5- and
10-call Euler samplers (a guided teacher calls twice per step: 70, 10, 20), the untrained student (the
teacher's weights) and the run's newest
checkpoints (model and every EMA rate): digit FID, conditional accuracy and RMSE to the teacher's
samples (see pid_diffusion/demo.py). Writes into the run folder: demo_metrics.csv, demo_metrics.json
and teacher_vs_student.png (the teacher's samples above the best student checkpoint's). The teacher is
the shipped 1×8×8 digits teacher or one scripts/train_teacher.py made at a larger side (the CIFAR-10
testbed: 3×32×32, judged by the digits classifier after the upsampling is undone, back to 8×8), or an EDM2
digits teacher (scripts/edm2_digits.py): guided as the run was, its latents decoded into pixels, sampled
without clamping as EDM2 samples. A run folder whose teacher is not a digits teacher is refused and nothing
is written.
"""

import argparse
import csv
import json
import os
import sys

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    import torch

    from pid_diffusion.checkpoint import load_student, read_denoiser, student_from_teacher
    from pid_diffusion.evaluation.demo import (check_digits_images, CLIP_DENOISED, DigitsMetrics, format_table,
                                               from_json, json_ready, METRIC_FIELDS, real_digits_calibration)
    from pid_diffusion.families import family_of
    from pid_diffusion.guidance import NO_GUIDANCE, GuidanceOptions
    from pid_diffusion.latents import output_shape
    from pid_diffusion.digits import DigitsUnavailableError
    from pid_diffusion.dist import visible_device_type
    from pid_diffusion.evaluation.walk import checkpoints_in
    from pid_diffusion.evaluation.detectors import load_detector
    from pid_diffusion.files import atomic_output
    from pid_diffusion.files import write_json_atomic
    from pid_diffusion.plots import paired_sample_grid
    from pid_diffusion.run_folder import RUN_CONFIG_FILE, read_run_config


def newest_checkpoints(run_dir):
    found = checkpoints_in(run_dir)
    if not found:
        raise FileNotFoundError(f"no model*.pt or ema_*.pt checkpoints in {run_dir}")
    newest = max(step for _, step, _ in found)
    return [(name, path) for name, step, path in found if step == newest]


def pid_run_config(run_dir):
    config = read_run_config(run_dir)
    if config is None:
        raise FileNotFoundError(f"{run_dir} is not a training run folder: {RUN_CONFIG_FILE} not found")
    missing = [key for key in ("teacher_model_path", "network_config", "sigma_max") if key not in config]
    if missing:
        raise ValueError(f"{run_dir} is not a PID run folder: its {RUN_CONFIG_FILE} lacks {', '.join(missing)}")
    return config


def measure(args):
    """(rows, comparison figure rows, name of the best student) — everything before anything is written."""
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    run_config = pid_run_config(args.run_dir)
    teacher_path = run_config["teacher_model_path"]
    guidance = GuidanceOptions(guide_model_path=run_config.get("guide_model_path", ""),
                               guidance=run_config.get("guidance", NO_GUIDANCE))
    teacher, teacher_config, teacher_state = read_denoiser(teacher_path, guidance)  # the teacher the run distilled
    family = family_of(teacher_config)
    decode = family.image_decoder(teacher_config)
    sample_shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    check_digits_images(output_shape(decode, sample_shape), teacher.label_dim, teacher_path)
    checkpoints = newest_checkpoints(args.run_dir)
    device = args.device or visible_device_type()
    print(f"demo metrics: {args.num_samples} samples of the teacher, at full and few steps ...", flush=True)
    metrics = DigitsMetrics(teacher, load_detector("digits", args.detector_path or None), args.num_samples, args.seed,
                            device=device, decode=decode,
                            clip_denoised=family.sampling_protocol.get("clip_denoised", CLIP_DENOISED))
    rows = [metrics.teacher_row, *metrics.few_step_teacher_rows()]
    untrained = student_from_teacher(run_config["network_config"], teacher_state, run_config["sigma_max"],
                                     sigma_min=run_config["sigma_min"])
    print("demo metrics: the untrained student ...", flush=True)
    rows.append(metrics.student("student untrained (step 0)", untrained.eval()))
    best = None
    for name, path in checkpoints:
        print(f"demo metrics: {name} ...", flush=True)
        student = load_student(path)
        row = metrics.student(f"student {name}", student)
        rows.append(row)
        if best is None or row["fid"] < best[0]["fid"]:
            best = (row, student)
    return rows, metrics.comparison_rows(best[1]), best[0]["generator"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--run_dir", default="", help="training run folder (with run_config.json)")
    parser.add_argument("--num_samples", type=int, default=2000, help="samples per generator")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noises and labels (sample i from (seed, i))")
    parser.add_argument("--detector_path", default="", help="digits classifier file (default: model_zoo/)")
    parser.add_argument("--device", default="", help="where to sample and score, e.g. cpu or cuda (default: cuda when "
                                                     "a GPU is visible, else cpu)")
    parser.add_argument("--show", action="store_true", help="print the table of an earlier run's demo_metrics.json")
    parser.add_argument("--calibration", action="store_true", help="print what real digits score: the 360 held-out "
                                                                    "digits against the 1,437 training digits")
    args = parser.parse_args(argv)
    if not args.run_dir and not args.calibration:
        parser.error("--run_dir is required (the training run folder), unless --calibration")
    if args.device:
        try:
            device_type = torch.device(args.device).type
        except RuntimeError:
            parser.error(f"--device {args.device!r} is not a device; valid: cpu, cuda, cuda:<index>")
        if device_type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {args.device} asks for a GPU, but none is visible; use --device cpu")
    if args.calibration:
        try:
            values = real_digits_calibration(load_detector("digits", args.detector_path or None), seed=args.seed)
        except (OSError, ValueError, DigitsUnavailableError) as e:
            sys.exit(f"error: {e}")
        print(", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                        for key, value in values.items()))
        return
    if args.show:
        try:
            with open(os.path.join(args.run_dir, "demo_metrics.json")) as f:
                print(format_table(from_json(json.load(f))))
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"error: no readable demo_metrics.json in {args.run_dir} ({e}); run without --show first")
        return
    try:
        rows, figure_rows, best = measure(args)
    except (OSError, ValueError, DigitsUnavailableError) as e:
        sys.exit(f"error: {e}")

    with atomic_output(os.path.join(args.run_dir, "demo_metrics.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(os.path.join(args.run_dir, "demo_metrics.json"), json_ready(rows))
    paired_sample_grid(figure_rows, [str(d) for d in range(10)], os.path.join(args.run_dir, "teacher_vs_student.png"),
                       title=f"same noise and label: teacher ({rows[0]['nfe']} calls) above {best} (1 call), "
                             f"{os.path.basename(os.path.abspath(args.run_dir))}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
