"""Fit the demo's network teacher: an EDM-preconditioned DDPM++ trained to reproduce the exact
denoiser of the built-in Gaussian mixture (pid_diffusion.teachers.demo_mixture). Reproducible from
--seed; the result ships as model_zoo/demo-gmm-ddpmpp.pt and loads with load_teacher.

    python scripts/fit_demo_teacher.py --out model_zoo/demo-gmm-ddpmpp.pt

The regression target is the exact posterior mean D*(x; σ) (not the noisy clean image), with EDM's
loss weight (σ² + σ_d²)/(σ·σ_d)² and σ log-uniform over [σ_min, σ_max], the range PID queries.
"""

import argparse
import math
import time

import torch

from pid_diffusion.checkpoint import save_teacher
from pid_diffusion.networks import EDMPrecond
from pid_diffusion.schedules import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from pid_diffusion.teachers import DEMO_NETWORK_CONFIG, demo_mixture

def fit(steps, batch_size, lr, seed, config=DEMO_NETWORK_CONFIG, log_every=250):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mixture = demo_mixture()
    teacher = EDMPrecond(**config)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    log_min, log_max = math.log(SIGMA_MIN), math.log(SIGMA_MAX)
    started = time.time()
    for step in range(1, steps + 1):
        clean, _ = mixture.sample_data(batch_size, generator)
        sigma = torch.exp(log_min + (log_max - log_min) * torch.rand(batch_size, generator=generator))
        noisy = clean + sigma.reshape(-1, 1, 1, 1) * torch.randn(clean.shape, generator=generator)
        target = mixture(noisy, sigma)
        weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
        loss = (weight.reshape(-1, 1, 1, 1) * (teacher(noisy, sigma) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0:
            print(f"step {step:6d}  weighted loss {loss.item():.5f}  {time.time() - started:.0f}s", flush=True)
    return teacher.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="model_zoo/demo-gmm-ddpmpp.pt", help="output teacher file")
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps")
    parser.add_argument("--batch_size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, noise and initialisation")
    parser.add_argument("--model_channels", type=int, default=DEMO_NETWORK_CONFIG["model_channels"])
    parser.add_argument("--num_blocks", type=int, default=DEMO_NETWORK_CONFIG["num_blocks"])
    args = parser.parse_args(argv)
    config = {**DEMO_NETWORK_CONFIG, "model_channels": args.model_channels, "num_blocks": args.num_blocks}
    teacher = fit(args.steps, args.batch_size, args.lr, args.seed, config)
    save_teacher(teacher, args.out, config)
    print(f"wrote {args.out}: {sum(p.numel() for p in teacher.parameters()):,} parameters")


if __name__ == "__main__":
    main()
