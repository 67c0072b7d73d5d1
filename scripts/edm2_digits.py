"""The EDM2 route proven on real data: EDM2 digits teachers — in pixels, autoguided, guided by an unconditional
network (classifier-free guidance) and in a KL autoencoder's latents — trained with EDM2's objective, measured
over guidance weights, distilled by PID with the quickstart's settings and judged by the digits detector.

    python scripts/edm2_digits.py                      # everything, about an hour on 2 CPU cores: writes the
                                                       # model_zoo/ files and experiment/edm2-digits/summary.md
    python scripts/edm2_digits.py --distil_only --pid_steps 300 --samples 500   # PID on the shipped teachers only
                                                       # (what bash scripts/quickstart.sh --edm2 runs)

Stages, each skipped when what it makes exists (an interrupted run continues; files are never replaced):
 1. the autoencoder (scripts/train_vae.py): model_zoo/digits-vae/
 2. the teachers (scripts/train_teacher.py --family edm2): digits-edm2.pt (class-conditional, 16 channels),
    digits-edm2-autoguide.pt (its autoguidance guide: 8 channels, a quarter of the steps), digits-edm2-uncond.pt
    (unconditional, 8 channels: the classifier-free guide) and digits-edm2-latent.pt (on the autoencoder's
    latents), each with its training log in <out>/teacher-*
 3. guidance: the digit FID and conditional accuracy of the teacher's 35-call Heun sampler guided by each guide
    at each of --weights (1 = unguided); of the others, the weight with the lowest FID is the one distilled
 4. PID (scripts/cm_train.py, 2 processes under mpirun when it works) of the pixel, autoguided, classifier-free
    guided and latent teachers, then scripts/demo_metrics.py on each: <out>/pid-{pixel,autoguided,cfg,latent}
 5. <out>/summary.md and summary.json: the guidance table and each run's demo table
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from pid_diffusion.startup import quiet_interrupt_while_importing

with quiet_interrupt_while_importing():
    import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_STEPS = 6000
TEACHER_FLAGS = ["--family", "edm2", "--dropout", "0", "--lr", "0.01", "--lr_ref_steps", "1500", "--lr_rampup_steps",
                 "300", "--ema_rate", "0.1", "--log_interval", "500"]
"""EDM2 digits teachers: EDM2's U-Net, learning rate 0.01 (EDM2's S: 0.010) warmed up over 300 steps and
decaying from step 1,500, the power-function EMA of σ_rel 0.1 exported."""
TEACHERS = {  # name → (file, flags beyond TEACHER_FLAGS, steps as a fraction of --teacher_steps)
    "pixel": ("digits-edm2.pt", ["--num_channels", "16"], 1.0),
    "autoguide": ("digits-edm2-autoguide.pt", ["--num_channels", "8"], 0.25),
    "uncond": ("digits-edm2-uncond.pt", ["--num_channels", "8", "--class_cond", "False"], 1.0),
    "latent": ("digits-edm2-latent.pt", ["--num_channels", "16", "--channel_mult", "1,2", "--attention_resolutions",
                                         "2", "--latent_vae", "{vae}"], 1.0),
}
GUIDES = {"autoguided": "autoguide", "cfg": "uncond"}
"""PID run → the guide of its teacher."""
PID_FLAGS = ["--training_mode", "one_shot_pinn_edm_edm", "--start_scales", "250", "--loss_norm", "l2",
             "--weight_schedule", "uniform", "--optimizer", "radam", "--lr", "0.01", "--global_batch_size", "64",
             "--ema_rate", "0.99,0.999"]
"""The quickstart's PID settings (scripts/quickstart.sh) but the learning rate: 0.01, EDM2's own, instead of the
DDPM++ student's 0.001. EDM2's weights keep unit norm (forced weight normalisation), so a step moves them
relatively less: at 0.001 the EMA 0.99 student of the pixel teacher reached digit FID 65 in 2,000 steps, at
0.003 10.3, at 0.01 3.2 (docs/benchmark_results/edm2-digits-pid-lr-h100.txt)."""


def launcher(processes):
    """mpirun -np N beside this Python (or on the PATH) when mpi4py loads; otherwise one process."""
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    mpirun = mpirun if os.access(mpirun, os.X_OK) else shutil.which("mpirun")
    works = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True).returncode == 0
    return [mpirun, "-np", str(processes)] if mpirun and works and processes > 1 else []


def run(command, env=None, log=None):
    print(f"$ {' '.join(command)}", flush=True)
    started = time.time()
    with open(log, "a") if log else open(os.devnull, "w") as copy:
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            if "sampling:" not in line:  # tqdm bars
                print(line, end="", flush=True)
                copy.write(line)
    if process.wait():
        sys.exit(f"error: the command above failed (exit {process.returncode}); its output is above")
    return time.time() - started


def train_teachers(args, zoo, out):
    vae = os.path.join(zoo, "digits-vae")
    if not os.path.exists(vae):
        print("== 1/5 the digits autoencoder", flush=True)
        run([sys.executable, "scripts/train_vae.py", "--out", vae, "--steps", str(args.vae_steps)])
    print("== 2/5 the EDM2 digits teachers", flush=True)
    for name, (file_name, flags, fraction) in TEACHERS.items():
        path = os.path.join(zoo, file_name)
        if os.path.exists(path):
            print(f"{path} exists: kept", flush=True)
            continue
        steps = max(int(args.teacher_steps * fraction), 1)
        run_dir = os.path.join(out, f"teacher-{name}")
        shutil.rmtree(run_dir, ignore_errors=True)  # a teacher is trained whole: its file was never written
        run([*launcher(args.processes), sys.executable, "scripts/train_teacher.py", *TEACHER_FLAGS,
             *[flag.format(vae=vae) for flag in flags], "--total_training_steps", str(steps), "--save_interval",
             str(steps), "--export", path], env={"OPENAI_LOGDIR": run_dir})


def guidance_table(args, zoo, out):
    """{guide: [(weight, fid, accuracy)]} of the pixel teacher's 35-call sampler, from `args.samples` samples."""
    from pid_diffusion.checkpoint import read_denoiser
    from pid_diffusion.evaluation.demo import DigitsMetrics
    from pid_diffusion.evaluation.detectors import load_detector
    from pid_diffusion.guidance import GuidanceOptions

    saved = os.path.join(out, "guidance.json")
    if os.path.exists(saved):
        with open(saved) as f:
            return json.load(f)
    print("== 3/5 guidance weights: the teacher's 35-call Heun sampler", flush=True)
    detector = load_detector("digits")
    teacher_path = os.path.join(zoo, TEACHERS["pixel"][0])
    table = {}
    for run_name, guide in GUIDES.items():
        rows = []
        for weight in args.weights:
            options = GuidanceOptions(guide_model_path=os.path.join(zoo, TEACHERS[guide][0]) if weight != 1 else "",
                                      guidance=weight)
            row = DigitsMetrics(read_denoiser(teacher_path, options)[0], detector, args.samples,
                                clip_denoised=False).teacher_row
            rows.append((weight, row["fid"], row["class_accuracy"]))
            print(f"{run_name} guide {guide}, weight {weight:g}: digit FID {row['fid']:.3f}, conditional accuracy "
                  f"{row['class_accuracy']:.4f}", flush=True)
        table[run_name] = rows
    with open(saved, "w") as f:
        json.dump(table, f, indent=2)
    return table


def distil(args, zoo, out, weights):
    print("== 4/5 PID of each teacher, and its demo metrics", flush=True)
    runs = {"pixel": ("pixel", None), "autoguided": ("pixel", "autoguided"), "cfg": ("pixel", "cfg"),
            "latent": ("latent", None)}
    for run_name, (teacher, guided) in runs.items():
        run_dir = os.path.join(out, f"pid-{run_name}")
        if os.path.exists(os.path.join(run_dir, "demo_metrics.json")):
            print(f"{run_dir} measured: kept", flush=True)
            continue
        guide = []
        if guided:
            guide = ["--guide_model_path", os.path.join(zoo, TEACHERS[GUIDES[guided]][0]), "--guidance",
                     str(weights[guided])]
        steps = args.pid_steps
        run([*launcher(args.processes), sys.executable, "scripts/cm_train.py", *PID_FLAGS, "--teacher_model_path",
             os.path.join(zoo, TEACHERS[teacher][0]), *guide, "--total_training_steps", str(steps),
             "--save_interval", str(max(steps // 4, 1)), "--log_interval", str(max(steps // 10, 1))],
            env={"OPENAI_LOGDIR": run_dir})
        run([sys.executable, "scripts/demo_metrics.py", "--run_dir", run_dir, "--num_samples", str(args.samples)])


def summary(out, table, weights, distilled):
    """summary.md and summary.json of `out`: the guidance table (when measured) and each PID run's demo table."""
    lines = ["# EDM2 digits teachers and their PID students", ""]
    if table:
        weights_measured = [w for w, _, _ in next(iter(table.values()))]
        lines += ["Digit FID (conditional accuracy) of the teacher's 35-call Heun sampler (70 calls guided) by guidance "
                  "weight w (1 = unguided):", "", "| guide | " + " | ".join(f"w = {w:g}" for w in weights_measured) +
                  " |", "|---|" + "---|" * len(weights_measured)]
        for run_name, rows in table.items():
            lines.append(f"| {run_name} ({GUIDES[run_name]}) | " + " | ".join(f"{fid:.2f} ({acc:.2%})"
                                                                               for _, fid, acc in rows) + " |")
        lines.append("")
    lines += [f"Distilled guidance weights: {', '.join(f'{k} {v:g}' for k, v in weights.items())}.", ""]
    results = {"guidance": table, "distilled_weights": weights, "runs": {}}
    for run_name in distilled:
        path = os.path.join(out, f"pid-{run_name}", "demo_metrics.json")
        with open(path) as f:
            rows = json.load(f)
        results["runs"][run_name] = rows
        lines += [f"## {run_name}", "", "| generator | network calls | digit FID | conditional accuracy | RMSE to the "
                  "teacher's sample |", "|---|---|---|---|---|"]
        lines += [f"| {r['generator']} | {r['nfe']} | {r['fid']:.2f} | {r['class_accuracy']:.2%} | "
                  f"{r['rmse_vs_teacher']:.3f} |" for r in rows]
        lines.append("")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("\n".join(lines), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--out", default="experiment/edm2-digits", help="folder of the runs and the summary")
    parser.add_argument("--zoo", default="model_zoo", help="folder of the autoencoder and teacher files")
    parser.add_argument("--teacher_steps", type=int, default=TEACHER_STEPS, help="steps of the teachers (the "
                                                                                 "autoguidance guide: a quarter)")
    parser.add_argument("--vae_steps", type=int, default=2000, help="steps of the autoencoder")
    parser.add_argument("--pid_steps", type=int, default=2000, help="PID steps of each student")
    parser.add_argument("--samples", type=int, default=2000, help="samples of each measurement")
    parser.add_argument("--weights", default="1,1.5,2,3", help="guidance weights measured (comma-separated; 1 is the "
                                                              "unguided teacher, and one other is needed)")
    parser.add_argument("--processes", type=int, default=2, help="processes of each training (mpirun when it works)")
    parser.add_argument("--distil_only", action="store_true", help="use the teachers of --zoo as they are and their "
                                                                   "guidance weights of model_zoo/README.md")
    args = parser.parse_args(argv)
    try:
        args.weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        parser.error(f"--weights must be comma-separated numbers, got {args.weights!r}")
    if all(w == 1 for w in args.weights):
        parser.error(f"--weights {','.join(map(str, args.weights))}: give a weight other than 1 (the unguided teacher)")
    for name in ("teacher_steps", "vae_steps", "pid_steps", "samples", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    os.chdir(REPO)  # the scripts run here; the files record paths relative to it (the latent teacher its autoencoder's)
    zoo, out = args.zoo, args.out
    os.makedirs(out, exist_ok=True)
    started = time.time()
    if args.distil_only:
        missing = [f for f, _, _ in TEACHERS.values() if not os.path.exists(os.path.join(zoo, f))]
        if missing:
            sys.exit(f"error: --distil_only needs the shipped teachers; missing in {zoo}: {', '.join(missing)}")
        table, weights = {}, dict(SHIPPED_WEIGHTS)
    else:
        train_teachers(args, zoo, out)
        table = guidance_table(args, zoo, out)
        weights = {run_name: min((row for row in rows if row[0] != 1), key=lambda row: row[1])[0]
                   for run_name, rows in table.items()}
    distil(args, zoo, out, weights)
    print("== 5/5 summary", flush=True)
    summary(out, table, weights, ("pixel", "autoguided", "cfg", "latent"))
    print(f"done in {time.time() - started:.0f} s; runs in {out}", flush=True)


SHIPPED_WEIGHTS = {"autoguided": 1.5, "cfg": 1.5}
"""The guidance weights distilled by --distil_only: those the full run chose for the shipped teachers."""

if __name__ == "__main__":
    main()
