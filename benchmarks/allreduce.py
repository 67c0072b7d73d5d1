"""NCCL all-reduce time and bus bandwidth for the CIFAR-10 student's gradients (55.7M values).

    mpirun -np 4 python benchmarks/allreduce.py

Tells whether the gradient all-reduce can explain a multi-GPU step's loss of scaling on a host.
"""

import time

import torch
import torch.distributed as torch_dist

from pid_diffusion import dist

GRADIENT_VALUES = 55_732_739  # the DDPM++ CIFAR-10 network's parameter count
CALLS = 10


def main():
    info = dist.init()
    if info.device.type != "cuda" or info.world_size < 2:
        raise SystemExit("benchmarks/allreduce.py needs several CUDA processes (mpirun -np N or torchrun)")
    for dtype in (torch.float32, torch.bfloat16):
        values = torch.ones(GRADIENT_VALUES, dtype=dtype, device=info.device)
        for _ in range(3):
            torch_dist.all_reduce(values)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(CALLS):
            torch_dist.all_reduce(values)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / CALLS
        size = GRADIENT_VALUES * values.element_size()
        bus_bandwidth = 2 * (info.world_size - 1) / info.world_size * size / seconds
        dist.print0(f"all-reduce {dtype} {size / 1e6:.0f} MB over {info.world_size} GPUs: {seconds * 1e3:.2f} ms, "
                    f"bus bandwidth {bus_bandwidth / 1e9:.0f} GB/s")
    dist.shutdown()


if __name__ == "__main__":
    main()
