"""Throughput and peak memory of the real PID training step (PIDTrainer.train_steps, as a run drives it) on a GPU.

    python benchmarks/train_step.py --configs cifar10 --losses lpips,l2 --batches 64 --modes reference,fast
    mpirun -np 4 python benchmarks/train_step.py --configs cifar10 --losses lpips --batches 64 --modes fast

Random weights (timing does not depend on them): the teacher is the official architecture with
EDM's initialisation, saved to a temporary file and loaded through the trainer like a real one;
LPIPS gets a random VGG16 and random linear weights. Modes (default, use_fp16, eager, reference, fast,
ablation, fast-no<option>, <mode>+<option>=<value>, ...): pid_diffusion/benchmark_modes.py. Before
2026-12-02 `default` meant the eager preset (now `eager`; `default` is what cm_train.py runs). Before 2026-11-29
`fast` ran the student in bf16 too: that is fast+student_precision=autocast; before 2026-11-30 DDP
used PyTorch's 25-MiB buckets: fast+ddp_bucket_cap_mb=25. PyTorch's default precision settings stay as they are (cuDNN convolutions may use TF32, matrix
products do not), as when the original runs. Prints a table (per-GPU images/s, peak memory) and
writes --json. Under mpirun/torchrun each process drives one GPU; the table shows rank 0's figures
and the images/s summed over processes.
"""

import argparse
import json
import os
import tempfile
import time

import torch
import torchvision

from pid_diffusion import dist
from pid_diffusion.benchmark_modes import mode_options
from pid_diffusion.checkpoint import save_teacher
from pid_diffusion.families import edm
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.networks.edm2 import EDM2Precond
from pid_diffusion.trainer import PIDTrainer, TrainConfig

OFFICIAL_FLAGS = {
    "cifar10": dict(image_size=32, num_channels=128, num_res_blocks=4, attention_resolutions="2"),
    "imagenet64": dict(image_size=64, num_channels=192, num_res_blocks=3, attention_resolutions="2,4,8",
                       class_cond=True),
}


EDM2_CONFIGS = {
    "edm2-img64-s": dict(img_resolution=64, img_channels=3, label_dim=1000, model_channels=192),
    "edm2-img512-xs": dict(img_resolution=64, img_channels=4, label_dim=1000, model_channels=128),
}
"""EDM2's ImageNet-64 S and ImageNet-512 XS (4×64×64 latents) networks, EDM2's other keywords at their defaults.
A training step works on the latents: the VAE decodes samples only (grids, FID), so the random XS teacher records
no encoder to decode with."""
CONFIGS = (*OFFICIAL_FLAGS, *EDM2_CONFIGS)


def random_teacher(config_name):
    """(teacher network with random weights, its config)."""
    if config_name in EDM2_CONFIGS:
        config = dict(EDM2_CONFIGS[config_name], family="edm2", encoder={"kind": "StandardRGBEncoder"})
        return EDM2Precond(**EDM2_CONFIGS[config_name]), config
    config = edm.config_from_flags(**OFFICIAL_FLAGS[config_name])
    return EDMPrecond(**config), config


def random_files(folder, config_name):
    teacher_path = os.path.join(folder, f"{config_name}-teacher.pt")
    if dist.is_main() and not os.path.exists(teacher_path):
        teacher, config = random_teacher(config_name)
        save_teacher(teacher, teacher_path, config)
        torch.save(torchvision.models.vgg16(weights=None).state_dict(), os.path.join(folder, "vgg16.pth"))
        torch.save([torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)], os.path.join(folder, "lin.pt"))
    dist.barrier()
    return teacher_path


def benchmark_config(folder, config_name, loss, per_gpu_batch, options):
    """The trainer configuration of a timed step: the official CIFAR-10/ImageNet-64 settings with
    random weights from `folder`, the paper's three EMA rates, `options` on top."""
    return TrainConfig(teacher_model_path=random_files(folder, config_name), log_dir=os.path.join(folder, "run"),
                       global_batch_size=per_gpu_batch * dist.info().world_size, loss_norm=loss,
                       weight_schedule="uniform", start_scales=250, lr=2e-4, ema_rate="0.999,0.9999,0.99995",
                       total_training_steps=10 ** 9, lpips_vgg_weights=os.path.join(folder, "vgg16.pth"),
                       lpips_lin_weights=os.path.join(folder, "lin.pt"), **options)


def count_attempts(trainer):
    """A one-item list counting the update attempts queued from now on: more than the steps when fp16 steps
    overflowed (each retried), or when a step queued ahead was discarded after the one before it overflowed."""
    count, queue = [0], trainer._queue_attempt

    def counted(step, prior=None):
        count[0] += 1
        return queue(step, prior)

    trainer._queue_attempt = counted
    return count


def measure(config_name, loss, batch, options, folder, warmup, steps):
    info = dist.info()
    torch.cuda.reset_peak_memory_stats()
    trainer = PIDTrainer(benchmark_config(folder, config_name, loss, batch, options))
    started = time.time()
    trainer.train_steps(warmup)
    torch.cuda.synchronize()
    warmup_seconds = time.time() - started
    peak_whole_run = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    attempts = count_attempts(trainer)
    scale_before = trainer.log2_loss_scale
    dist.barrier()
    start.record()
    trainer.train_steps(steps)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    per_gpu = steps * batch / seconds
    total = float(dist.all_reduce_sum(torch.tensor(per_gpu, device=info.device)).item())
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    # CUDA graphs allocate their memory pools while warming up, so the timed steps alone understate it.
    peak_whole_run = max(peak_whole_run, torch.cuda.max_memory_allocated()) / 2 ** 30
    scale_after = trainer.log2_loss_scale
    trainer.close()
    del trainer
    torch.cuda.empty_cache()
    return dict(config=config_name, loss=loss, per_gpu_batch=batch, world_size=info.world_size,
                images_per_second_per_gpu=per_gpu, images_per_second_total=total, peak_memory_gib=peak,
                peak_memory_whole_run_gib=peak_whole_run, warmup_seconds=warmup_seconds, timed_steps=steps,
                attempts_queued=attempts[0], log2_loss_scale_before=scale_before, log2_loss_scale_after=scale_after,
                **options)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="cifar10", help=f"comma list: {', '.join(CONFIGS)}")
    parser.add_argument("--losses", default="lpips,l2", help="comma list: lpips, l2, l1")
    parser.add_argument("--batches", default="64", help="comma list of per-GPU batch sizes")
    parser.add_argument("--modes", default="reference,fast", help="comma list: default, use_fp16, eager, reference, fast, fast-no<option>, ablation")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--json", default="train_step.json", help="output file")
    args = parser.parse_args()
    info = dist.init()
    if info.device.type != "cuda":
        raise SystemExit("benchmarks/train_step.py needs a CUDA GPU")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = dist.broadcast_object(tmp if dist.is_main() else None)
        for config_name in args.configs.split(","):
            for loss in args.losses.split(","):
                for batch in (int(b) for b in args.batches.split(",")):
                    for label, options in mode_options(args.modes.split(",")):
                        row = measure(config_name, loss, batch, options, folder, args.warmup, args.steps)
                        row["mode"] = label
                        results.append(row)
                        dist.print0(f"{config_name:>10} {loss:>5} b{batch:<4} {label:<34} "
                                    f"{row['images_per_second_per_gpu']:9.1f} img/s/GPU "
                                    f"{row['images_per_second_total']:9.1f} img/s total "
                                    f"{row['peak_memory_gib']:6.2f} GiB ({row['peak_memory_whole_run_gib']:.2f} with warm-up) "
                                    f"(warm-up {row['warmup_seconds']:.0f}s) {row['attempts_queued']} attempts for "
                                    f"{args.steps} steps, log2 loss scale {row['log2_loss_scale_before']:.2f} → "
                                    f"{row['log2_loss_scale_after']:.2f}")
    if dist.is_main():
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, world_size=info.world_size,
                    date=time.strftime("%Y-%m-%d"))
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=2)
    dist.shutdown()


if __name__ == "__main__":
    main()
