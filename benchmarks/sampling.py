"""One-step sampling of 50,000 CIFAR-10 images with the 55.7M-parameter DDPM++ student, and their
Inception statistics, on a GPU, through the FID script's code path (run_generation).

    python benchmarks/sampling.py --num_samples 50000 --batch_size 1000

Random weights. The detector is a stand-in with the TF-Inception's compute: torchvision's
Inception-v3 (random weights) behind the same call form and the same resize to 299×299, because
NVIDIA's TorchScript file cannot be downloaded on the benchmark machine. Reports images/s of each
stage: per-sample seeded noise (CPU), the student's one network call, the detector, and the whole
generate-and-measure loop.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision

from pid_diffusion import dist
from pid_diffusion.evaluation.sampling import run_generation
from pid_diffusion.families import edm
from pid_diffusion.generate import GenerationRequest, seeded_inputs
from pid_diffusion.networks import network_from_config
from pid_diffusion.precond import PIDStudent

CIFAR10_FLAGS = dict(image_size=32, num_channels=128, num_res_blocks=4, attention_resolutions="2")


class InceptionStandIn(torch.nn.Module):
    """detector(pixels in [0, 255], return_features=True) → [N, 2048] pool features."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        self.net.fc = torch.nn.Identity()

    def forward(self, images, return_features=True):
        x = F.interpolate(images.to(torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x / 127.5 - 1)


class TracedFeatures(torch.nn.Module):
    """A traced (TorchScript) stand-in behind the detector's call form, as NVIDIA's file is TorchScript."""

    def __init__(self, traced):
        super().__init__()
        self.traced = traced

    def forward(self, images, return_features=True):
        return self.traced(images)


def timed(function):
    torch.cuda.synchronize()
    started = time.time()
    result = function()
    torch.cuda.synchronize()
    return result, time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=50000)
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--json", default="sampling.json")
    args = parser.parse_args()
    info = dist.init()
    device = info.device
    student = PIDStudent(network_from_config(edm.config_from_flags(**CIFAR10_FLAGS))).to(device).eval()
    student.to(memory_format=torch.channels_last)
    detector = InceptionStandIn().to(device).eval()
    shape = (3, 32, 32)
    rows = {}

    def record(name, value):  # printed as measured: a run cut short still shows what it measured
        rows[name] = value
        dist.print0(f"{name:<55} {value:12.1f}")

    noise, seconds = timed(lambda: seeded_inputs(0, range(args.num_samples), shape)[0])
    record("seeded noise (CPU)", args.num_samples / seconds)

    def one_step(network, dtype, memory_format=torch.contiguous_format):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            for chunk in noise.split(args.batch_size):
                network(chunk.to(device, non_blocking=True).contiguous(memory_format=memory_format) * 80, 0.002)

    def student_row(name, network, dtype=torch.float16, memory_format=torch.contiguous_format):
        one_step(network, dtype, memory_format)  # warm-up (cuDNN's choice of kernels, compilation)
        _, seconds = timed(lambda: one_step(network, dtype, memory_format))
        record(name, args.num_samples / seconds)

    student.to(memory_format=torch.contiguous_format)
    for name, dtype in (("student one step, fp16", torch.float16), ("student one step, bf16", torch.bfloat16)):
        student_row(name, student, dtype)
    torch.backends.cudnn.benchmark = True
    student_row("student one step, fp16, cuDNN autotuned", student)
    student.to(memory_format=torch.channels_last)
    student_row("student one step, fp16, cuDNN autotuned, channels-last", student, memory_format=torch.channels_last)
    for mode in ("default", "reduce-overhead"):
        compiled = torch.compile(student, mode=mode)
        student_row(f"student one step, fp16, channels-last, torch.compile {mode}", compiled,
                    memory_format=torch.channels_last)
        torch._dynamo.reset()
    # compiled for fp16, the precision of the end-to-end run below (another dtype would recompile)
    student = torch.compile(student)

    def features(network, dtype=None, memory_format=torch.contiguous_format, keep=False):
        kept = []
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            for chunk in noise.split(args.batch_size):
                pixels = chunk.to(device).clamp(-1, 1).add(1).mul(127.5).contiguous(memory_format=memory_format)
                out = network(pixels, return_features=True)
                if keep:
                    kept.append(out.float())
        return torch.cat(kept) if keep else None

    def detector_row(name, network, **how):
        features(network, **how)  # warm-up (cuDNN's choice of kernels, compilation)
        _, seconds = timed(lambda: features(network, **how))
        record(name, args.num_samples / seconds)

    detector_row("detector (fp32)", detector)
    torch.backends.cudnn.benchmark = True  # what the scripts' sampling path sets on CUDA
    detector_row("detector (fp32), cuDNN autotuned", detector)
    detector.to(memory_format=torch.channels_last)
    detector_row("detector (fp32), cuDNN autotuned, channels-last", detector, memory_format=torch.channels_last)
    scripted = TracedFeatures(torch.jit.trace(InceptionStandIn().to(device).eval(), torch.zeros(2, 3, 32, 32, device=device)))
    detector_row("TorchScript detector (fp32), cuDNN autotuned", scripted)
    scripted.to(memory_format=torch.channels_last)  # what the scripts could do with NVIDIA's TorchScript file
    detector_row("TorchScript detector (fp32), cuDNN autotuned, channels-last", scripted, memory_format=torch.channels_last)
    del scripted
    compiled_detector = torch.compile(detector)
    detector_row("detector (fp32), channels-last, torch.compile", compiled_detector, memory_format=torch.channels_last)
    reference = features(detector, memory_format=torch.channels_last, keep=True)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        detector_row(f"detector ({name} autocast), channels-last", detector, dtype=dtype,
                     memory_format=torch.channels_last)
        error = (features(detector, dtype=dtype, memory_format=torch.channels_last, keep=True) - reference).norm(dim=1)
        record("  its feature error vs fp32, max relative (x1e6)", 1e6 * float((error / reference.norm(dim=1)).max()))
    del reference

    options = dict(sampler="oneshot", steps=1, sigma_min=0.002, sigma_max=80.0, clip_denoised=True)

    def end_to_end(num_samples):
        request = GenerationRequest(num_samples, args.batch_size, seed=0, use_fp16=True)
        return run_generation(student, shape, 0, request, options, device, detector=detector, keep_images=False,
                              progress=False)

    end_to_end(args.batch_size)  # warm-up: one batch through the same path
    (_, _, _, tally), seconds = timed(lambda: end_to_end(args.num_samples))
    record("end to end (compiled student, fp16): noise + student + detector + statistics", args.num_samples / seconds)
    record("end to end seconds for the whole set", seconds)
    assert int(tally.stats.count) == args.num_samples

    if dist.is_main():
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                           num_samples=args.num_samples, batch_size=args.batch_size, images_per_second=rows), f, indent=2)
    dist.shutdown()


if __name__ == "__main__":
    main()
