"""Distillation-quality metrics of a PID run on the demo teacher (the built-in Gaussian mixture).

    python scripts/demo_metrics.py --run_dir experiment/quickstart-...

Compares, on the same noise, the teacher's 35-call Heun sampler, the teacher's 5- and 10-call Euler
samplers, the untrained student (the teacher's weights) and the run's newest checkpoints (model and
every EMA rate): per-pixel RMSE to the teacher's ODE endpoint, mode agreement, coverage, distance to
the nearest component and pixel-space FID against exact mixture samples (see pid_diffusion/demo.py).
Writes into the run folder: demo_metrics.csv, demo_metrics.json, demo_reference_stats.npz
(exact-mixture pixel statistics, for fid_evaluation.py --detector pixels --ref_path) and
teacher_vs_student.png.
"""

import argparse
import csv
import json
import os
import sys

import numpy as np
import torch

from pid_diffusion.checkpoint import RUN_CONFIG_FILE, load_student, load_teacher, student_from_teacher
from pid_diffusion.demo import METRIC_FIELDS, MixtureMetrics, format_table
from pid_diffusion.evaluation import checkpoints_in, save_grid
from pid_diffusion.fid import save_reference_stats
from pid_diffusion.files import atomic_output
from pid_diffusion.generate import to_uint8
from pid_diffusion.log import write_json_atomic
from pid_diffusion.teachers import demo_mixture

FIGURE_SAMPLES = 16
FIGURE_ZOOM = 4


def newest_checkpoints(run_dir):
    found = checkpoints_in(run_dir)
    if not found:
        raise FileNotFoundError(f"no model*.pt or ema_*.pt checkpoints in {run_dir}")
    newest = max(step for _, step, _ in found)
    return [(name, path) for name, step, path in found if step == newest]


def comparison_figure(teacher_images, student_images, path):
    """Teacher samples (top row) above student samples (bottom row) from the same noise, enlarged."""
    pair = torch.cat([teacher_images[:FIGURE_SAMPLES], student_images[:FIGURE_SAMPLES]])
    pair = torch.nn.functional.interpolate(pair, scale_factor=FIGURE_ZOOM, mode="nearest")
    save_grid(to_uint8(pair), path, columns=FIGURE_SAMPLES)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="training run folder (with run_config.json)")
    parser.add_argument("--num_samples", type=int, default=2000, help="noise samples per generator")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and of the exact samples")
    args = parser.parse_args(argv)
    try:
        with open(os.path.join(args.run_dir, RUN_CONFIG_FILE)) as f:
            run_config = json.load(f)
        teacher = load_teacher(run_config["teacher_model_path"])
        mixture = demo_mixture()
        if (teacher.img_channels, teacher.img_resolution, teacher.img_resolution) != tuple(mixture.means.shape[1:]):
            raise ValueError(f"{run_config['teacher_model_path']} is not a demo teacher (images of another shape)")
        metrics = MixtureMetrics(mixture, teacher, args.num_samples, args.seed)
        rows = [metrics.exact_row(), metrics.teacher_row(), *metrics.few_step_teacher_rows()]
        if hasattr(teacher, "model"):  # a network teacher: its weights are the untrained student
            untrained = student_from_teacher(run_config["network_config"], teacher.state_dict()).eval()
            rows.append(metrics.student_row("student, untrained (step 0)", untrained))
        students = {}
        for name, path in newest_checkpoints(args.run_dir):
            students[name] = load_student(path)
            rows.append(metrics.student_row(f"student {name}", students[name]))
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")

    save_reference_stats(os.path.join(args.run_dir, "demo_reference_stats.npz"), *metrics.reference)
    with atomic_output(os.path.join(args.run_dir, "demo_metrics.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomic(os.path.join(args.run_dir, "demo_metrics.json"),
                      [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows])
    closest = min((r for r in rows if r["generator"].removeprefix("student ") in students),
                  key=lambda r: r["rmse_vs_teacher"])["generator"].removeprefix("student ")
    student_images = metrics.generate_images(students[closest], "oneshot")
    comparison_figure(metrics.teacher_endpoints, student_images, os.path.join(args.run_dir, "teacher_vs_student.png"))
    print(format_table(rows))


if __name__ == "__main__":
    main()
