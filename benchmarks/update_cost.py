"""CPU and GPU time of the optimizer step and the EMA updates alone, for the CIFAR-10 student.

    python benchmarks/update_cost.py

Random gradients; the multi-tensor (foreach) RAdam and the original's per-parameter loop, each with
the paper's three EMA rates. "CPU issue" is the time to queue the kernels, "GPU span" the time
between CUDA events around them: when they are equal, the GPU waits for the CPU.
"""

import time

import torch

from pid_diffusion.families import edm
from pid_diffusion.ema import EMA
from pid_diffusion.networks import EDMPrecond
from train_step import OFFICIAL_FLAGS

CALLS = 20


def timed(function):
    """(CPU seconds to issue, GPU seconds) per call of `function`, averaged over CALLS calls."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    started = time.perf_counter()
    start.record()
    for _ in range(CALLS):
        function()
    issued = time.perf_counter() - started
    end.record()
    torch.cuda.synchronize()
    return issued / CALLS, start.elapsed_time(end) / 1000 / CALLS


def main():
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/update_cost.py needs a CUDA GPU")
    network = EDMPrecond(**edm.config_from_flags(**OFFICIAL_FLAGS["cifar10"])).cuda()
    params = list(network.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {len(params)} parameter tensors")
    for foreach in (True, False):
        optimizer = torch.optim.RAdam(params, lr=1e-4, foreach=foreach)
        ema = EMA(network, (0.999, 0.9999, 0.99995))
        for _ in range(3):  # optimizer state, kernels loaded
            optimizer.step()
            ema.update()
        for name, function in (("RAdam step", optimizer.step), ("EMA updates", ema.update)):
            cpu, gpu = timed(function)
            print(f"foreach={foreach} {name}: CPU issue {cpu * 1e3:.2f} ms, GPU span {gpu * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
